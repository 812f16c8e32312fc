"""kohya-ss/sd-scripts adapter: turns sd-scripts' arguments into a Loli run and keeps its state.

How a run starts (nothing in sd-scripts is edited):

1. ``pip install loli-plugin`` puts ``loli_plugin.pth`` in site-packages. At interpreter start it
   registers a post-import hook (``_loli_plugin_autoload``) that does nothing until sd-scripts'
   ``library.train_util`` is imported; then it installs ``patches.kohya.ENTRY`` (parser options and
   the short optimizer name). ``LOLI_PLUGIN_DISABLE=1`` turns it off. Where ``.pth`` files do not
   run, ``python -m loli_plugin.kohya SCRIPT ...`` installs the same hook and runs the script.
2. Building a ``LoliClustered`` inside sd-scripts (short name, or the stock dotted route
   ``--optimizer_type loli_plugin.LoliClustered``) fires the ``loli_optimizer_created`` hook; this
   module then activates the run: validates the options, installs the loss and sampler patches,
   adds the per-cluster logs to the trackers of kohya's own Accelerator and the loss monitor to the
   optimizer's state_dict (so ``--save_state``/``--resume`` carry it).
3. ``--loss_type loli`` with another optimizer activates the loss alone (``get_optimizer`` wrapper).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from dataclasses import dataclass, field

from ..errors import LoliConfigError
from ..hookspecs import hookimpl
from .run import LoliRun

log = logging.getLogger("loli_plugin.kohya")

TRAIN_UTIL = "library.train_util"
_RUN: "KohyaRun | None" = None
_BUILDING: list = []  # args of the get_optimizer call in progress (innermost last)


@dataclass
class KohyaRun(LoliRun):
    """What the patches need during one sd-scripts training run."""

    args: argparse.Namespace | None = field(default=None, repr=False)
    loss_weights: dict | None = None


def active_run() -> KohyaRun | None:
    return _RUN


def deactivate() -> None:
    """Forget the current run and remove the training patches (tests; a second run in one process)."""
    global _RUN
    from ..patches import kohya as patches

    _RUN = None
    patches.TRAINING.uninstrument()
    for inst in patches.FAMILIES.values():
        inst.uninstrument()


@contextlib.contextmanager
def building_optimizer(args):
    _BUILDING.append(args)
    try:
        yield
    finally:
        _BUILDING.pop()


def _caller_local(name: str, accept) -> object | None:
    """The nearest caller frame's local ``name`` that passes ``accept``.

    Used only to find sd-scripts' ``args`` and ``accelerator`` when the optimizer is built through the
    stock dotted route (library/train_util.py get_optimizer -> train_network.py NetworkTrainer.train),
    where no wrapper of ours sits between them and the optimizer's constructor.
    """
    frame = sys._getframe(1)
    while frame is not None:
        value = frame.f_locals.get(name)
        if value is not None and accept(value):
            return value
        frame = frame.f_back
    return None


def _is_run_args(v) -> bool:
    return isinstance(v, argparse.Namespace) and hasattr(v, "optimizer_type") and hasattr(v, "loss_type")


def _is_accelerator(v) -> bool:
    try:
        from accelerate import Accelerator
    except ImportError:  # pragma: no cover - accelerate is a dependency
        return False
    return isinstance(v, Accelerator)


def _check_args(args, optimizer) -> None:
    """Refuse option combinations that cannot work, before the first step."""
    if optimizer is None or args is None:
        return
    if getattr(args, "deepspeed", False):
        raise LoliConfigError(
            "--optimizer_type LoliClustered cannot run under --deepspeed: DeepSpeed owns and partitions the optimizer "
            "state, so the K cluster banks cannot be kept. Remove --deepspeed or pick another --optimizer_type."
        )
    lo, hi = getattr(args, "min_timestep", None), getattr(args, "max_timestep", None)
    if lo is not None or hi is not None:
        lo, hi = lo or 0, 1000 if hi is None else hi
        if hi > lo and optimizer.clusters > hi - lo:
            raise LoliConfigError(
                f"optimizer_args clusters={optimizer.clusters} is larger than the {hi - lo} timesteps between "
                f"--min_timestep {lo} and --max_timestep {hi}; lower clusters or widen the range"
            )
    if getattr(args, "weighting_scheme", None) == "mode":
        from ..sampling import ModeScale

        try:
            ModeScale(args.mode_scale)
        except LoliConfigError as exc:
            raise LoliConfigError(f"--mode_scale: {exc}") from None


def activate(args, optimizer=None) -> KohyaRun:
    """Start a Loli run for sd-scripts: validate, patch, hook logs and state."""
    global _RUN
    from ..loss import parse_loss_weights
    from ..patches import kohya as patches

    patches.TRAINING.check()
    _check_args(args, optimizer)
    weights = None
    if args is not None and getattr(args, "loss_type", None) == "loli":
        weights = parse_loss_weights(getattr(args, "loli_loss_weights", None), option="--loli_loss_weights")
    if optimizer is not None:
        run = KohyaRun.for_optimizer(optimizer, args=args, loss_weights=weights)
    else:
        run = KohyaRun(args=args, loss_weights=weights)
    patches.TRAINING.instrument()
    _RUN = run
    if run.stratify:
        for module, inst in patches.FAMILIES.items():
            _instrument_when_imported(module, inst)
    accelerator = _caller_local("accelerator", _is_accelerator)
    if run.monitor is not None:
        if accelerator is not None:
            _hook_logs(accelerator, run)
        else:
            log.warning("loli-plugin: no accelerator found in sd-scripts' call stack; per-cluster loss logs are off")
    log.info("loli-plugin active: %s", describe(run))
    return run


def describe(run: KohyaRun) -> str:
    opt = run.optimizer
    parts = []
    if opt is not None:
        parts.append(f"LoliClustered(inner={opt.inner_name}, clusters={opt.clusters}, schedule={opt.schedule.strategy}); "
                     "timesteps drawn from one cluster per optimizer step")
    if run.loss_weights is not None:
        parts.append("loss_type=loli(" + ",".join(f"{k}={v:g}" for k, v in run.loss_weights.items()) + ")")
    return "; ".join(parts) or "nothing"


def _instrument_when_imported(module: str, inst) -> None:
    if module in sys.modules:
        inst.instrument()
        return
    import wrapt

    def hook(_module):
        if _RUN is not None and _RUN.stratify:
            inst.instrument()

    wrapt.register_post_import_hook(hook, module)


def _hook_logs(accelerator, run: KohyaRun) -> None:
    """Add the per-cluster logs to every tracker of this one Accelerator instance.

    train_network.py (NetworkTrainer.accelerator_logging) writes its step logs straight to the
    trackers (``tracker.log(logs, step=...)``), other scripts through ``accelerator.log``, which ends in
    the same trackers; so the trackers' ``log`` is the one place both pass. Trackers are created by
    ``accelerator.init_trackers`` after the optimizer exists, hence the wrap of that method too. Only
    this instance is touched, never accelerate's classes. Reading the monitor costs one small
    device-to-host copy per log call, after kohya's own ``loss.item()`` has synchronised anyway.
    """
    if getattr(accelerator, "_loli_hooked", False):
        return
    accelerator._loli_hooked = True
    for tracker in accelerator.trackers:
        _wrap_tracker(tracker, run)
    original_init = accelerator.init_trackers

    def init_trackers(*args, **kwargs):
        result = original_init(*args, **kwargs)
        for tracker in accelerator.trackers:
            _wrap_tracker(tracker, run)
        return result

    accelerator.init_trackers = init_trackers


STEP_LOSS_KEYS = ("loss/current", "loss")  # train_network.py's step logs; fine_tune.py / sdxl_train.py's


def _wrap_tracker(tracker, run: KohyaRun) -> None:
    if getattr(tracker, "_loli_wrapped", False):
        return
    original = tracker.log

    def log(values, *args, **kwargs):
        if _RUN is run and isinstance(values, dict) and any(k in values for k in STEP_LOSS_KEYS):
            values = {**values, **run.monitor.logs()}
        return original(values, *args, **kwargs)

    tracker.log = log
    tracker._loli_wrapped = True


# --------------------------------------------------------------------------- hooks and entry points
@hookimpl
def loli_optimizer_created(optimizer):
    if TRAIN_UTIL not in sys.modules:
        return  # not inside sd-scripts
    args = _BUILDING[-1] if _BUILDING else _caller_local("args", _is_run_args)
    activate(args, optimizer)


def on_train_util_import(module) -> None:
    """Post-import hook for ``library.train_util``: install the parser and short-name patches."""
    if not hasattr(module, "get_optimizer") or not hasattr(module, "add_training_arguments"):
        return  # some other project's `library` package
    from ..patches import kohya as patches

    patches.ENTRY.instrument()  # raises LoliUnsupportedTrainerError naming the supported versions
