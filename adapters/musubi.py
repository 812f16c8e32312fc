"""kohya-ss/musubi-tuner adapter: turns musubi-tuner's arguments into a Loli run and keeps its state.

How a run starts (nothing in musubi-tuner is edited):

1. ``pip install`` puts ``loli_plugin.pth`` in site-packages. At interpreter start it installs a finder
   that does nothing until a module listed in ``musubi.watch`` is imported. When musubi-tuner's
   ``training.parser_common`` / ``training.trainer_base`` are imported, ``patches.musubi.ENTRY`` is
   applied: the parser options, the check in ``NetworkTrainer.train`` and the short optimizer name in
   ``NetworkTrainer.get_optimizer``. ``LOLI_PLUGIN_DISABLE=1`` turns it off. Where ``.pth`` files do not
   run, ``python -m loli_plugin.launch SCRIPT ...`` does the same.
2. ``NetworkTrainer.train(args)`` checks a run that asks for a Loli feature before it loads a dataset or a
   model: every patch it needs fits, the trainer class has no override loli-plugin has not read, and the
   options make sense together.
3. Building a ``LoliClustered`` inside ``get_optimizer`` (short name, or the stock dotted route
   ``--optimizer_type loli_plugin.LoliClustered``) activates the run: sampler, loss and log patches
   applied, the loss monitor carried in the optimizer's state_dict (so ``--save_state``/``--resume`` carry
   it). ``--loss_type loli`` with another optimizer activates the loss alone.

Without the start-up hook the dotted route would build a LoliClustered whose clusters musubi-tuner's stock
sampler does not follow; that is refused with an error that says how to enable the hook.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapter import TrainerAdapter
from ..errors import LoliConfigError, LoliUnsupportedTrainerError
from ..hookspecs import hookimpl
from ..layout import OldLayout, TrainerLayout
from ..patches import kohya_ss
from ..patches import musubi as patches
from ..probe import to_device
from ..run import LoliRun

#: the modules the family overrides live in when reached through musubi-tuner's package
_PACKAGE_MODULES = {p.module for p in patches.OVERRIDES.patches}


@dataclass
class MusubiRun(LoliRun):
    """What the patches need during one musubi-tuner training run."""

    #: the family's channel axis, along which the Loli loss takes its cosine
    loss_dim: int = 1
    #: the trainer class's name, for the start-up line
    trainer_name: str = ""

    def describe_optimizer(self) -> str | None:
        text = super().describe_optimizer()
        buckets = getattr(self.config, "num_timestep_buckets", None)
        if (
            text
            and buckets is not None
            and buckets > 1
            and getattr(self.config, "timestep_sampling", "sigma") != "sigma"
        ):
            text += f"; --num_timestep_buckets {buckets} places each draw inside its cluster"
        return text

    def describe_loss(self) -> str | None:
        text = super().describe_loss()
        return text and f"{text}, cosine along dim {self.loss_dim} of {self.trainer_name}'s predictions"


class MusubiAdapter(TrainerAdapter):
    name = "musubi"
    library = patches.LIBRARY
    supported = patches.SUPPORTED
    manifest = Path(__file__).with_suffix(".watch")
    layout = TrainerLayout(
        "musubi_tuner",
        patches.LIBRARY,
        minimum="v0.3.4",
        roots=("src", "."),
        distribution="musubi-tuner",
        old=(
            OldLayout(
                "NetworkTrainer in hv_train_network.py (musubi-tuner before v0.3.0)",
                present=("hv_train_network.py",),
                absent=("training/trainer_base.py",),
            ),
        ),
    )
    entry_patch = patches.GET_OPTIMIZER

    def __init__(self) -> None:
        super().__init__()
        self._drawing = False
        #: OVERRIDES aimed at a family script that runs as another module (``__main__``), by module name
        self._script_overrides: dict = {}
        self._reset_validation()

    def _reset_validation(self) -> None:
        self._held_out = None  # the validation's DatasetGroup, made from --loli_validation_dataset_config
        self._call = None  # the arguments of the last training process_batch call
        self._steps = 0  # optimizer steps of this process (musubi-tuner's own step count starts at 0 on resume)
        self._passes = 0  # validation passes of this process

    def instrumentors(self):
        return [
            (patches.ENTRY, "import"),
            (patches.TRAINING, "run"),
            (patches.OVERRIDES, "run"),
            *((inst, "run") for inst in self._script_overrides.values() if inst is not None),
        ]

    def recognises(self, module) -> bool:
        return module.__name__.startswith("musubi_tuner.")

    def find_checkout(self, path: Path) -> bool:
        return any((path / src / "musubi_tuner" / "training" / "trainer_base.py").is_file() for src in ("src", "."))

    # ------------------------------------------------------------------ what a run asks for
    def requests(self, args) -> set[str]:
        return (
            ({"optimizer"} if kohya_ss.requests_optimizer(args) else set())
            | ({"loss"} if kohya_ss.requests_loss(args) else set())
            | ({"validation"} if patches.requests_validation(args) else set())
        )

    def asked(self, args) -> str:
        asked = kohya_ss.asked(args)
        if patches.requests_validation(args):
            option = "--loli_validation_dataset_config"
            asked = option if asked == "a Loli run" else f"{asked} and {option}"
        return asked

    # ------------------------------------------------------------------ the patches' context
    @property
    def drawing_now(self) -> bool:
        return self._drawing

    @contextlib.contextmanager
    def drawing(self):
        """A cluster draw is in progress (an override's ``super()`` call passes through the base wrapper)."""
        self._drawing = True
        try:
            yield
        finally:
            self._drawing = False

    def check_request(self, trainer, args) -> None:
        """NetworkTrainer.train: refuse a Loli run before any work if it cannot be served (the validation's
        options included: a missing dataset config stops the run before a model is loaded)."""
        features = self.features_for(args)
        if features:
            self._check(trainer, args, features)
        if patches.requests_validation(args):
            _check_validation_options(args)

    def _check(self, trainer, args, features: set) -> None:
        self.require(features, self.asked(args))
        problems = patches.override_problems(type(trainer), features, self._override_instrumentors(type(trainer)))
        if problems:
            raise LoliUnsupportedTrainerError(
                f"loli-plugin cannot run {self.asked(args)} with this {self.library} trainer: "
                + "; ".join(problems)
                + f". Supported: {self.supported}. Train without the Loli options, "
                "or with a LoRA script this version supports."
            )
        _check_args(args, trainer)

    def _override_instrumentors(self, trainer_cls: type) -> list:
        """The family overrides' patches for this trainer: ``OVERRIDES`` (musubi-tuner's package modules) and,
        for a family script that runs as another module (``__main__``), a copy aimed at it, kept and applied
        with the other run-scope patches."""
        found = [patches.OVERRIDES]
        for cls in trainer_cls.__mro__:
            module = cls.__module__
            if module in _PACKAGE_MODULES or module not in sys.modules:
                continue
            if module not in self._script_overrides:
                self._script_overrides[module] = patches.overrides_in(module)
            if self._script_overrides[module] is not None:
                found.append(self._script_overrides[module])
        return found

    def activate(self, trainer, args, optimizer=None) -> MusubiRun:
        """Start a Loli run for musubi-tuner: validate, patch, carry the monitor in the optimizer's state."""
        from ..loss import parse_loss_weights

        self._check(trainer, args, self.features_for(args) or self.features["optimizer"])
        _check_clusters(args, optimizer)
        weights = None
        if kohya_ss.requests_loss(args):
            weights = parse_loss_weights(getattr(args, "loli_loss_weights", None), option="--loli_loss_weights")
        dim = patches.channel_dim(type(trainer), args)
        fields = dict(config=args, loss_weights=weights, loss_dim=1 if dim is None else dim)
        fields.update(trainer_name=type(trainer).__name__)
        run = MusubiRun.for_optimizer(optimizer, **fields) if optimizer is not None else MusubiRun(**fields)
        if patches.requests_validation(args):
            # read now: the trainer knows its architecture once train() has handled the family's options
            self._held_out = _held_out_set(trainer, args)
            run.validation = _validation(args, optimizer)
            run.clusters = run.validation.clusters
        self.run = run
        self.activate_run_patches()
        print(f"loli-plugin active: {self.describe(run)}", file=sys.stderr)
        return run

    # ------------------------------------------------------------------ the validation
    def optimizer_built(self, optimizer) -> None:
        """After get_optimizer (any route): the validation's state rides in the optimizer's state_dict
        (--save_state / --resume carry it) and a pass follows every ``--loli_validation_every`` steps."""
        run = self.run
        if run is None or run.validation is None or optimizer is None:
            return
        from ..run import attach_monitor_state

        attach_monitor_state(optimizer, run.validation, key="loli_validation")
        optimizer.register_step_post_hook(lambda opt, args, kwargs: self.after_step())

    def training_call(self, bound: dict) -> None:
        """A training micro-batch is about to run (NetworkTrainer.process_batch): keep its arguments; the
        first one of this process measures the model before it trains (step 0, the reference of a new run)."""
        self._call = bound
        if self._passes == 0:
            self._validate(0)

    def after_step(self) -> None:
        """After every optimizer step (a step post-hook; not called for a step a GradScaler skipped)."""
        if self.run is None or self._call is None:
            return
        self._steps += 1
        final = self._steps >= int(getattr(self._call["args"], "max_train_steps", 0) or 0)
        if self.run.validation.due(self._steps, final=final):
            self._validate(self._steps)

    def _validate(self, step: int) -> None:
        """One pass over the held-out set through the trainer's own process_batch (its sampler, told the
        cluster, draws the cluster's midpoint), with the models and dtypes of the training call and the
        noise drawn as the loop draws it; every rank measures the whole set and logs the mean over ranks."""
        from ..probe import preserved_rng

        run, call = self.run, self._call
        trainer, accelerator, run_args = call["self"], call["accelerator"], call["args"]
        kwargs = {k: v for k, v in call.items() if k != "self"}
        transformer = accelerator.unwrap_model(call["transformer"])
        swap = bool(getattr(run_args, "blocks_to_swap", None)) and hasattr(
            transformer, "switch_block_swap_for_inference"
        )
        reduce = None
        if getattr(accelerator, "num_processes", 1) > 1:
            reduce = lambda values: accelerator.reduce(values, reduction="mean")  # noqa: E731
        modules = [m for m in (call["network"], call["transformer"]) if isinstance(m, torch.nn.Module)]
        with preserved_rng():  # musubi's datasets reseed Python's random when they shuffle
            batches = [self._held_out[i] for i in range(len(self._held_out))]
        if swap:
            transformer.switch_block_swap_for_inference()
        try:
            for batch in batches:
                batch = to_device(batch, accelerator.device)

                def evaluate(k, position, seed, batch=batch):
                    latents = trainer.scale_shift_latents(batch["latents"])
                    noise = torch.randn_like(latents)  # as the loop draws it; fixed by the reseed
                    with run.probing(k, position):
                        loss, _ = trainer.process_batch(
                            **{**kwargs, "batch": batch, "latents": latents, "noise": noise}
                        )
                    return loss

                run.validation.add(
                    evaluate, batch, batch["latents"].shape[0], modules, reduce, seen=lambda: run.probe_timestep
                )
        finally:
            if swap:
                transformer.switch_block_swap_for_training()
        logs = run.validation.finish(step)
        run.validation.take_logs()  # written now, at the step it measured
        record = run.validation.take_record()
        if record is not None:
            from ..validation import RECORD_TAG

            logs = {**logs, RECORD_TAG: record}  # accelerate's TensorBoard tracker writes a str as text
        self._passes += 1
        if accelerator.trackers:
            accelerator.log(logs, step=step)

    def deactivate(self) -> None:
        super().deactivate()
        self._reset_validation()
        self._drawing = False
        self._script_overrides.clear()  # undone above; made again for the next run's trainer

    def uninstrument(self) -> None:
        super().uninstrument()
        self._script_overrides.clear()

    # ------------------------------------------------------------------ the optimizer's constructor
    def config_from_argv(self, argv: list[str]):
        return kohya_ss.namespace_from_argv(argv)


#: musubi-tuner's options that shape the timestep distribution (for the validation's record)
TIMESTEP_OPTIONS = (
    "timestep_sampling",
    "discrete_flow_shift",
    "sigmoid_scale",
    "weighting_scheme",
    "logit_mean",
    "logit_std",
    "mode_scale",
    "min_timestep",
    "max_timestep",
    "preserve_distribution_shape",
)


def _check_validation_options(args) -> None:
    path = args.loli_validation_dataset_config
    for option in ("loli_validation_every", "loli_validation_clusters"):
        value = getattr(args, option, 1)
        if not isinstance(value, int) or value < 1:
            raise LoliConfigError(f"--{option} must be a whole number >= 1, got {value!r}")
    if not Path(path).is_file():
        raise LoliConfigError(f"--loli_validation_dataset_config {path}: no such file")


def _held_out_set(trainer, args):
    """The validation's DatasetGroup, read from ``--loli_validation_dataset_config`` as ``NetworkTrainer.
    _build_dataset`` reads ``--dataset_config`` (musubi-tuner's config_utils, the trainer's architecture),
    without timestep buckets and with its own epoch counter, under the caller's random states (building a
    dataset group draws a seed from Python's random). Read when the run starts (get_optimizer), before the
    first step: a config without cached items stops the run there."""
    from multiprocessing import Value

    from musubi_tuner.dataset import config_utils
    from musubi_tuner.dataset.config_utils import BlueprintGenerator, ConfigSanitizer

    from ..probe import preserved_rng

    _check_validation_options(args)
    path = args.loli_validation_dataset_config
    with preserved_rng():
        blueprint = BlueprintGenerator(ConfigSanitizer()).generate(
            config_utils.load_user_config(path), args, architecture=trainer.architecture
        )
        group = config_utils.generate_dataset_group_by_blueprint(
            blueprint.dataset_group, training=True, num_timestep_buckets=None, shared_epoch=Value("i", 0)
        )
    if group.num_train_items == 0:
        raise LoliConfigError(
            f"--loli_validation_dataset_config {path}: no cached items. Cache them as the training set is cached, "
            f"with musubi-tuner's own latent and text-encoder caching scripts given --dataset_config {path}"
        )
    return group


def _validation(args, optimizer):
    from ..options import check_clusters
    from ..validation import Validation

    clusters = (
        optimizer.clusters
        if optimizer is not None
        else check_clusters(getattr(args, "loli_validation_clusters", 10), option="--loli_validation_clusters")
    )
    described = ", ".join(
        f"{name}={getattr(args, name)!r}" for name in TIMESTEP_OPTIONS if getattr(args, name, None) is not None
    )
    every = getattr(args, "loli_validation_every", patches.VALIDATION_EVERY)
    where = (
        f"{args.loli_validation_dataset_config} before the first step, every {every} steps and at the end of training"
    )
    return Validation(clusters, seed=0, every=every, description=f"musubi-tuner: {described}", where=where)


def _check_args(args, trainer) -> None:
    """Refuse option combinations that cannot work, before anything is loaded."""
    from ..loss import parse_loss_weights

    if kohya_ss.requests_loss(args):
        weights = parse_loss_weights(getattr(args, "loli_loss_weights", None), option="--loli_loss_weights")
        if weights.get("cos", 0) > 0 and patches.channel_dim(type(trainer), args) is None:
            raise LoliConfigError(
                f"--loss_type loli: loli-plugin does not know which axis of {type(trainer).__name__}'s "
                "predictions holds the latent channels, which its cosine term compares; give the cosine no weight "
                '(--loli_loss_weights "mse=0.5,l1=0.5") or use a family this version supports'
            )
    if not kohya_ss.requests_optimizer(args):
        return
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        # training/accelerator_setup.py prepare_accelerator: "DeepSpeed is not supported in this script currently";
        # accelerate still builds a DeepSpeed plugin from its own config (Accelerator.__init__ reads this variable)
        raise LoliConfigError(
            "musubi-tuner does not offer DeepSpeed (its prepare_accelerator builds no DeepSpeed plugin), but "
            "accelerate is set to use it (ACCELERATE_USE_DEEPSPEED=true: `accelerate config` answered yes to "
            "DeepSpeed, or `accelerate launch --use_deepspeed`). loli-plugin does not run LoliClustered there: "
            "nothing checks that configuration, and its optimizer offload would put DeepSpeedCPUAdam in "
            "LoliClustered's place. Launch without DeepSpeed (plain multi-GPU works), or use optimizer_args "
            "offload=cpu for the banks' memory"
        )
    sampling = getattr(args, "timestep_sampling", "sigma")
    if sampling in patches.MIXTURES and getattr(args, "preserve_distribution_shape", False):
        raise LoliConfigError(
            f"--timestep_sampling {sampling} with --preserve_distribution_shape cannot be split into clusters: "
            f"{sampling} picks one of several samplers per sample, so the [min_timestep, max_timestep] truncation has "
            "no single inverse CDF to slice. Drop --preserve_distribution_shape (musubi-tuner then rescales to "
            "[min, max]) or choose another --timestep_sampling"
        )
    if sampling == "sigma" and getattr(args, "weighting_scheme", "none") == "mode":
        kohya_ss.check_mode_scale(args)


def _check_clusters(args, optimizer) -> None:
    """ "sigma" sampling picks integer indices in [min_timestep, max_timestep): each cluster needs one."""
    if optimizer is not None and getattr(args, "timestep_sampling", "sigma") == "sigma":
        kohya_ss.check_timestep_range(optimizer.clusters, args)


ADAPTER = MusubiAdapter()


@hookimpl
def loli_trainer_adapters():
    return [ADAPTER]
