"""kohya-ss/sd-scripts adapter: turns sd-scripts' arguments into a Loli run and keeps its state.

How a run starts (nothing in sd-scripts is edited):

1. ``pip install`` puts ``loli_plugin.pth`` in site-packages. At interpreter start it installs a finder
   that does nothing until a module listed in ``kohya.watch`` is imported. When sd-scripts'
   ``library.train_util`` is imported, ``patches.kohya.ENTRY`` is applied: the parser options, the
   short optimizer name and the ``prepare_accelerator`` check. ``LOLI_PLUGIN_DISABLE=1`` turns it
   off. Where ``.pth`` files do not run, ``python -m loli_plugin.launch SCRIPT ...`` does the same.
2. ``prepare_accelerator(args)`` (called by every script before it loads a model) checks a run that
   asks for a Loli feature: if a patch it needs did not fit this sd-scripts, the run stops there
   with the list.
3. Building a ``LoliClustered`` inside ``get_optimizer`` (short name, or the stock dotted route
   ``--optimizer_type loli_plugin.LoliClustered``) activates the run: options validated, loss, sampler
   and tracker patches applied, the loss monitor carried in the optimizer's state_dict (so
   ``--save_state``/``--resume`` carry it). ``--loss_type loli`` with another optimizer activates the
   loss alone.

Without the start-up hook (LOLI_PLUGIN_DISABLE=1, an editable install, ``python -S``) the dotted route
would build a LoliClustered whose clusters sd-scripts' stock sampler does not follow; that is refused
with an error that says how to enable the hook (``on_optimizer_created``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

from ..adapter import TrainerAdapter
from ..errors import LoliConfigError
from ..hookspecs import hookimpl
from ..options import DEFAULT_CLUSTERS
from ..patches import kohya as patches
from ..patches import kohya_ss
from ..patches.instrument import bind_arguments, call_replacing
from ..run import LoliRun


class KohyaAdapter(TrainerAdapter):
    name = "kohya"
    library = patches.LIBRARY
    supported = patches.SUPPORTED
    manifest = Path(__file__).with_suffix(".watch")
    entry_patch = patches.GET_OPTIMIZER

    def __init__(self) -> None:
        super().__init__()
        self.accelerator = None
        self._measure = None  # (process_batch, its args, its kwargs) of the last training micro-batch

    def instrumentors(self):
        return [
            (patches.ENTRY, "import"),
            (patches.TRAINING, "run"),
            *((inst, "run") for inst in patches.FAMILIES.values()),
            (patches.LOGS, "run"),
            (patches.PROBE, "run"),
        ]

    def recognises(self, module) -> bool:
        # sd-scripts' `library` package, not another project's: its modules sit beside train_util.py and
        # config_util.py (checked by file, not by the functions we patch, which may have drifted)
        folder = os.path.dirname(getattr(module, "__file__", None) or "")
        return all(os.path.isfile(os.path.join(folder, f)) for f in ("train_util.py", "config_util.py"))

    def find_checkout(self, path: Path) -> bool:
        return (path / "library" / "train_util.py").is_file()

    def inside_trainer(self) -> bool:
        train_util = sys.modules.get(patches.TRAIN_UTIL)
        return train_util is not None and self.recognises(train_util)

    # ------------------------------------------------------------------ what a run asks for
    def requests(self, args) -> set[str]:
        return (
            ({"optimizer"} if kohya_ss.requests_optimizer(args) else set())
            | ({"loss"} if kohya_ss.requests_loss(args) else set())
            | ({"probe"} if patches.requests_probe(args) else set())
        )

    def asked(self, args) -> str:
        return kohya_ss.asked(args, probe=patches.requests_probe(args))

    # ------------------------------------------------------------------ the patches' context
    def observe(self, args, accelerator) -> None:
        self.accelerator = accelerator

    def optimizer_built(self, args, optimizer) -> None:
        """After get_optimizer (any route): a run with only the Loli loss or only the probe starts here,
        with the user's optimizer; the probe counts that optimizer's steps and rides in its state."""
        if self.run is None and (kohya_ss.requests_loss(args) or patches.requests_probe(args)):
            self.activate(args, optimizer=None)
        if self.run is not None and self.run.probe is not None and optimizer is not None:
            from ..run import attach_monitor_state, count_steps

            attach_monitor_state(optimizer, self.run.probe, key="loli_probe")
            count_steps(optimizer, self.run.probe, self.after_step)

    def activate(self, args, optimizer=None) -> LoliRun:
        """Start a Loli run for sd-scripts: validate, patch, carry the monitor in the optimizer's state."""
        from ..loss import parse_loss_weights

        self.require(self.features_for(args) or self.features["optimizer"], self.asked(args))
        _check_args(args, optimizer)
        weights = None
        if kohya_ss.requests_loss(args):
            weights = parse_loss_weights(getattr(args, "loli_loss_weights", None), option="--loli_loss_weights")
        if optimizer is not None:
            run = LoliRun.for_optimizer(optimizer, config=args, loss_weights=weights)
        else:
            run = LoliRun(config=args, loss_weights=weights)
        if patches.requests_probe(args):
            run.probe = _probe(args, optimizer)
            run.clusters = run.probe.clusters
        self.run = run
        if run.stratify:
            import accelerate.tracking  # noqa: F401 - the LOGS patches' module (accelerate imports it lazily)
        self.activate_run_patches()
        print(f"loli-plugin active: {self.describe(run)}", file=sys.stderr)
        return run

    def deactivate(self) -> None:
        super().deactivate()
        self._measure = None

    # ------------------------------------------------------------------ the progress probe
    def probe_batch(self, wrapped, args, kwargs) -> None:
        """A training micro-batch is about to run (NetworkTrainer.process_batch): keep it while the probe
        wants samples, remember how to measure through this call, and take the first probe (the
        reference, before any step) as soon as the samples are there."""
        probe = self.run.probe
        bound = bind_arguments(wrapped, args, kwargs)
        if probe.wants():
            probe.keep(bound["batch"], _batch_size(bound["batch"]))
        self._measure = (wrapped, args, kwargs)
        if probe.due() and probe.last is None:
            self._run_probe()

    def after_step(self) -> None:
        """After every optimizer step (a step post-hook): probe when due, so the values describe the
        weights sd-scripts logs at this step."""
        if self.run is not None and self.run.probe is not None and self._measure is not None and self.run.probe.due():
            self._run_probe()

    def _run_probe(self) -> None:
        run, (wrapped, args, kwargs) = self.run, self._measure
        bound = bind_arguments(wrapped, args, kwargs)
        trainer, accelerator = bound["self"], bound["accelerator"]

        def evaluate(batch, k):
            with run.probing(k):
                on_step_start = getattr(trainer, "on_step_start", None)  # what sd-scripts' validation calls first
                if on_step_start is not None:
                    on_step_start(
                        bound["args"],
                        accelerator,
                        bound["network"],
                        bound["text_encoders"],
                        bound["unet"],
                        batch,
                        bound["weight_dtype"],
                        is_train=False,
                    )
                return call_replacing(wrapped, args, kwargs, batch=batch, is_train=False)

        text_encoders = (
            bound["text_encoders"] if isinstance(bound["text_encoders"], (list, tuple)) else [bound["text_encoders"]]
        )
        modules = [m for m in (bound["network"], bound["unet"], *text_encoders) if isinstance(m, torch.nn.Module)]
        reduce = None
        if getattr(accelerator, "num_processes", 1) > 1:  # every rank probes its own samples; the log is their mean
            reduce = lambda values: accelerator.reduce(values, reduction="mean")  # noqa: E731
        run.probe.run(evaluate, modules, reduce)


def _probe(args, optimizer):
    from ..options import check_clusters
    from ..probe import TrainerProbe

    every, samples = (
        getattr(args, "loli_probe_every", patches.PROBE_EVERY),
        getattr(args, "loli_probe_samples", patches.PROBE_SAMPLES),
    )
    for option, value in (("--loli_probe_every", every), ("--loli_probe_samples", samples)):
        if not isinstance(value, int) or value < 1:
            raise LoliConfigError(f"{option} must be a whole number >= 1, got {value!r}")
    clusters = (
        optimizer.clusters
        if optimizer is not None
        else check_clusters(getattr(args, "loli_probe_clusters", DEFAULT_CLUSTERS), option="--loli_probe_clusters")
    )
    return TrainerProbe(clusters, every, samples, seed=getattr(args, "seed", None) or 0)


def _batch_size(batch) -> int:
    for key in ("loss_weights", "latents", "images"):
        value = batch.get(key) if isinstance(batch, dict) else None
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 1


def _check_args(args, optimizer) -> None:
    """Refuse option combinations that cannot work, before the first step."""
    if optimizer is None or args is None:
        return
    if getattr(args, "deepspeed", False):
        raise LoliConfigError(
            "--optimizer_type LoliClustered cannot run under --deepspeed: DeepSpeed owns and partitions the optimizer "
            "state, so the K cluster banks cannot be kept. Remove --deepspeed or pick another --optimizer_type."
        )
    if getattr(args, "min_timestep", None) is not None or getattr(args, "max_timestep", None) is not None:
        kohya_ss.check_timestep_range(optimizer.clusters, args)
    if getattr(args, "weighting_scheme", None) == "mode":
        kohya_ss.check_mode_scale(args)


ADAPTER = KohyaAdapter()


@hookimpl
def loli_trainer_adapters():
    return [ADAPTER]
