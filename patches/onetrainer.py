"""Patches for Nerogar/OneTrainer (read and tested at commit 23df383, 2026-08-19; OneTrainer has no
version number, so support is decided by the presence and signatures of the targets below).

Registration (``register_*``) happens from post-import hooks, before any TrainConfig, UI state or tab
exists; the run-time wrappers are grouped in instrumentors installed when ``modules.util.create`` is
imported. Every wrapper passes through unless the run uses a Loli option.
"""

from __future__ import annotations

import sys

import torch

from ..errors import LoliConfigError
from .base import Instrumentor, PatchTarget, bind_arguments
from .draws import cluster_draw

SUPPORTED = "Nerogar/OneTrainer at commit 23df383 (2026-08-19) or a later one with the same functions"
MEMBER = "LOLI_CLUSTERED"
#: TrainOptimizerConfig fields the plugin adds: (name, default, type, nullable)
OPTIMIZER_FIELDS = [("loli_inner", "ADAMW", str, False), ("loli_clusters", 10, int, False), ("loli_schedule", "shuffle", str, False)]
#: TrainConfig field for the cosine term of the loss section
CONFIG_FIELDS = [("cos_strength", 0.0, float, False)]
#: what the optimizer window shows for the plugin's rows (title, tooltip, kind)
FIELD_DETAILS = {
    "loli_inner": ("Inner Optimizer", "The optimizer LoliClustered runs once per timestep cluster (its parameters are the rows below)", "options"),
    "loli_clusters": ("Timestep Clusters", "Number of timestep clusters K; each keeps its own optimizer state (K x optimizer memory)", "int"),
    "loli_schedule": ("Cluster Schedule", "shuffle: every cluster once per K steps; random: i.i.d.; round_robin: 0,1,2,...", "schedule"),
}
NOISE_MIXIN = "modules.modelSetup.mixin.ModelSetupNoiseMixin"
LOSS_MIXIN = "modules.modelSetup.mixin.ModelSetupDiffusionLossMixin"


def _run():
    from ..adapters import onetrainer

    return onetrainer.active_run()


# --------------------------------------------------------------------------- registration
def register_member(module) -> None:
    """modules/util/enum/Optimizer.py ``Optimizer``: a closed Enum looked up by name (BaseConfig.from_dict,
    UIState) and shown by value, so the new member has name == value."""
    cls = module.Optimizer
    if MEMBER in cls.__members__:
        return
    member = object.__new__(cls)
    member._name_ = member._value_ = MEMBER
    member._sort_order_ = len(cls._member_names_)
    member.__objclass__ = cls
    type.__setattr__(cls, MEMBER, member)
    cls._member_names_.append(MEMBER)
    cls._member_map_[MEMBER] = member
    cls._value2member_map_[MEMBER] = member
    _delegate_lr_report(cls)


def _delegate_lr_report(cls) -> None:
    """``Optimizer.maybe_adjust_lrs(self, lrs, optimizer)``: what BaseModelSetup.report_to_tensorboard writes
    as ``lr/<group>``; for an adaptive member (PRODIGY, DADAPT_*) the effective ``lr * d`` of each param group.
    LOLI_CLUSTERED is not adaptive itself but its inner may be: the call goes to the inner's member, which
    reads the param groups LoliClustered shares with the inner (``d`` of the cluster that steps next)."""
    original = cls.__dict__.get("maybe_adjust_lrs")
    if not callable(original) or getattr(original, "_loli", False):  # absent in another OneTrainer: nothing to report
        return

    def maybe_adjust_lrs(self, lrs, optimizer):
        if self._name_ == MEMBER:
            inner = cls._member_map_.get(str(getattr(optimizer, "inner_name", "")))
            if inner is not None and inner._name_ != MEMBER:
                return original(inner, lrs, optimizer)
        return original(self, lrs, optimizer)

    maybe_adjust_lrs._loli = True
    maybe_adjust_lrs.__wrapped__ = original
    type.__setattr__(cls, "maybe_adjust_lrs", maybe_adjust_lrs)


def register_default_parameters(module) -> None:
    """modules/util/optimizer_util.py ``OPTIMIZER_DEFAULT_PARAMETERS``: imported by name by the UI, so the
    dict is extended in place. The inner's own defaults follow the plugin's keys (ADAMW's by default)."""
    from modules.util.enum.Optimizer import Optimizer

    table = module.OPTIMIZER_DEFAULT_PARAMETERS
    member = Optimizer[MEMBER]
    if member not in table:
        table[member] = {**{n: d for n, d, _, _ in OPTIMIZER_FIELDS}, **table[Optimizer.ADAMW]}


def _add_fields(config, fields) -> None:
    for name, default, kind, nullable in fields:
        if name in config.types:
            continue
        setattr(config, name, default)
        config.types[name] = kind
        config.nullables[name] = nullable
        config.default_values[name] = default


def register_config_fields(module) -> None:
    """modules/util/config/TrainConfig.py: ``TrainOptimizerConfig.default_values`` and
    ``TrainConfig.default_values`` are the static factories every config (UI, JSON, multi-GPU child,
    backup) is built from; fields added there save, load and reach the UI state."""
    for cls, fields in ((module.TrainOptimizerConfig, OPTIMIZER_FIELDS), (module.TrainConfig, CONFIG_FIELDS)):
        factory = cls.__dict__["default_values"]
        if getattr(factory, "_loli", False):
            continue
        original = factory.__func__

        def default_values(_original=original, _fields=fields):
            config = _original()
            _add_fields(config, _fields)
            return config

        default_values._loli = True
        default_values.__wrapped__ = original
        setattr(cls, "default_values", staticmethod(default_values))


# --------------------------------------------------------------------------- optimizer
def create_optimizer(wrapped, instance, args, kwargs):
    """modules/util/create.py ``create_optimizer(parameter_group_collection, state_dict, config, layer_key_fn)``:
    for LOLI_CLUSTERED, OneTrainer's own branch builds the inner optimizer (so every inner parameter
    keeps working), LoliClustered wraps it, and the backup state is loaded into the wrapper."""
    from ..adapters import onetrainer

    bound = bind_arguments(wrapped, args, kwargs)
    config = bound["config"]
    if str(config.optimizer.optimizer) != MEMBER:
        return wrapped(*args, **kwargs)
    return onetrainer.build_optimizer(wrapped, bound)


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


def get_timestep_discrete(wrapped, instance, args, kwargs):
    """modules/modelSetup/mixin/ModelSetupNoiseMixin.py ``ModelSetupNoiseMixin._get_timestep_discrete(self,
    num_train_timesteps, deterministic, generator, batch_size, config, shift=None)``: every model setup
    (and ``_get_timestep_continuous``) draws its training timesteps here. The first draw (rand, normal,
    multinomial over the pmf, or Beta) becomes a draw from the optimizer's cluster; OneTrainer's own
    transform and shift run unchanged, with OneTrainer's generator. Deterministic (validation) calls and
    the UI's distribution preview (TimestepGenerator) are handed over untouched."""
    bound = bind_arguments(wrapped, args, kwargs)
    instance = bound.get("self", instance)
    run = _run()
    if run is None or not run.stratify or bound["deterministic"] or type(instance).__name__ == "TimestepGenerator":
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
    k = run.take_cluster()
    if _reflect(config):
        k = run.clusters - 1 - k
    with cluster_draw(sys.modules[NOISE_MIXIN], k, run.clusters, int(bound["batch_size"]), "ModelSetupNoiseMixin._get_timestep_discrete",
                      SUPPORTED, f"timestep_distribution={config.timestep_distribution}"):
        return wrapped(*args, **kwargs)


# --------------------------------------------------------------------------- loss
def _cos_map(pred, target):
    from ..loss import cosine_term

    # (B, 1, ...) per position along the channel dim, zero-safe; broadcast to the prediction's shape
    return cosine_term(pred.float(), target.float(), dim=1).expand(pred.shape)


def _cosine_inputs(wrapped, args, kwargs):
    """(batch, data, config, cos_strength) of a ``__masked_losses`` / ``__unmasked_losses`` call."""
    bound = bind_arguments(wrapped, args, kwargs)
    return bound["batch"], bound["data"], bound["config"], getattr(bound["config"], "cos_strength", 0.0) or 0.0


def unmasked_losses(wrapped, instance, args, kwargs):
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


def masked_losses(wrapped, instance, args, kwargs):
    """ModelSetupDiffusionLossMixin.__masked_losses(self, batch, data, config): the cosine term goes through
    OneTrainer's own ``masked_losses_with_prior`` (mask weight, area normalisation, prior preservation)."""
    losses = wrapped(*args, **kwargs)
    batch, data, config, strength = _cosine_inputs(wrapped, args, kwargs)
    if strength == 0:
        return losses
    from modules.util.loss.masked_loss import masked_losses_with_prior

    mean_dim = list(range(1, data["predicted"].ndim))
    term = masked_losses_with_prior(
        losses=_cos_map(data["predicted"], data["target"]).clone(),
        prior_losses=_cos_map(data["predicted"], data["prior_target"]).clone() if "prior_target" in data else None,
        mask=batch["latent_mask"].float(),
        unmasked_weight=config.unmasked_weight,
        normalize_masked_area_loss=config.normalize_masked_area_loss,
        masked_prior_preservation_weight=config.masked_prior_preservation_weight,
    ).mean(mean_dim) * strength
    return losses + term


def record_losses(wrapped, instance, args, kwargs):
    """``_diffusion_losses`` / ``_flow_matching_losses`` return the per-sample training losses; record their
    mean under the cluster the timesteps came from (validation runs under no_grad and is skipped)."""
    losses = wrapped(*args, **kwargs)
    run = _run()
    if run is not None:
        run.record_loss(losses)
    return losses


# --------------------------------------------------------------------------- tensorboard
def report_to_tensorboard(wrapped, instance, args, kwargs):
    """modules/modelSetup/BaseModelSetup.py ``report_to_tensorboard(self, model, config, scheduler,
    tensorboard)``: called on the master rank once per optimizer update; add the per-cluster scalars."""
    result = wrapped(*args, **kwargs)
    run = _run()
    if run is not None and run.monitor is not None:
        bound = bind_arguments(wrapped, args, kwargs)
        step = bound["model"].train_progress.global_step
        for tag, value in run.monitor.logs().items():
            bound["tensorboard"].add_scalar(tag, value, step)
    return result


_LOSS_PARAMS = ["self", "batch", "data", "config"]

TRAINING = Instrumentor(
    "Nerogar/OneTrainer",
    SUPPORTED,
    [
        PatchTarget("modules.util.create", "create_optimizer", ["parameter_group_collection", "state_dict", "config", "layer_key_fn"],
                    create_optimizer, "builds LOLI_CLUSTERED around the inner optimizer"),
        PatchTarget(NOISE_MIXIN, "ModelSetupNoiseMixin._get_timestep_discrete",
                    ["self", "num_train_timesteps", "deterministic", "generator", "batch_size", "config", "shift"],
                    get_timestep_discrete, "timesteps from one cluster per optimizer step (every model)"),
        PatchTarget(LOSS_MIXIN, "ModelSetupDiffusionLossMixin._ModelSetupDiffusionLossMixin__unmasked_losses", _LOSS_PARAMS,
                    unmasked_losses, "cosine strength (unmasked)"),
        PatchTarget(LOSS_MIXIN, "ModelSetupDiffusionLossMixin._ModelSetupDiffusionLossMixin__masked_losses", _LOSS_PARAMS,
                    masked_losses, "cosine strength (masked training)"),
        PatchTarget(LOSS_MIXIN, "ModelSetupDiffusionLossMixin._diffusion_losses",
                    ["self", "batch", "data", "config", "train_device", "betas", "alphas_cumprod_fun"], record_losses,
                    "per-cluster loss (diffusion models)"),
        PatchTarget(LOSS_MIXIN, "ModelSetupDiffusionLossMixin._flow_matching_losses",
                    ["self", "batch", "data", "config", "train_device", "sigmas"], record_losses,
                    "per-cluster loss (flow-matching models)"),
        PatchTarget("modules.modelSetup.BaseModelSetup", "BaseModelSetup.report_to_tensorboard",
                    ["self", "model", "config", "scheduler", "tensorboard"], report_to_tensorboard,
                    "loss/cluster_XX and loss/normalized in TensorBoard"),
    ],
)
