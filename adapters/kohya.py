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

4. ``--deepspeed`` (sd-scripts' ``library/deepspeed_utils.py``): LoliClustered becomes DeepSpeed ZeRO's basic
   optimizer, each rank banking its 1/N partition (``loli_plugin.deepspeed``). At activation the DeepSpeed
   config accelerate holds is checked (what cannot work is refused with the option named; a CPU optimizer
   offload keeps LoliClustered); at the first training draw, after ``accelerator.prepare``, the engine is
   checked to step this LoliClustered and bound to it, so that ZeRO's per-group (ZeRO-3: per-sub-group)
   calls are one step and the step completes when DeepSpeed's does.

Without the start-up hook (LOLI_PLUGIN_DISABLE=1, an editable install, ``python -S``) the dotted route
would build a LoliClustered whose clusters sd-scripts' stock sampler does not follow; that is refused
with an error that says how to enable the hook (``on_optimizer_created``).
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

from ..adapter import TrainerAdapter
from ..errors import LoliConfigError
from ..hookspecs import hookimpl
from ..layout import TrainerLayout
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
    # `library` is a common name: sd-scripts' is told by its files
    layout = TrainerLayout(
        "library",
        patches.LIBRARY,
        minimum="v0.10.0",
        markers=("train_util.py", "config_util.py", "custom_train_functions.py", "model_util.py"),
    )
    entry_patch = patches.GET_OPTIMIZER

    def __init__(self) -> None:
        super().__init__()
        self.accelerator = None
        self._measure = None  # (process_batch, its args, its kwargs) of the last training micro-batch
        self._count_probe_steps = False  # --deepspeed, the probe with another optimizer: hook the engine's step
        self._reset_validation()

    def _reset_validation(self) -> None:
        self._val_batch = None  # the validation batch measured last (sd-scripts hands each over once per timestep)
        self._timestep_range = None  # (--min_timestep, --max_timestep) as the last training batch drew them
        self._val_log = None  # (the validation log that ended the last pass, its logs, its record)
        #: copies (CPU) of the held-out batches, kept when sd-scripts' schedule may skip the end of training
        self._held_out: list = []
        self._validated_last = False  # a validation pass came after the last training batch (same on every rank)
        self._passes_seen = 0
        #: the optimizer step of sd-scripts' last step log (its epoch logs carry the epoch as their step)
        self.logged_step = None

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

    # ------------------------------------------------------------------ what a run asks for
    def requests(self, args) -> set[str]:
        return (
            ({"optimizer"} if kohya_ss.requests_optimizer(args) else set())
            | ({"loss"} if kohya_ss.requests_loss(args) else set())
            | ({"probe"} if patches.requests_probe(args) else set())
            | ({"validation"} if patches.requests_validation(args) else set())
        )

    def asked(self, args) -> str:
        asked = kohya_ss.asked(args, probe=patches.requests_probe(args))
        if patches.requests_validation(args) and not kohya_ss.requests_optimizer(args):
            asked = "--loli_validation on" if asked == "a Loli run" else f"{asked} and --loli_validation on"
        return asked

    # ------------------------------------------------------------------ the patches' context
    def observe(self, args, accelerator) -> None:
        self.accelerator = accelerator

    def optimizer_built(self, args, optimizer) -> None:
        """After get_optimizer (any route): a run with only the Loli loss, the probe or the validation starts
        here, with the user's optimizer; the probe counts that optimizer's steps, and the probe's and the
        validation's states ride in its state_dict (--save_state / --resume carry them)."""
        if self.run is None and (
            kohya_ss.requests_loss(args) or patches.requests_probe(args) or patches.requests_validation(args)
        ):
            self.activate(args, optimizer=None)
        if self.run is None or optimizer is None:
            return
        from ..clustered import LoliClustered
        from ..run import attach_monitor_state, count_steps

        if self.run.probe is not None:
            attach_monitor_state(optimizer, self.run.probe, key="loli_probe")
            if getattr(args, "deepspeed", False) and not isinstance(optimizer, LoliClustered):
                # DeepSpeed ZeRO steps this optimizer once per param group, inside its own step: count the engine's
                # steps instead, from the first training micro-batch on (the engine exists then)
                self._count_probe_steps = True
            else:
                count_steps(optimizer, self.run.probe, self.after_step)
        if self.run.validation is not None:
            attach_monitor_state(optimizer, self.run.validation, key="loli_validation")

    def activate(self, args, optimizer=None) -> LoliRun:
        """Start a Loli run for sd-scripts: validate, patch, carry the monitor in the optimizer's state."""
        from ..loss import parse_loss_weights

        self.require(self.features_for(args) or self.features["optimizer"], self.asked(args))
        _check_args(args, optimizer)
        deepspeed_notes = self._check_deepspeed(args) if optimizer is not None else []
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
        if patches.requests_validation(args):
            run.validation = _validation(args, optimizer)
            run.clusters = run.validation.clusters
        if getattr(args, "deepspeed", False) and optimizer is not None:
            run.before_first_draw = lambda: self._bind_deepspeed(optimizer)
        self.run = run
        if run.stratify or run.probe is not None or run.validation is not None:
            import accelerate.tracking  # noqa: F401 - the LOGS patches' module (accelerate imports it lazily)
        self.activate_run_patches()
        print(f"loli-plugin active: {self.describe(run)}", file=sys.stderr)
        for note in deepspeed_notes:
            print(f"loli-plugin: {note}", file=sys.stderr)
        return run

    # ------------------------------------------------------------------ --deepspeed
    def _deepspeed_config(self) -> dict | None:
        """The DeepSpeed config accelerate will hand to deepspeed.initialize (library/deepspeed_utils.py
        prepare_deepspeed_plugin built it from the options, or from accelerate's deepspeed_config_file)."""
        state = getattr(self.accelerator, "state", None)
        plugin = getattr(state, "deepspeed_plugin", None) if state is not None else None
        return getattr(plugin, "deepspeed_config", None)

    def _check_deepspeed(self, args) -> list[str]:
        """Refuse a --deepspeed run LoliClustered cannot work under, before the model is prepared."""
        if not getattr(args, "deepspeed", False):
            return []
        from ..deepspeed import check_config

        config = self._deepspeed_config()
        if config is None:  # the accelerator was not seen: the options say what the config will be
            config = {
                "zero_optimization": {
                    "stage": getattr(args, "zero_stage", 2),
                    "offload_optimizer": {"device": getattr(args, "offload_optimizer_device", None) or "none"},
                }
            }
            if config["zero_optimization"]["offload_optimizer"]["device"] == "cpu":
                raise LoliConfigError(
                    "--offload_optimizer_device cpu: loli-plugin could not reach accelerate's DeepSpeed config to "
                    "keep LoliClustered (accelerate would replace it with DeepSpeedCPUAdam); drop the offload, or "
                    "use optimizer_args offload=cpu to park the inactive banks in CPU memory"
                )
        saves = getattr(args, "save_state", False) or getattr(args, "save_state_on_train_end", False)
        processes = getattr(self.accelerator, "num_processes", None) or int(os.environ.get("WORLD_SIZE", "1"))
        if saves and _end_training_destroys_process_group():
            raise LoliConfigError(
                "--save_state with --deepspeed: sd-scripts saves the last state after accelerator.end_training(), "
                "which in this accelerate destroys the process group, so DeepSpeed's save_checkpoint fails there and "
                "the run stops before it writes the final model, whatever the optimizer (measured with "
                "train_network.py on one process). Drop --save_state and --save_state_on_train_end (the model is "
                "still saved, --save_every_n_steps/--save_every_n_epochs too), or train without --deepspeed"
            )
        if saves and processes > 1 and _network_trainer():
            raise LoliConfigError(
                f"--save_state with --deepspeed on {processes} processes: sd-scripts' NetworkTrainer.train "
                "(train_network.py and the other LoRA scripts) saves the state on the main process only, but "
                "DeepSpeed's save_checkpoint must run on every rank, so the run would hang at its first save, whatever "
                "the optimizer (sd-scripts issue #1247; its fix reached fine_tune.py, not NetworkTrainer). Drop "
                "--save_state and --save_state_on_train_end (the LoRA is still saved), or train on one process"
            )
        accumulation = getattr(args, "gradient_accumulation_steps", 1) or 1
        if processes > 1 and accumulation > 1 and _accumulate_enters_no_sync(self.accelerator):
            raise LoliConfigError(
                f"--gradient_accumulation_steps {accumulation} with --deepspeed on {processes} processes: this "
                "accelerate's accumulate() enters the DeepSpeed engine's no_sync between accumulation boundaries and "
                "steps the engine inside it, which this DeepSpeed (0.16.0 and later) refuses, so the run would stop at "
                "its first micro-batch whatever the optimizer (accelerate issue #3481). Use "
                "--gradient_accumulation_steps 1 (a larger --train_batch_size instead), or train on one process"
            )
        notes = check_config(config, DEEPSPEED_OPTIONS)
        stage = (config.get("zero_optimization") or {}).get("stage", 0)
        share = f"its 1/{processes} share of the weights" if stage and processes > 1 else "the weights"
        mode = f"--deepspeed, ZeRO stage {stage}: LoliClustered is DeepSpeed's basic optimizer, each rank banks {share}"
        return [mode, *notes]

    def _bind_deepspeed(self, optimizer) -> None:
        """First training draw: accelerate has built the engine. It must step this LoliClustered (nothing may
        have replaced it); bound, its ZeRO calls make one step, complete when DeepSpeed's step is."""
        from ..deepspeed import bind

        wrapped = getattr(self.accelerator, "deepspeed_engine_wrapped", None)
        if wrapped is None:
            raise LoliConfigError(
                "--deepspeed is set but accelerate prepared no DeepSpeed engine, so loli-plugin cannot check which "
                "optimizer it steps; report this with your accelerate and DeepSpeed versions"
            )
        if bind(wrapped.engine) is not optimizer:
            raise LoliConfigError(
                "the DeepSpeed engine steps another LoliClustered than the one sd-scripts built for this run; "
                "one accelerator must prepare one model and one optimizer"
            )

    def deactivate(self) -> None:
        super().deactivate()
        self._measure = None
        self._count_probe_steps = False
        self._reset_validation()

    # ------------------------------------------------------------------ the progress probe
    def probe_batch(self, wrapped, args, kwargs) -> None:
        """A training micro-batch is about to run (NetworkTrainer.process_batch): keep it while the probe
        wants samples, remember how to measure through this call, and take the first probe (the
        reference, before any step) as soon as the samples are there."""
        probe = self.run.probe
        bound = bind_arguments(wrapped, args, kwargs)
        if self._count_probe_steps:
            from ..deepspeed import after_engine_step
            from ..run import count_probe_step

            self._count_probe_steps = False
            engine = getattr(getattr(self.accelerator, "deepspeed_engine_wrapped", None), "engine", None)
            if engine is not None:
                after_engine_step(engine, lambda: count_probe_step(probe, self.after_step))
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

        def evaluate(batch, k):
            with run.probing(k):
                return _measure(wrapped, args, kwargs, bound, batch)

        accelerator = bound["accelerator"]
        run.probe.run(evaluate, _modules(bound), _rank_mean(accelerator))
        if not getattr(accelerator, "is_main_process", True):
            # sd-scripts' trackers live on the main process only, so no other rank ever logs (takes) the probe's
            # values; left pending, its probe would never be due again while the main process waits for it in the
            # next probe's all-reduce: every multi-process run with the probe hung at its second probe
            run.probe.take_logs()

    # ------------------------------------------------------------------ the validation
    def training_batch(self, wrapped, args, kwargs, bound) -> None:
        """A training micro-batch is about to run (NetworkTrainer.process_batch): the probe keeps it, the
        validation notes the timestep range training draws from, and a validation pass this rank never
        logged (trackers live on the main process only) is dropped."""
        run = self.run
        if run.probe is not None:
            self.probe_batch(wrapped, args, kwargs)
        self._measure = (wrapped, args, kwargs)
        self._validated_last = False
        run_args = bound["args"]
        self._timestep_range = (getattr(run_args, "min_timestep", None), getattr(run_args, "max_timestep", None))
        self._val_batch = None
        if run.validation is not None and run.validation.in_pass:
            run.validation.discard()

    def validation_batch(self, wrapped, args, kwargs, bound) -> None:
        """sd-scripts' validation loop hands a batch to process_batch once per fixed timestep of its own
        (train_network.py ``NetworkTrainer.train``, "VALIDATION PER STEP" and "EPOCH VALIDATION"); at
        the first of them the plugin measures the batch at each cluster's midpoint, through the same
        process_batch (``is_train=False``), with sd-scripts' ``on_step_start`` before and
        ``on_validation_step_end`` after each call as its loop does, on a copy of the batch (SD3's
        ``on_step_start`` drops cached text-encoder outputs in place) and with ``--min_timestep`` /
        ``--max_timestep`` put back to what training draws from (the loop pins both to its timestep)."""
        from ..probe import _copy

        batch = bound["batch"]
        if batch is self._val_batch:
            return
        self._val_batch = batch
        if not self._validated_last:  # the first batch of a pass (counted on every rank, logged or not)
            self._validated_last = True
            self._passes_seen += 1
        every_epochs = getattr(bound["args"], "validate_every_n_epochs", None)
        if every_epochs is not None and every_epochs > 1 and self._passes_seen == 1:
            self._held_out.append(_copy(batch, "cpu"))  # the end of training may need them (end_of_training)
        self._measure_held_out(wrapped, args, kwargs, bound, batch)

    def _measure_held_out(self, wrapped, args, kwargs, bound, batch) -> None:
        from ..probe import _copy

        run = self.run
        routed = copy.copy(bound["args"])
        routed.min_timestep, routed.max_timestep = self._timestep_range or (None, None)

        def evaluate(k, position, seed):
            with run.probing(k, position):
                return _measure(wrapped, args, kwargs, bound, _copy(batch), routed, end=True)

        run.validation.add(
            evaluate,
            batch,
            _batch_size(batch),
            _modules(bound),
            _rank_mean(bound["accelerator"]),
            seen=lambda: run.probe_timestep,
        )

    def end_of_training(self, accelerator) -> None:
        """Accelerator.end_training, on every rank: when no validation pass followed the last training batch
        (sd-scripts' ``--validate_every_n_epochs`` skipped the last epoch), measure the held-out batches kept
        from the first pass, and log at the last step."""
        if self._passes_seen == 0:
            if getattr(self.run.config, "loli_validation", "auto") != "on":
                return  # auto: a run without a validation set simply has none
            from ..adapter import warn

            warn(
                "the validation was on, but sd-scripts never validated in this run, so no val/ values were logged: "
                "give it a held-out set with --validation_split (or validation_split in the dataset config)"
            )
            return
        if self._validated_last or not self._held_out or self._measure is None:
            return
        from ..probe import to_device

        wrapped, args, kwargs = self._measure
        bound = bind_arguments(wrapped, args, kwargs)
        for batch in self._held_out:
            self._measure_held_out(wrapped, args, kwargs, bound, to_device(batch, accelerator.device))
        validation = self.run.validation
        logs = validation.finish(self.logged_step if self.logged_step is not None else 0)
        validation.take_logs()
        if logs and accelerator.trackers:
            accelerator.log(logs, step=validation.last)

    def validation_logs(self, values) -> tuple[dict, str | None]:
        """The end of a validation pass (sd-scripts logs its average: ``values``): the plugin's values and,
        the first time, its comparability record. The same log handed to several trackers ends one pass."""
        if self._val_log is not None and self._val_log[0] is values:
            return self._val_log[1], self._val_log[2]
        validation = self.run.validation
        if not validation.in_pass:
            return {}, None
        logs = validation.finish(self.logged_step if self.logged_step is not None else 0)
        validation.take_logs()  # logged now, not again with the next step log
        self._val_log = (values, logs, validation.take_record())
        return self._val_log[1], self._val_log[2]

    # ------------------------------------------------------------------ the optimizer's constructor
    def config_from_argv(self, argv: list[str]):
        return kohya_ss.namespace_from_argv(argv)


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


def _measure(wrapped, args, kwargs, bound, batch, run_args=None, end: bool = False):
    """One no-grad call of sd-scripts' process_batch on ``batch`` (``is_train=False``), preceded by the
    trainer's ``on_step_start`` and, with ``end``, followed by its ``on_validation_step_end`` (the block
    swap of Flux/SD3 prepares the next forward there), as its validation loop calls them."""
    trainer, accelerator = bound["self"], bound["accelerator"]
    run_args = bound["args"] if run_args is None else run_args
    hooks = (bound["network"], bound["text_encoders"], bound["unet"], batch, bound["weight_dtype"])
    on_step_start = getattr(trainer, "on_step_start", None)
    if on_step_start is not None:
        on_step_start(run_args, accelerator, *hooks, is_train=False)
    loss = call_replacing(wrapped, args, kwargs, batch=batch, args=run_args, is_train=False)
    on_end = getattr(trainer, "on_validation_step_end", None) if end else None
    if on_end is not None:
        on_end(run_args, accelerator, *hooks)
    return loss


def _modules(bound) -> list:
    """The modules a measurement puts in eval mode: the network, the U-Net/DiT and the text encoders."""
    text_encoders = bound["text_encoders"]
    text_encoders = text_encoders if isinstance(text_encoders, (list, tuple)) else [text_encoders]
    return [m for m in (bound["network"], bound["unet"], *text_encoders) if isinstance(m, torch.nn.Module)]


def _rank_mean(accelerator):
    """The mean over ranks of a distributed run (every rank measures its own samples), or None."""
    if getattr(accelerator, "num_processes", 1) > 1:
        return lambda values: accelerator.reduce(values, reduction="mean")
    return None


#: the sd-scripts options that shape the timestep distribution (for the validation's record)
TIMESTEP_OPTIONS = (
    "min_timestep",
    "max_timestep",
    "timestep_sampling",
    "discrete_flow_shift",
    "sigmoid_scale",
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
)


def _validation(args, optimizer):
    from ..options import check_clusters
    from ..validation import Validation

    clusters = (
        optimizer.clusters
        if optimizer is not None
        else check_clusters(getattr(args, "loli_probe_clusters", DEFAULT_CLUSTERS), option="--loli_probe_clusters")
    )
    described = ", ".join(
        f"{name}={getattr(args, name)!r}" for name in TIMESTEP_OPTIONS if getattr(args, name, None) is not None
    )
    seed = getattr(args, "validation_seed", None) or 0
    return Validation(
        clusters,
        seed=seed,
        description=f"sd-scripts: {described or 'defaults'}",
        where="each batch of sd-scripts' own validation passes",
    )


def _batch_size(batch) -> int:
    for key in ("loss_weights", "latents", "images"):
        value = batch.get(key) if isinstance(batch, dict) else None
        if isinstance(value, torch.Tensor):
            return int(value.shape[0])
    return 1


def _accumulate_enters_no_sync(accelerator) -> bool:
    """Would accelerate's ``Accelerator.accumulate`` enter DeepSpeed's ``DeepSpeedEngine.no_sync`` (DeepSpeed 0.16.0
    on) between accumulation boundaries? accelerate 1.6.0 (sd-scripts' pin) does, unless its gradient accumulation
    plugin has ``sync_each_batch``; releases whose ``DeepSpeedEngineWrapper.backward`` takes ``sync_gradients``
    (1.16.0) tell the engine the boundary instead and skip no_sync for ZeRO-2/3."""
    import inspect

    try:
        from accelerate.utils.deepspeed import DeepSpeedEngineWrapper
        from deepspeed.runtime.engine import DeepSpeedEngine
    except ImportError:
        return False
    if not hasattr(DeepSpeedEngine, "no_sync"):
        return False
    if "sync_gradients" in inspect.signature(DeepSpeedEngineWrapper.backward).parameters:
        return False
    state = getattr(accelerator, "gradient_state", None)
    return not (getattr(state, "plugin_kwargs", None) or {}).get("sync_each_batch", False)


def _end_training_destroys_process_group() -> bool:
    """Does accelerate's ``Accelerator.end_training`` destroy the process group (1.6.0, sd-scripts' pin)? Every
    sd-scripts training script calls it before ``train_util.save_state_on_train_end``."""
    import inspect

    try:
        from accelerate import Accelerator

        return "destroy_process_group" in inspect.getsource(Accelerator.end_training)
    except (ImportError, OSError, TypeError):
        return False


def _network_trainer() -> bool:
    """Is a NetworkTrainer script running (train_network.py itself, or a LoRA script importing it)?"""
    return any(hasattr(sys.modules.get(name), "NetworkTrainer") for name in ("train_network", "__main__"))


#: library/deepspeed_utils.py's options for the DeepSpeed settings loli_plugin.deepspeed.check_config names
DEEPSPEED_OPTIONS = {
    "zero_optimization.stage": "--zero_stage",
    "zero_optimization.offload_optimizer.device": "--offload_optimizer_device",
    "fp16.fp16_master_weights_and_grads": "--full_fp16 / --fp16_master_weights_and_gradients",
}


def _check_args(args, optimizer) -> None:
    """Refuse option combinations that cannot work, before the first step."""
    if optimizer is None or args is None:
        return
    if getattr(args, "min_timestep", None) is not None or getattr(args, "max_timestep", None) is not None:
        kohya_ss.check_timestep_range(optimizer.clusters, args)
    if getattr(args, "weighting_scheme", None) == "mode":
        kohya_ss.check_mode_scale(args)


ADAPTER = KohyaAdapter()


@hookimpl
def loli_trainer_adapters():
    return [ADAPTER]
