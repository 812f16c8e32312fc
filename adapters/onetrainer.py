"""Nerogar/OneTrainer adapter: registers LOLI_CLUSTERED and its options, builds the optimizer, keeps
the run's state. Nothing in OneTrainer is edited.

How it activates: ``loli_plugin.pth`` installs a finder that does nothing until a module listed in
``onetrainer.watch`` is imported. OneTrainer's modules are recognised by their file layout (the package
name ``modules`` is shared with other projects). Then:

* ``patches.onetrainer.REGISTRATION`` adds ``Optimizer.LOLI_CLUSTERED``, its default parameters, the
  ``loli_inner``/``loli_clusters``/``loli_schedule`` optimizer fields and ``cos_strength`` (so the UI, JSON
  configs, presets, backups and multi-GPU children have them), and notices configs that ask for them;
* ``ENTRY``: ``create_trainer`` refuses a Loli run this OneTrainer cannot serve, before any work;
  ``create_optimizer`` builds LOLI_CLUSTERED (or activates a cosine-only run) and applies ``TRAINING``;
* ``patches.onetrainer.UI`` adds the plugin's rows to the optimizer window and the loss section.

Multi-GPU children are spawned fresh interpreters: the ``.pth`` runs there too, so every rank registers
the same things before it rebuilds its config.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from ..adapter import FEATURES, TrainerAdapter
from ..errors import LoliConfigError
from ..hookspecs import hookimpl
from ..layout import TrainerLayout
from ..options import DEFAULT_CLUSTERS
from ..patches import onetrainer as patches
from ..probe import to_device
from ..run import LoliRun

#: inner optimizers that cannot be wrapped: (reason)
_MUON = "Muon splits parameter groups by layer type, which OneTrainer's backup re-mapping keys differently"
_REFUSED = {"MUON": _MUON, "MUON_ADV": _MUON, "ADAMUON_ADV": _MUON}


@dataclass
class OneTrainerRun(LoliRun):
    inner: str = ""
    without_optimizer: bool = False


class OneTrainerAdapter(TrainerAdapter):
    name = "onetrainer"
    library = patches.LIBRARY
    supported = patches.SUPPORTED
    manifest = Path(__file__).with_suffix(".watch")
    # `modules` is a common name: OneTrainer's is told by its files
    layout = TrainerLayout(
        "modules",
        patches.LIBRARY,
        minimum="commit 23df383 (2026-08-19)",
        markers=("util/create.py", "util/enum/Optimizer.py", "util/config/TrainConfig.py", "trainer/GenericTrainer.py"),
    )
    entry_patch = patches.CREATE_OPTIMIZER

    def __init__(self) -> None:
        super().__init__()
        #: while OneTrainer's own validation runs: the batches it measured (patches.onetrainer.validate)
        self.held_out: list | None = None

    def deactivate(self) -> None:
        super().deactivate()
        self.held_out = None

    def instrumentors(self):
        return [
            (patches.REGISTRATION, "import"),
            (patches.ENTRY, "import"),
            (patches.UI, "import"),
            (patches.TRAINING, "run"),
        ]

    def recognises(self, module) -> bool:
        path = (getattr(module, "__file__", None) or "").replace(os.sep, "/")
        rel = module.__name__.replace(".", "/") + ".py"
        if not path.endswith(rel):
            return False
        root = Path(path[: -len(rel)])
        return (root / "modules" / "util" / "create.py").is_file() and (
            root / "modules" / "util" / "enum" / "Optimizer.py"
        ).is_file()

    def find_checkout(self, path: Path) -> bool:
        return (path / "modules" / "util" / "create.py").is_file() and (path / "scripts" / "train.py").is_file()

    # ------------------------------------------------------------------ what a run asks for
    #: every Loli run also needs its options registered (the enum member, config fields, defaults)
    features = {request: needed | {"options"} for request, needed in FEATURES.items()}

    def requests(self, config) -> set[str]:
        asked = set(config.__dict__.get("_loli_requested", ()))  # noted by the from_dict guard
        if str(config.optimizer.optimizer) == patches.MEMBER:
            asked.add("optimizer")
        if (getattr(config, "cos_strength", 0.0) or 0.0) > 0:
            asked.add("loss")
        if patches.requests_probe(config):
            asked.add("probe")
        if patches.requests_validation(config):
            asked.add("validation")
        return asked

    def run_requests(self) -> set[str]:
        run = self.run
        if run is None:
            return set()
        return (
            ({"loss"} if run.without_optimizer else {"optimizer"})
            | ({"probe"} if run.probe is not None else set())
            | ({"validation"} if run.validation is not None else set())
        )

    def asked(self, config) -> str:
        features = self.features_for(config)
        names = (
            ("LOLI_CLUSTERED", "sampler"),
            ("a Cosine Strength", "loss"),
            ("the progress probe", "probe"),
            ("loli_validation", "validation"),
        )
        return " and ".join(n for n, f in names if f in features) or "a Loli run"

    def check_request(self, config) -> None:
        super().check_request(config)
        if str(getattr(config, "loli_validation", "auto")) == "on" and not getattr(config, "validation", False):
            raise LoliConfigError(
                "loli_validation is on, but OneTrainer's validation is off: turn on Validation in the training tab "
                '("validation": true) and add a concept of type VALIDATION with held-out images, or set '
                "loli_validation to auto or off"
            )

    def activate_extras(self, config, optimizer, probe_state=None, validation_state=None) -> None:
        """A run with another optimizer: the cosine term, the progress probe and/or the validation, with
        that optimizer."""
        cosine = (getattr(config, "cos_strength", 0.0) or 0.0) > 0
        probe, validation = patches.requests_probe(config), patches.requests_validation(config)
        if self.run is None and (cosine or probe or validation):
            self.run = OneTrainerRun(without_optimizer=True)
            if probe:
                self._start_probe(config, optimizer, probe_state)
            if validation:
                self._start_validation(config, optimizer, validation_state)
            self.activate_run_patches()

    def _start_probe(self, config, optimizer, probe_state=None) -> None:
        """The progress probe of this run; its state rides in the optimizer's (OneTrainer backups carry it)."""
        from ..probe import TrainerProbe
        from ..run import attach_monitor_state, count_steps

        run = self.run
        every, samples = (
            getattr(config, "loli_probe_every", patches.PROBE_EVERY),
            getattr(config, "loli_probe_samples", patches.PROBE_SAMPLES),
        )
        for label, value in (("loli_probe_every", every), ("loli_probe_samples", samples)):
            if not isinstance(value, int) or value < 1:
                raise LoliConfigError(f"{label} must be a whole number >= 1, got {value!r}")
        clusters = self._clusters(config)
        run.probe = TrainerProbe(clusters, every, samples, seed=0)
        if probe_state is not None and probe_state.get("clusters") == clusters:
            run.probe.load_state_dict(probe_state)
        attach_monitor_state(optimizer, run.probe, key="loli_probe")
        count_steps(optimizer, run.probe, lambda: None)  # the probe itself runs in report_to_tensorboard

    def _clusters(self, config) -> int:
        """K of the probe and the validation: LOLI_CLUSTERED's clusters, else ``loli_probe_clusters``."""
        from ..options import check_clusters

        run = self.run
        if not run.stratify and run.probe is None and run.validation is None:
            run.clusters = check_clusters(
                getattr(config, "loli_probe_clusters", DEFAULT_CLUSTERS), option="loli_probe_clusters"
            )
        return run.clusters

    def _start_validation(self, config, optimizer, state=None) -> None:
        """The validation of this run; its state rides in the optimizer's (OneTrainer backups carry it)."""
        from ..run import attach_monitor_state
        from ..validation import Validation

        options = ", ".join(
            f"{name}={getattr(config, name)}" for name in TIMESTEP_OPTIONS if getattr(config, name, None) is not None
        )
        run = self.run
        run.validation = Validation(self._clusters(config), seed=0, description=f"OneTrainer: {options}")
        if state is not None and state.get("clusters") == run.validation.clusters:
            run.validation.load_state_dict(state)
        attach_monitor_state(optimizer, run.validation, key="loli_validation")

    def run_validation(self, trainer, batches, train_progress) -> None:
        """Measure OneTrainer's validation batches at each cluster's midpoint through its own
        ``predict(..., deterministic=True)`` (fixed noise: its generator is seeded with 0, no caption
        dropout; the sampler, told the cluster, draws the cluster's timestep) and ``calculate_loss``, then
        write the values (and, the first time, the comparability record) to OneTrainer's TensorBoard at
        this step. OneTrainer validates on its master rank only; so does the plugin."""
        run, setup, model, config = self.run, trainer.model_setup, trainer.model, trainer.config
        device = getattr(setup, "train_device", None)
        modules = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
        for batch in batches:

            def evaluate(k, position, seed, batch=batch):
                with run.probing(k, position):
                    on_device = to_device(batch, device)
                    output = setup.predict(model, on_device, config, train_progress, deterministic=True)
                    return setup.calculate_loss(model, on_device, output, config)

            run.validation.add(evaluate, batch, _size(batch), modules, seen=lambda: run.probe_timestep)
        step = train_progress.global_step
        logs = run.validation.finish(step)
        run.validation.take_logs()  # written here, at this step
        for tag, value in logs.items():
            trainer.tensorboard.add_scalar(tag, value, step)
        record = run.validation.take_record()
        if record is not None:
            from ..validation import RECORD_TAG

            trainer.tensorboard.add_text(RECORD_TAG, record, step)

    def final_validation(self, trainer) -> None:
        """The end of training (GenericTrainer.end): a last pass over the validation concepts unless the last
        step was measured already (OneTrainer's own schedule validates at the start of its epochs)."""
        config = trainer.config
        progress = trainer.model.train_progress
        loader = getattr(trainer, "validation_data_loader", None)
        if not getattr(config, "validation", False) or loader is None or not getattr(trainer, "one_step_trained", True):
            return
        if not self.run.validation.due(progress.global_step, final=True):
            return
        import modules.util.multi_gpu_util as multi

        if not multi.is_master():
            return
        trainer.model_setup.setup_train_device(trainer.model, config)
        loader.get_data_set().start_next_epoch()
        with torch.no_grad():
            self.run_validation(trainer, loader.get_data_loader(), progress)

    def run_probe(self, setup, model, config) -> None:
        """Measure through OneTrainer's own ``predict`` and ``calculate_loss`` of the model setup, with a
        fixed TrainProgress (predict seeds its noise generator from its step) and no grad, as its own
        validation calls them, but at the probe's timesteps (``deterministic=False``: the sampler draws
        each cluster's midpoint)."""
        import copy as copy_module

        run = self.run
        progress = copy_module.copy(model.train_progress)
        progress.global_step = run.probe.seed
        device = getattr(setup, "train_device", None)

        def evaluate(batch, k):
            with run.probing(k):
                batch = to_device(batch, device)
                output = setup.predict(model, batch, config, progress)
                return setup.calculate_loss(model, batch, output, config)

        modules = [m for m in vars(model).values() if isinstance(m, torch.nn.Module)]
        run.probe.run(evaluate, modules)

    def build_optimizer(self, create_inner, bound: dict):
        """Build LoliClustered for ``create_optimizer``'s arguments ``bound``: OneTrainer's own branch builds
        the inner optimizer (``create_inner(config)``: the original with the caller's other arguments, as
        they came), LoliClustered wraps it, a backup is loaded."""
        from modules.util.enum.Optimizer import Optimizer

        from .. import LoliClustered
        from ..inner import SCHEDULE_FREE_REASON
        from ..options import check_clusters

        config = bound["config"]
        oc = config.optimizer
        inner_name = str(getattr(oc, "loli_inner", "") or "").strip()
        choices = [m for m in Optimizer.__members__ if m != patches.MEMBER] + list(patches.PLUGIN_INNERS)
        if inner_name not in choices:
            raise LoliConfigError(
                f"Inner Optimizer (optimizer.loli_inner) is {inner_name!r}, not a OneTrainer optimizer; "
                "pick one in the optimizer window, e.g. ADAMW, ADAMW_8BIT, PRODIGY, LION, CAME "
                f"(all: {', '.join(choices)})"
            )
        if inner_name not in patches.PLUGIN_INNERS:
            inner_member = Optimizer[inner_name]
            if inner_member.is_schedule_free:
                raise LoliConfigError(f"Inner Optimizer {inner_name} cannot be used: {SCHEDULE_FREE_REASON}")
        if inner_name in _REFUSED:
            raise LoliConfigError(
                f"Inner Optimizer {inner_name} cannot be used with LOLI_CLUSTERED: {_REFUSED[inner_name]}"
            )
        if getattr(oc, "fused_back_pass", False):
            raise LoliConfigError(
                "Fused Back Pass is not supported by LOLI_CLUSTERED (its per-parameter steps bypass the cluster "
                "banks); turn off 'Fused Back Pass' in the optimizer window"
            )
        clusters = check_clusters(
            getattr(oc, "loli_clusters", DEFAULT_CLUSTERS), option="Timestep Clusters (optimizer.loli_clusters)"
        )
        import _loli_plugin_autoload

        if getattr(config, "multi_gpu", False) and _loli_plugin_autoload.INSTALLED_BY == "launcher":
            raise LoliConfigError(
                "Multi-GPU training with LOLI_CLUSTERED needs loli-plugin's start-up hook in every spawned rank: "
                "install loli-plugin with pip (not editable) so loli_plugin.pth runs, instead of the "
                "python -m loli_plugin.launch launcher"
            )
        if inner_name in patches.PLUGIN_INNERS:
            inner = _plugin_inner(
                inner_name, bound["parameter_group_collection"].parameters_for_optimizer(config), config
            )
        else:
            inner_optimizer_config = copy.copy(oc)
            inner_optimizer_config.optimizer = inner_member
            inner_config = copy.copy(config)
            inner_config.optimizer = inner_optimizer_config
            inner = create_inner(inner_config)
        if inner is None:
            raise LoliConfigError(f"OneTrainer built no optimizer for Inner Optimizer {inner_name}")
        optimizer = LoliClustered.wrap(
            inner, clusters=clusters, schedule=str(getattr(oc, "loli_schedule", "shuffle")), seed=0, name=inner_name
        )
        run = OneTrainerRun.for_optimizer(optimizer, inner=inner_name)
        self.run = run
        if patches.requests_probe(config):
            self._start_probe(config, optimizer)
        if patches.requests_validation(config):
            self._start_validation(config, optimizer)
        if bound.get("state_dict") is not None:
            load_backup(optimizer, bound["state_dict"], bound["parameter_group_collection"].unique_name_mapping)
        self.activate_run_patches()
        print(
            f"loli-plugin: LOLI_CLUSTERED(inner={inner_name}, clusters={clusters}, "
            f"schedule={optimizer.schedule.strategy}); timesteps drawn from one cluster per optimizer step",
            file=sys.stderr,
        )
        return optimizer


#: OneTrainer's config fields that shape the timestep distribution (for the validation's record)
TIMESTEP_OPTIONS = (
    "timestep_distribution",
    "min_noising_strength",
    "max_noising_strength",
    "noising_weight",
    "noising_bias",
    "timestep_shift",
    "dynamic_timestep_shifting",
)


def _size(batch) -> int:
    """Samples in a OneTrainer batch (its validation batches hold one)."""
    latent = batch.get("latent_image") if isinstance(batch, dict) else None
    return int(latent.shape[0]) if isinstance(latent, torch.Tensor) else 1


def _plugin_inner(name: str, parameters, config):
    """An inner optimizer OneTrainer does not have, configured by the rows of the one it resembles
    (``patches.onetrainer.PLUGIN_INNERS``); the option values are read as OneTrainer's own ADAMW branch
    reads them (modules/util/create.py ``create_optimizer``, ``case Optimizer.ADAMW``)."""
    from ..clustered_second_moment import AdamWClusteredSecondMoment

    oc = config.optimizer

    def value(key, default):
        v = getattr(oc, key, None)
        return default if v is None else v

    for key, label in (
        ("stochastic_rounding", "Stochastic Rounding"),
        ("amsgrad", "AMSGrad"),
        ("capturable", "Capturable"),
        ("differentiable", "Differentiable"),
    ):
        if value(key, False):
            raise LoliConfigError(
                f"Inner Optimizer {name} does not implement '{label}'; turn it off in the optimizer window"
            )
    # ADAMW's default in OneTrainer is fused=True; this optimizer has no fused kernel, its foreach path is the fast one
    return AdamWClusteredSecondMoment(
        parameters,
        lr=config.learning_rate,
        betas=(value("beta1", 0.9), value("beta2", 0.999)),
        eps=value("eps", 1e-8),
        weight_decay=value("weight_decay", 1e-2),
        maximize=value("maximize", False),
        foreach=bool(value("foreach", False) or value("fused", False)),
        momentum="normalized" if name.endswith("_NORMALIZED") else "raw",
    )


def load_backup(optimizer, saved: dict, group_names: list[str]) -> None:
    """Load a OneTrainer backup's ``optimizer.pt`` into ``optimizer``.

    OneTrainer saves ``param_group_mapping`` (the unique name of each group) and
    ``param_group_optimizer_mapping`` next to the optimizer state, and re-maps groups by name when the
    LoRA layout changes. The same contract is kept here: groups whose name and optimizer match keep
    their saved state (all cluster banks and group values), the others start fresh. A backup made with
    another optimizer starts fresh, as OneTrainer does; one made with another cluster count or inner
    optimizer is refused by ``LoliClustered.load_state_dict`` with the option to change.
    """
    if "loli" not in saved:
        print(
            "loli-plugin: the backup's optimizer state was saved by another optimizer; LOLI_CLUSTERED starts fresh",
            file=sys.stderr,
        )
        return
    saved = dict(saved)
    fresh = optimizer.state_dict()["param_groups"]
    old_names = saved.pop("param_group_mapping", None)
    old_optimizers = saved.pop("param_group_optimizer_mapping", None)
    state, groups, next_index = {}, [], 0
    for i, name in enumerate(group_names):
        new = fresh[i]
        old_i = (
            old_names.index(name) if old_names is not None and name in old_names else (i if old_names is None else None)
        )
        reuse = old_i is not None and (old_optimizers is None or old_optimizers[old_i] == patches.MEMBER)
        source = saved["param_groups"][old_i] if reuse else new
        indices = list(range(next_index, next_index + len(source["params"])))
        if reuse:
            for new_index, old_index in zip(indices, source["params"]):
                if old_index in saved["state"]:
                    state[new_index] = saved["state"][old_index]
        groups.append({**source, "params": indices, "lr": new["lr"], "initial_lr": new.get("initial_lr", new["lr"])})
        next_index += len(indices)
    optimizer.load_state_dict({**saved, "state": state, "param_groups": groups})


ADAPTER = OneTrainerAdapter()


@hookimpl
def loli_trainer_adapters():
    return [ADAPTER]
