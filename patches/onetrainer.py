"""Patches for Nerogar/OneTrainer (read and tested at commit 23df383, 2026-08-19; OneTrainer has no
version number, so support is decided by the presence and signatures of the targets below).

Wrappers receive the adapter as ``context`` (handed over at instrument time) and use ``context.run``,
``context.check_request(config)``, ``context.build_optimizer(create_inner, bound)`` and
``context.activate_loss(config)``. Every wrapper passes through unless the run uses a Loli option.

Instrumentors (scope ``import``: applied when the module is imported; ``run``: when a run asks for a
Loli feature):

* ``REGISTRATION`` (import): ``Optimizer.LOLI_CLUSTERED``, its default parameters, the plugin's config
  fields (so the UI, JSON configs, presets, backups and multi-GPU children carry them), the
  ``from_dict`` guard that notices a config asking for a Loli feature this OneTrainer cannot serve
  (OneTrainer would otherwise fall back to its default optimizer with "Could not set optimizer").
* ``ENTRY`` (import): ``create_trainer`` (refuses an unservable Loli run before any work) and
  ``create_optimizer`` (builds LOLI_CLUSTERED, activates Loli runs).
* ``TRAINING`` (run): timesteps, the cosine term, per-cluster loss recording, TensorBoard, the probe, the
  validation (inside OneTrainer's own ``GenericTrainer.__validate``, and a last pass in ``end``).
* ``UI`` (import): the plugin's rows in the optimizer window and Cosine Strength in the loss section.
"""

from __future__ import annotations

import sys

import torch

from ..errors import LoliConfigError
from ..options import DEFAULT_CLUSTERS
from .draws import cluster_draw
from .instrument import EnumMemberPatch, FunctionPatch, Instrumentor, MappingEntryPatch, bind_arguments, call_replacing

SUPPORTED = "Nerogar/OneTrainer at commit 23df383 (2026-08-19) or a later one with the same functions"
LIBRARY = "Nerogar/OneTrainer"
MEMBER = "LOLI_CLUSTERED"
#: TrainOptimizerConfig fields the plugin adds: (name, default, type, nullable)
OPTIMIZER_FIELDS = [
    ("loli_inner", "ADAMW", str, False),
    ("loli_clusters", DEFAULT_CLUSTERS, int, False),
    ("loli_schedule", "shuffle", str, False),
]
#: inner optimizers the plugin offers beyond OneTrainer's own list: name -> the OneTrainer optimizer
#: whose parameter rows (and defaults) configure it
PLUGIN_INNERS = {"ADAMW_CLUSTERED_SECOND_MOMENT": "ADAMW", "ADAMW_CLUSTERED_SECOND_MOMENT_NORMALIZED": "ADAMW"}


def rows_of(inner_name: str) -> str:
    """The OneTrainer optimizer whose rows and defaults an inner optimizer uses (its own, or, for a
    plugin-owned inner, the one it is configured like)."""
    return PLUGIN_INNERS.get(inner_name, inner_name)


#: TrainConfig fields: the cosine term of the loss section, and the progress probe (auto: on with
#: LOLI_CLUSTERED; every N optimizer steps; training samples kept, in whole batches: 1 = the first batch;
#: probe timesteps without LOLI_CLUSTERED)
PROBE_EVERY, PROBE_SAMPLES = 100, 1
CONFIG_FIELDS = [
    ("cos_strength", 0.0, float, False),
    ("loli_probe", "auto", str, False),
    ("loli_probe_every", PROBE_EVERY, int, False),
    ("loli_probe_samples", PROBE_SAMPLES, int, False),
    ("loli_probe_clusters", DEFAULT_CLUSTERS, int, False),
    # the validation on OneTrainer's VALIDATION concepts (auto: on with LOLI_CLUSTERED when OneTrainer validates)
    ("loli_validation", "auto", str, False),
]


def requests_probe(config) -> bool:
    mode = str(getattr(config, "loli_probe", "auto") or "auto")
    return mode == "on" or (mode == "auto" and str(config.optimizer.optimizer) == MEMBER)


def requests_validation(config) -> bool:
    """``loli_validation: on`` (any optimizer), or ``auto`` with LOLI_CLUSTERED when OneTrainer's own
    validation is on (``validation: true`` and VALIDATION concepts)."""
    mode = str(getattr(config, "loli_validation", "auto") or "auto")
    return mode == "on" or (
        mode == "auto" and str(config.optimizer.optimizer) == MEMBER and bool(getattr(config, "validation", False))
    )


#: what the optimizer window shows for the plugin's rows (title, tooltip, kind)
FIELD_DETAILS = {
    "loli_inner": (
        "Inner Optimizer",
        "The optimizer LoliClustered runs once per timestep cluster (its parameters are the rows below)",
        "options",
    ),
    "loli_clusters": (
        "Timestep Clusters",
        "Number of timestep clusters K; each keeps its own optimizer state (K x optimizer memory)",
        "int",
    ),
    "loli_schedule": (
        "Cluster Schedule",
        "shuffle: every cluster once per K steps; random: i.i.d.; round_robin: 0,1,2,...",
        "schedule",
    ),
}
NOISE_MIXIN = "modules.modelSetup.mixin.ModelSetupNoiseMixin"
LOSS_MIXIN = "modules.modelSetup.mixin.ModelSetupDiffusionLossMixin"


OPTIMIZER_ENUM = "modules.util.enum.Optimizer"
OPTIMIZER_UTIL = "modules.util.optimizer_util"
TRAIN_CONFIG = "modules.util.config.TrainConfig"
BASE_CONFIG = "modules.util.config.BaseConfig"
CREATE = "modules.util.create"


# --------------------------------------------------------------------------- registration
def _is_onetrainer_optimizer_enum(cls) -> str | None:
    return None if "ADAMW" in cls.__members__ else f"{cls.__module__}.{cls.__qualname__}: has no ADAMW member"


def maybe_adjust_lrs(context, wrapped, instance, args, kwargs):
    """modules/util/enum/Optimizer.py ``Optimizer.maybe_adjust_lrs(self, lrs, optimizer)``: what
    BaseModelSetup.report_to_tensorboard writes as ``lr/<group>``; for an adaptive member (PRODIGY,
    DADAPT_*) the effective ``lr * d``. LOLI_CLUSTERED is not adaptive itself but its inner may be: the
    call goes to the inner's member, which reads the param groups LoliClustered shares with the inner."""
    bound = bind_arguments(wrapped, args, kwargs)
    member, optimizer = bound["self"], bound["optimizer"]
    if member._name_ == MEMBER:
        inner = type(member)._member_map_.get(str(getattr(optimizer, "inner_name", "")))
        if inner is not None and inner._name_ != MEMBER:
            return call_replacing(wrapped, args, kwargs, self=inner)  # every other argument as it came
    return wrapped(*args, **kwargs)


def _member(module_name: str = OPTIMIZER_ENUM):
    return sys.modules[module_name].Optimizer[MEMBER]


def _default_parameters(module) -> dict:
    """The plugin's keys first, then the inner's own defaults (ADAMW's by default): the optimizer
    window lays out the inner's rows under the plugin's."""
    optimizer = sys.modules[OPTIMIZER_ENUM].Optimizer
    return {**{n: d for n, d, _, _ in OPTIMIZER_FIELDS}, **module.OPTIMIZER_DEFAULT_PARAMETERS[optimizer.ADAMW]}


def _add_fields(config, fields) -> None:
    for name, default, kind, nullable in fields:
        if name in config.types:
            continue
        setattr(config, name, default)
        config.types[name] = kind
        config.nullables[name] = nullable
        config.default_values[name] = default


def _fields_factory(fields):
    def default_values(context, wrapped, instance, args, kwargs):
        """modules/util/config/TrainConfig.py ``TrainOptimizerConfig.default_values`` / ``TrainConfig.
        default_values``: the static factories every config (UI, JSON, multi-GPU child, backup) is built
        from; fields added here save, load and reach the UI state."""
        config = wrapped(*args, **kwargs)
        _add_fields(config, fields)
        return config

    return default_values


def config_requests(data) -> set[str]:
    """What a raw config dict asks of the plugin: {"optimizer"} for LOLI_CLUSTERED, {"loss"} for a
    cosine strength > 0."""
    asked = set()
    if not isinstance(data, dict):
        return asked
    optimizer = data.get("optimizer")
    if isinstance(optimizer, dict) and str(optimizer.get("optimizer")) == MEMBER:
        asked.add("optimizer")
    try:
        if float(data.get("cos_strength") or 0) > 0:
            asked.add("loss")
    except (TypeError, ValueError):
        pass
    if str(data.get("loli_probe")) == "on":
        asked.add("probe")
    if str(data.get("loli_validation")) == "on":
        asked.add("validation")
    return asked


def from_dict(context, wrapped, instance, args, kwargs):
    """modules/util/config/BaseConfig.py ``BaseConfig.from_dict(self, data, migrate=True)``: OneTrainer
    skips what it cannot set ("Could not set optimizer as ...") and keeps its default, so a config
    naming LOLI_CLUSTERED on a OneTrainer the plugin cannot serve would train with ADAMW. The request is
    noted on the config; ``create_trainer``/``create_optimizer`` refuse the run if it cannot be served."""
    bound = bind_arguments(wrapped, args, kwargs)
    result = wrapped(*args, **kwargs)
    asked = config_requests(bound["data"])
    if asked:
        bound["self"].__dict__["_loli_requested"] = asked
    return result


MEMBER_PATCH = EnumMemberPatch(
    OPTIMIZER_ENUM,
    "Optimizer",
    "adds LOLI_CLUSTERED to the optimizer list",
    "options",
    member=MEMBER,
    check=_is_onetrainer_optimizer_enum,
)
REGISTRATION = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        MEMBER_PATCH,
        FunctionPatch(
            OPTIMIZER_ENUM,
            "Optimizer.maybe_adjust_lrs",
            "lr/<group> shows d*lr for adaptive inner optimizers",
            "logs",
            params=["self", "lrs", "optimizer"],
            reads=["self", "optimizer"],
            wrapper=maybe_adjust_lrs,
            optional=True,
        ),
        MappingEntryPatch(
            OPTIMIZER_UTIL,
            "OPTIMIZER_DEFAULT_PARAMETERS",
            "LOLI_CLUSTERED's default parameters",
            "options",
            key=lambda module: _member(),
            value=_default_parameters,
        ),
        FunctionPatch(
            TRAIN_CONFIG,
            "TrainOptimizerConfig.default_values",
            "optimizer fields loli_inner, loli_clusters, loli_schedule",
            "options",
            params=[],
            wrapper=_fields_factory(OPTIMIZER_FIELDS),
        ),
        FunctionPatch(
            TRAIN_CONFIG,
            "TrainConfig.default_values",
            "config field cos_strength",
            "options",
            params=[],
            wrapper=_fields_factory(CONFIG_FIELDS),
        ),
        FunctionPatch(
            BASE_CONFIG,
            "BaseConfig.from_dict",
            "notices configs that ask for LOLI_CLUSTERED or a cosine strength",
            "options",
            params=["self", "data", "migrate"],
            reads=["self", "data"],
            wrapper=from_dict,
        ),
    ],
)


# --------------------------------------------------------------------------- optimizer
def create_trainer(context, wrapped, instance, args, kwargs):
    """modules/util/create.py ``create_trainer(config, callbacks, commands, reattach=False)``: the start
    of every training (scripts/train.py, the UI): a Loli run this OneTrainer cannot serve stops here."""
    context.check_request(bind_arguments(wrapped, args, kwargs)["config"])
    return wrapped(*args, **kwargs)


def create_optimizer(context, wrapped, instance, args, kwargs):
    """modules/util/create.py ``create_optimizer(parameter_group_collection, state_dict, config, layer_key_fn)``:
    for LOLI_CLUSTERED, OneTrainer's own branch builds the inner optimizer (so every inner parameter
    keeps working), LoliClustered wraps it, and the backup state is loaded into the wrapper; a run with
    only a cosine strength activates the loss. The inner call gets the caller's arguments with only
    ``state_dict`` and ``config`` replaced: the last parameter (``layer_key_fn`` here, ``model`` in
    OneTrainer pull requests #1344 and #1557) is passed on as it came, whatever its name."""
    bound = bind_arguments(wrapped, args, kwargs)
    config = bound["config"]
    context.check_request(config)
    if str(config.optimizer.optimizer) == MEMBER:

        def create_inner(inner_config):
            return call_replacing(wrapped, args, kwargs, state_dict=None, config=inner_config)

        return context.build_optimizer(create_inner, bound)
    saved = bound["state_dict"]
    # the probe's and the validation's saved states: taken out before OneTrainer's own load, which knows
    # nothing of them
    probe_state = saved.pop("loli_probe", None) if isinstance(saved, dict) else None
    validation_state = saved.pop("loli_validation", None) if isinstance(saved, dict) else None
    optimizer = wrapped(*args, **kwargs)
    context.activate_extras(config, optimizer, probe_state, validation_state)
    return optimizer


#: where every Loli run activates (feature "activation"); it reads and replaces only the first three
#: parameters and forwards the fourth (``layer_key_fn``, or ``model`` in OneTrainer PRs #1344/#1557) untouched
CREATE_OPTIMIZER = FunctionPatch(
    CREATE,
    "create_optimizer",
    "builds LOLI_CLUSTERED around the inner optimizer; activates Loli runs",
    "activation",
    params=["parameter_group_collection", "state_dict", "config", "layer_key_fn"],
    reads=["parameter_group_collection", "state_dict", "config"],
    wrapper=create_optimizer,
)
ENTRY = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        FunctionPatch(
            CREATE,
            "create_trainer",
            "refuses a Loli run this OneTrainer cannot serve, before any work",
            "activation",
            params=["config", "callbacks", "commands"],
            reads=["config"],
            wrapper=create_trainer,
        ),
        CREATE_OPTIMIZER,
    ],
)


# --------------------------------------------------------------------------- timesteps
def _reflect(config) -> bool:
    """True when OneTrainer's map from its raw draw to the timestep decreases (HEAVY_TAIL's
    ``1 - u - s(...)``; BETA with alpha == 1, ``1 - u**(1/beta)``): cluster k then draws the mirrored slice,
    so cluster 0 always holds the lowest timesteps."""
    dist = str(config.timestep_distribution)
    if dist == "HEAVY_TAIL":
        return True
    if dist == "BETA":
        alpha, beta = max(1e-4, config.noising_weight), max(1e-4, config.noising_bias)
        return abs(beta - 1.0) >= 1e-5 and abs(alpha - 1.0) < 1e-5
    return False


def get_timestep_discrete(context, wrapped, instance, args, kwargs):
    """modules/modelSetup/mixin/ModelSetupNoiseMixin.py ``ModelSetupNoiseMixin._get_timestep_discrete(self,
    num_train_timesteps, deterministic, generator, batch_size, config, shift=None)``: every model setup
    (and ``_get_timestep_continuous``) draws its training timesteps here. The first draw (rand, normal,
    multinomial over the pmf, or Beta) becomes a draw from the optimizer's cluster; OneTrainer's own
    transform and shift run unchanged, with OneTrainer's generator. Deterministic (validation) calls and
    the UI's distribution preview (TimestepGenerator) are handed over untouched, except while the probe or
    the validation measures: then every sample gets the quantile the run asks for, also in a deterministic
    call (the plugin's validation runs OneTrainer's own deterministic validation predict, whose only
    timestep is then the cluster's)."""
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    run = context.run
    probing = run is not None and run.probe_cluster is not None
    if (
        run is None
        or not (run.stratify or probing)
        or (bound["deterministic"] and not probing)
        or type(instance).__name__ == "TimestepGenerator"
    ):
        if run is not None and bound.get("deterministic"):
            run.untracked_draw()
        return wrapped(*args, **kwargs)
    config = bound["config"]
    n = int(bound["num_train_timesteps"])
    admissible = int(n * config.max_noising_strength) - int(n * config.min_noising_strength)
    if run.clusters > admissible:
        raise LoliConfigError(
            f"Timestep Clusters ({run.clusters}) is larger than the {admissible} timesteps allowed by the min/max "
            "noising strength; lower the cluster count or widen the noising strength range"
        )
    if str(config.timestep_distribution) == "HEAVY_TAIL":
        from ..sampling import ModeScale

        try:  # the heavy-tail map folds over itself outside this range: no quantile slices exist
            ModeScale(config.noising_weight)
        except LoliConfigError as exc:
            raise LoliConfigError(f"Noising Weight with the HEAVY_TAIL timestep distribution: {exc}") from None
    k = run.probe_cluster if probing else run.take_cluster()
    if _reflect(config):
        k = run.clusters - 1 - k
    with cluster_draw(
        sys.modules[NOISE_MIXIN],
        k,
        run.clusters,
        int(bound["batch_size"]),
        "ModelSetupNoiseMixin._get_timestep_discrete",
        SUPPORTED,
        f"timestep_distribution={config.timestep_distribution}",
        position=run.probe_position if probing else None,
    ):
        if bound["deterministic"]:  # a fixed draw through the random branch (it draws from the stand-in first)
            t = call_replacing(wrapped, args, kwargs, deterministic=False)
        else:
            t = wrapped(*args, **kwargs)
    if probing:
        run.note_timesteps(t)
    return t


# --------------------------------------------------------------------------- loss
def _cos_map(pred, target):
    from ..loss import cosine_term

    # (B, 1, ...) per position along the channel dim, zero-safe; broadcast to the prediction's shape
    return cosine_term(pred.float(), target.float(), dim=1).expand(pred.shape)


def _cosine_inputs(wrapped, args, kwargs):
    """(batch, data, config, cos_strength) of a ``__masked_losses`` / ``__unmasked_losses`` call."""
    bound = bind_arguments(wrapped, args, kwargs)
    return bound["batch"], bound["data"], bound["config"], getattr(bound["config"], "cos_strength", 0.0) or 0.0


def unmasked_losses(context, wrapped, instance, args, kwargs):
    """ModelSetupDiffusionLossMixin.__unmasked_losses(self, batch, data, config) -> per-sample (B,) losses
    (or int 0): add ``cos_strength * (1 - cos(pred, target))`` averaged like the other terms."""
    losses = wrapped(*args, **kwargs)
    batch, data, config, strength = _cosine_inputs(wrapped, args, kwargs)
    if strength == 0:
        return losses
    mean_dim = list(range(1, data["predicted"].ndim))
    term = _cos_map(data["predicted"], data["target"]).mean(mean_dim) * strength
    if config.masked_training and config.normalize_masked_area_loss:  # as the original does for its terms
        term = term / torch.clamp(batch["latent_mask"], config.unmasked_weight, 1).mean(mean_dim)
    return losses + term


def masked_losses(context, wrapped, instance, args, kwargs):
    """ModelSetupDiffusionLossMixin.__masked_losses(self, batch, data, config): the cosine term goes through
    OneTrainer's own ``masked_losses_with_prior`` (mask weight, area normalisation, prior preservation)."""
    losses = wrapped(*args, **kwargs)
    batch, data, config, strength = _cosine_inputs(wrapped, args, kwargs)
    if strength == 0:
        return losses
    from modules.util.loss.masked_loss import masked_losses_with_prior

    mean_dim = list(range(1, data["predicted"].ndim))
    term = (
        masked_losses_with_prior(
            losses=_cos_map(data["predicted"], data["target"]).clone(),
            prior_losses=_cos_map(data["predicted"], data["prior_target"]).clone() if "prior_target" in data else None,
            mask=batch["latent_mask"].float(),
            unmasked_weight=config.unmasked_weight,
            normalize_masked_area_loss=config.normalize_masked_area_loss,
            masked_prior_preservation_weight=config.masked_prior_preservation_weight,
        ).mean(mean_dim)
        * strength
    )
    return losses + term


def record_losses(context, wrapped, instance, args, kwargs):
    """``_diffusion_losses`` / ``_flow_matching_losses`` return the per-sample training losses; record their
    mean under the cluster the timesteps came from (validation runs under no_grad and is skipped)."""
    losses = wrapped(*args, **kwargs)
    run = context.run
    if run is not None:
        run.record_loss(losses)
        if run.probe is not None and run.probe_cluster is None and torch.is_grad_enabled() and run.probe.wants():
            batch = bind_arguments(wrapped, args, kwargs)["batch"]  # the batch as OneTrainer prepared it
            run.probe.keep(batch, int(losses.shape[0]) if isinstance(losses, torch.Tensor) and losses.ndim else 1)
        if context.held_out is not None and run.probe_cluster is None and not torch.is_grad_enabled():
            batch = bind_arguments(wrapped, args, kwargs)["batch"]  # a batch of OneTrainer's validation
            if not context.held_out or context.held_out[-1] is not batch:
                context.held_out.append(batch)
    return losses


# --------------------------------------------------------------------------- tensorboard
def report_to_tensorboard(context, wrapped, instance, args, kwargs):
    """modules/modelSetup/BaseModelSetup.py ``report_to_tensorboard(self, model, config, scheduler,
    tensorboard)``: called on the master rank once per optimizer update, after the step; add the
    per-cluster scalars, and take the progress probe here when it is due (the one place with the model
    setup, the model and the config after a step: the probe runs on the master rank only)."""
    result = wrapped(*args, **kwargs)
    run = context.run
    if run is not None:
        bound = bind_arguments(wrapped, args, kwargs)
        if run.probe is not None and run.probe.due():
            context.run_probe(bound["self"], bound["model"], bound["config"])
        step = bound["model"].train_progress.global_step
        for tag, value in run.logs().items():
            bound["tensorboard"].add_scalar(tag, value, step)
    return result


# --------------------------------------------------------------------------- validation
def validate(context, wrapped, instance, args, kwargs):
    """modules/trainer/GenericTrainer.py ``GenericTrainer.__validate(self, train_progress)``: OneTrainer's own
    validation (master rank, when ``validate_after`` says so) over its VALIDATION concepts, at one fixed
    timestep. The batches it measures (taken where their loss is computed, ``record_losses``) are then
    measured by the plugin at each cluster's midpoint, through the same predict and calculate_loss, and
    logged at the same step (``context.run_validation``)."""
    run = context.run
    if run is None or run.validation is None:
        return wrapped(*args, **kwargs)
    bound = bind_arguments(wrapped, args, kwargs)
    context.held_out = []
    try:
        result = wrapped(*args, **kwargs)
    finally:
        batches, context.held_out = context.held_out, None
    if batches:
        context.run_validation(bound["self"], batches, bound["train_progress"])
    return result


def end(context, wrapped, instance, args, kwargs):
    """modules/trainer/GenericTrainer.py ``GenericTrainer.end(self)``: after the last step, before the backup
    and the final save. OneTrainer validates at the start of its epochs (``validate_after``), so the
    plugin adds a last pass over the validation concepts here unless this step was measured already."""
    run = context.run
    if run is not None and run.validation is not None:
        context.final_validation(bind_arguments(wrapped, args, kwargs)["self"])
    return wrapped(*args, **kwargs)


GENERIC_TRAINER = "modules.trainer.GenericTrainer"
_LOSS_PARAMS = ["self", "batch", "data", "config"]
_LOSS_READS = ["batch", "data", "config"]

TRAINING = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        FunctionPatch(
            NOISE_MIXIN,
            "ModelSetupNoiseMixin._get_timestep_discrete",
            "timesteps from one cluster per optimizer step (every model)",
            ("sampler", "probe", "validation"),
            params=["self", "num_train_timesteps", "deterministic", "generator", "batch_size", "config", "shift"],
            reads=["self", "num_train_timesteps", "deterministic", "batch_size", "config"],
            wrapper=get_timestep_discrete,
        ),
        FunctionPatch(
            LOSS_MIXIN,
            "ModelSetupDiffusionLossMixin._ModelSetupDiffusionLossMixin__unmasked_losses",
            "cosine strength (unmasked)",
            "loss",
            params=_LOSS_PARAMS,
            reads=_LOSS_READS,
            wrapper=unmasked_losses,
        ),
        FunctionPatch(
            LOSS_MIXIN,
            "ModelSetupDiffusionLossMixin._ModelSetupDiffusionLossMixin__masked_losses",
            "cosine strength (masked training)",
            "loss",
            params=_LOSS_PARAMS,
            reads=_LOSS_READS,
            wrapper=masked_losses,
        ),
        FunctionPatch(
            LOSS_MIXIN,
            "ModelSetupDiffusionLossMixin._diffusion_losses",
            "per-cluster loss; the probe's and the validation's batches (diffusion models)",
            ("logs", "probe", "validation"),
            params=["self", "batch", "data", "config", "train_device", "betas", "alphas_cumprod_fun"],
            reads=["batch"],
            wrapper=record_losses,
        ),
        FunctionPatch(
            LOSS_MIXIN,
            "ModelSetupDiffusionLossMixin._flow_matching_losses",
            "per-cluster loss; the probe's and the validation's batches (flow models)",
            ("logs", "probe", "validation"),
            params=["self", "batch", "data", "config", "train_device", "sigmas"],
            reads=["batch"],
            wrapper=record_losses,
        ),
        FunctionPatch(
            "modules.modelSetup.BaseModelSetup",
            "BaseModelSetup.report_to_tensorboard",
            "loss/cluster_XX, loss/normalized and the probe in TensorBoard",
            ("logs", "probe"),
            params=["self", "model", "config", "scheduler", "tensorboard"],
            reads=["self", "model", "config", "tensorboard"],
            wrapper=report_to_tensorboard,
        ),
        FunctionPatch(
            GENERIC_TRAINER,
            "GenericTrainer._GenericTrainer__validate",
            "validation: the clusters' midpoints on OneTrainer's validation batches",
            "validation",
            params=["self", "train_progress"],
            wrapper=validate,
        ),
        FunctionPatch(
            GENERIC_TRAINER,
            "GenericTrainer.end",
            "validation: a last pass at the end of training",
            "validation",
            params=["self"],
            wrapper=end,
        ),
    ],
)


# --------------------------------------------------------------------------- UI
# OneTrainer UI additions (the Base/Ctk/PySide6 view layout of July 2026 and later).
#
# * Optimizer window (modules/ui/BaseOptimizerParamsWindowView.py ``build_dynamic_content``, whose
#   ``KEY_DETAIL_MAP`` is a local): for LOLI_CLUSTERED the original lays out the *inner* optimizer's own
#   rows with OneTrainer's own labels, and the plugin fills the three slots its keys occupy with
#   "Inner Optimizer", "Timestep Clusters" and "Cluster Schedule". Changing the inner optimizer rebuilds
#   the rows.
# * Training tab (modules/ui/BaseTrainingTabView.py ``__create_loss_frame``, private): a "Cosine
#   Strength" entry on the first free row of the loss section, beside MSE and MAE strength.
# * Optimizer window, every optimizer: the progress probe's four TrainConfig fields (``CONFIG_FIELDS``) on
#   the rows below the optimizer's own, bound to the window's training-config state (``self.ui_state``,
#   set by CtkOptimizerParamsWindowView / PySide6OptimizerParamsWindowView before they build the dynamic
#   content). Every optimizer, not only LOLI_CLUSTERED: ``Progress Probe on`` measures an AdamW run on the
#   same fixed samples, the comparison a user makes.
#
# Both views are shared by the customtkinter and the PySide6 UI (``self.components`` is the toolkit's
# component module), so one patch covers both. On a layout without these targets the UI shows no plugin
# rows (logged once); configs and the CLI still carry the plugin's options.

SCHEDULES = ["shuffle", "random", "round_robin"]
COSINE_ROW = 9  # rows 0-8 of the loss frame are OneTrainer's (MSE ... Loss Scaler) for every model type
PROBE_TITLE = "Progress Probe (loli-plugin)"
#: the probe's rows in the optimizer window: (TrainConfig field, title, tooltip, kind)
PROBE_ROWS = [
    (
        "loli_probe",
        "Progress Probe",
        "auto: on with LOLI_CLUSTERED; on: with any optimizer (to compare runs on the same samples); off. "
        "TensorBoard: probe/cluster_XX, the loss of fixed samples with fixed noise at each cluster's timestep",
        "mode",
    ),
    ("loli_probe_every", "Probe Every", "Optimizer steps between two probes", "int"),
    (
        "loli_probe_samples",
        "Probe Samples",
        "Training samples the probe keeps, in whole batches: 1 = the first batch",
        "int",
    ),
    ("loli_probe_clusters", "Probe Clusters", "The probe's timesteps when the optimizer is not LOLI_CLUSTERED", "int"),
]
PROBE_MODES = ["auto", "on", "off"]


def first_free_row(keys) -> int:
    """The first row below the optimizer's own: build_dynamic_content puts key i at row i // 2 + 1."""
    return (len(keys) - 1) // 2 + 2 if len(keys) else 1


def add_probe_rows(instance, master, row: int) -> None:
    """The probe's rows from ``row`` on, bound to the window's training-config state. A window without
    one (another layout) shows none: configs and the CLI still carry the fields."""
    ui_state = getattr(instance, "ui_state", None)
    if ui_state is None or not hasattr(ui_state, "get_var"):
        return
    components = instance.components
    try:
        components.label(master, row, 0, PROBE_TITLE, tooltip="loli-plugin's progress probe (TrainConfig fields)")
        for index, (key, title, tooltip, kind) in enumerate(PROBE_ROWS):
            cell_row, col = row + 1 + index // 2, 3 * (index % 2)
            components.label(master, cell_row, col, title, tooltip=tooltip)
            if kind == "mode":
                components.options(master, cell_row, col + 1, PROBE_MODES, ui_state, key)
            else:
                components.entry(master, cell_row, col + 1, ui_state, key)
    except Exception as exc:  # the window must open whatever this layout does differently
        sys.stderr.write(
            f"loli-plugin: progress probe rows not shown in the optimizer window ({type(exc).__name__}: {exc})\n"
        )


def build_dynamic_content(context, wrapped, instance, args, kwargs):
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    controller = bound["controller"]
    from modules.util.optimizer_util import OPTIMIZER_DEFAULT_PARAMETERS as table

    selected = controller.config.optimizer.optimizer
    if str(selected) != MEMBER:
        result = wrapped(*args, **kwargs)
        add_probe_rows(instance, bound["master"], first_free_row(table.get(selected, {})))
        return result
    from modules.util.enum.Optimizer import Optimizer

    member = Optimizer[MEMBER]
    inner_name = rows_of(str(getattr(controller.config.optimizer, "loli_inner", "ADAMW")))
    inner = Optimizer[inner_name] if inner_name in Optimizer.__members__ and inner_name != MEMBER else Optimizer.ADAMW
    own = [name for name, *_ in OPTIMIZER_FIELDS]
    saved = table[member]
    # the plugin's keys first (skipped by the original: not in its KEY_DETAIL_MAP), then the inner's keys
    table[member] = {**{k: saved[k] for k in own}, **{k: v for k, v in table[inner].items() if k not in own}}
    shown = list(table[member])
    try:
        result = wrapped(*args, **kwargs)
    finally:
        table[member] = saved
    components, master, ui_state = instance.components, bound["master"], bound["optimizer_ui_state"]
    update = bound["update_user_pref_cb"]

    def inner_changed(value=None, *_):
        # like OneTrainer's own optimizer switch (optimizer_util.change_optimizer): the new inner's rows start
        # from its OPTIMIZER_DEFAULT_PARAMETERS, not from the previous inner's values (or blanks)
        name = str(value if value is not None else controller.config.optimizer.loli_inner)
        if rows_of(name) in Optimizer.__members__ and name != MEMBER:
            from modules.util.config.TrainConfig import TrainOptimizerConfig

            fresh = TrainOptimizerConfig.default_values()
            fresh.from_dict(table[Optimizer[rows_of(name)]])
            fresh.optimizer = member
            for key in own:
                setattr(fresh, key, getattr(controller.config.optimizer, key))
            fresh.loli_inner = name
            ui_state.update(fresh)
        if update is not None:
            update()
        rebuild = getattr(instance, "_rebuild_dynamic_ui", None)
        if rebuild is not None:
            rebuild()

    for index, key in enumerate(own):  # the slots the original left empty, same layout formula
        row, col = index // 2 + 1, 3 * (index % 2)
        title, tooltip, kind = FIELD_DETAILS[key]
        components.label(master, row, col, title, tooltip=tooltip)
        if kind == "options":
            values = [str(m) for m in Optimizer if m is not member and not m.is_schedule_free] + list(PLUGIN_INNERS)
            components.options(master, row, col + 1, values, ui_state, key, command=inner_changed)
        elif kind == "schedule":
            components.options(master, row, col + 1, SCHEDULES, ui_state, key, command=lambda *_: update and update())
        else:
            components.entry(master, row, col + 1, ui_state, key, command=update)
    add_probe_rows(instance, master, first_free_row(shown))
    return result


def create_loss_frame(context, wrapped, instance, args, kwargs):
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    components = instance.components
    frames = []
    original_section_frame = components.section_frame

    def section_frame(*a, **kw):  # the loss frame is a local of the original: catch it as it is made
        frame = original_section_frame(*a, **kw)
        frames.append(frame)
        return frame

    components.section_frame = section_frame
    try:
        result = wrapped(*args, **kwargs)
    finally:
        components.section_frame = original_section_frame
    if frames:
        frame = frames[0]
        components.label(
            frame,
            COSINE_ROW,
            0,
            "Cosine Strength",
            tooltip="Strength of the cosine loss (1 - cosine similarity of prediction and target along the "
            "channels; loli-plugin). Loli loss: MSE 0.4, MAE 0.4, Cosine 0.2",
        )
        components.entry(frame, COSINE_ROW, 1, bound["ui_state"], "cos_strength")
    return result


UI = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        FunctionPatch(
            "modules.ui.BaseOptimizerParamsWindowView",
            "BaseOptimizerParamsWindowView.build_dynamic_content",
            "LOLI_CLUSTERED rows in the optimizer window",
            "ui",
            params=["self", "master", "controller", "optimizer_ui_state", "update_user_pref_cb"],
            wrapper=build_dynamic_content,
        ),
        FunctionPatch(
            "modules.ui.BaseTrainingTabView",
            "BaseTrainingTabView._BaseTrainingTabView__create_loss_frame",
            "Cosine Strength in the loss section",
            "ui",
            params=["self", "master", "row", "controller", "ui_state"],
            reads=["self", "ui_state"],
            wrapper=create_loss_frame,
        ),
    ],
)
