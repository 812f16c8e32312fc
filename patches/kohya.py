"""Patches for kohya-ss/sd-scripts (>= v0.10.0; read and tested at commit 48d368f, v0.10.1-5).

Each wrapper cites the function it wraps. Only ``library.*`` module functions are wrapped, never
trainer methods: when ``train_network.py`` runs as ``__main__`` its ``NetworkTrainer`` is a different
class object from the one other scripts import, while every script calls these functions through
their module (``train_util.get_optimizer(...)``), so wrapping the module attribute reaches them all.
The per-cluster logs are added where every script's logs end: the ``log`` method of accelerate's
trackers (sd-scripts writes to them directly or through ``Accelerator.log``).

Wrappers receive the adapter's run slot as ``context`` (handed over at instrument time); they use
``context.run`` (the active ``KohyaRun`` or None), ``context.building_optimizer(args)``,
``context.activate(args, optimizer)`` and ``context.observe(args, accelerator)``. Every wrapper
passes the call through unchanged unless a Loli run asks for its feature, and reads only what the
wrapped function reads (``getattr`` with sd-scripts' own defaults for optional ``args`` fields).

Instrumentors (``scope``: ``import`` = applied when the module is imported, passing through for plain
runs; ``run`` = applied only when a run uses a Loli feature):

* ``ENTRY`` (import): ``--loss_type loli`` and ``--loli_loss_weights`` in the parser, the short name
  ``LoliClustered`` in ``get_optimizer``, and ``prepare_accelerator``, where a Loli run is checked
  before anything is trained and the accelerator is taken for the probe.
* ``TRAINING`` (run): the loss and the SD1/SD2/SDXL timestep sampler.
* ``FAMILIES`` (run): the SD3, Flux/Chroma and Lumina samplers.
* ``LOGS`` (run): accelerate's trackers.
* ``PROBE`` (run): ``NetworkTrainer.process_batch``, where the progress probe keeps training batches and
  the validation measures sd-scripts' own validation batches.
"""

from __future__ import annotations

import sys

import torch

from ..errors import LoliConfigError
from ..options import DEFAULT_CLUSTERS
from .draws import cluster_draw
from .instrument import FunctionPatch, Instrumentor, bind_arguments, call_replacing
from .kohya_ss import DENSITY_PARAMS, add_loss_options, call_routed, keep_density_below_one, requests_optimizer

SUPPORTED = "kohya-ss/sd-scripts v0.10.0 or newer (tested at commit 48d368f, v0.10.1-5)"
LIBRARY = "kohya-ss/sd-scripts"
TRAIN_UTIL = "library.train_util"

#: the probe's defaults: one kept batch (samples=1 keeps the first training batch, whatever its size), so
#: a probe is K forward passes every PROBE_EVERY optimizer steps: about K / (3 * PROBE_EVERY) of the
#: training compute at batch size 1 without accumulation (a forward is about a third of a step), less
#: with gradient accumulation (docs/bench: measured)
PROBE_EVERY, PROBE_SAMPLES = 100, 1


def _logs_somewhere(args) -> bool:
    return getattr(args, "logging_dir", None) is not None or getattr(args, "log_with", None) is not None


def requests_validation(args) -> bool:
    """``--loli_validation on``, or ``auto`` (the default) with LoliClustered when the run logs somewhere.
    It measures only when sd-scripts validates (a validation split or dataset is configured)."""
    mode = getattr(args, "loli_validation", "auto")
    return mode == "on" or (mode == "auto" and requests_optimizer(args) and _logs_somewhere(args))


def requests_probe(args) -> bool:
    """``--loli_probe on``, or ``auto`` (the default) with LoliClustered when the run logs somewhere
    (``--logging_dir`` / ``--log_with``: without a tracker the probe's values would go nowhere)."""
    mode = getattr(args, "loli_probe", "auto")
    return mode == "on" or (mode == "auto" and requests_optimizer(args) and _logs_somewhere(args))


# --------------------------------------------------------------------------- parser
def add_training_arguments(context, wrapped, instance, args, kwargs):
    """library/train_util.py ``add_training_arguments(parser, support_dreambooth)`` defines the closed
    ``--loss_type`` choices; add ``loli`` to them and the ``--loli_loss_weights`` option."""
    result = wrapped(*args, **kwargs)
    parser = bind_arguments(wrapped, args, kwargs)["parser"]
    add_loss_options(parser)
    known = {option for a in parser._actions for option in a.option_strings}
    if "--loli_probe" not in known:
        parser.add_argument(
            "--loli_probe",
            choices=["auto", "on", "off"],
            default="auto",
            help="loli-plugin progress probe: the loss on a few fixed training samples with fixed noise at one fixed "
            "timestep per cluster, logged as probe/cluster_KK, probe/mean, probe/normalized (smooth curves). "
            "auto (default): on with --optimizer_type LoliClustered when --logging_dir or --log_with is set",
        )
        parser.add_argument(
            "--loli_probe_every",
            type=int,
            default=PROBE_EVERY,
            help=f"loli-plugin: optimizer steps between two probes (default {PROBE_EVERY})",
        )
        parser.add_argument(
            "--loli_probe_samples",
            type=int,
            default=PROBE_SAMPLES,
            help="loli-plugin: training samples the probe keeps: whole batches from the first steps until there "
            f"are at least this many (default {PROBE_SAMPLES}: the first batch)",
        )
        parser.add_argument(
            "--loli_probe_clusters",
            type=int,
            default=DEFAULT_CLUSTERS,
            help=f"loli-plugin: probe and validation timesteps (K) when the optimizer is not LoliClustered (default "
            f"{DEFAULT_CLUSTERS}; with LoliClustered its clusters)",
        )
    if "--loli_validation" not in known:
        parser.add_argument(
            "--loli_validation",
            choices=["auto", "on", "off"],
            default="auto",
            help="loli-plugin validation: wherever sd-scripts validates (--validation_split or a validation dataset; "
            "--validate_every_n_steps / --validate_every_n_epochs), also the loss on each held-out batch at one fixed "
            "timestep per cluster (the quantile midpoints of this run's own distribution) with fixed noise, logged as "
            "val/cluster_KK, val/mean, val/normalized (for `loli-plugin compare`). auto (default): on with "
            "--optimizer_type LoliClustered when --logging_dir or --log_with is set; on: with any optimizer",
        )
    return result


# --------------------------------------------------------------------------- optimizer
def get_optimizer(context, wrapped, instance, args, kwargs):
    """library/train_util.py ``get_optimizer(args, trainable_params)``: route the short name to the
    dotted-class branch of the same function (so kohya's own argument parsing and logging run), and
    activate the plugin for runs that only use ``--loss_type loli``. The optimizer's constructor finds
    the run's ``args`` through ``context.building_optimizer``."""
    run_args = bind_arguments(wrapped, args, kwargs)["args"]
    with context.building_optimizer(run_args):
        result = call_routed(wrapped, args, kwargs, run_args)
    # the Loli loss or the probe with the user's own optimizer; the probe's state rides in any optimizer
    context.optimizer_built(run_args, result[2] if isinstance(result, tuple) and len(result) == 3 else None)
    return result


def prepare_accelerator(context, wrapped, instance, args, kwargs):
    """library/train_util.py ``prepare_accelerator(args)``: every training script calls it before it
    loads a model. A run that asks for a Loli feature is checked here, before any work (so a trainer
    whose other targets drifted refuses with the list, instead of training stock); the accelerator it
    returns is kept for the probe and for rank-aware logging."""
    run_args = bind_arguments(wrapped, args, kwargs)["args"]
    context.check_request(run_args)
    accelerator = wrapped(*args, **kwargs)
    context.observe(run_args, accelerator)
    return accelerator


PARSER = FunctionPatch(
    TRAIN_UTIL,
    "add_training_arguments",
    "adds --loss_type loli and --loli_loss_weights",
    "options",
    params=["parser", "support_dreambooth"],
    reads=["parser"],
    wrapper=add_training_arguments,
)
#: where every Loli run activates (feature "activation": needed by all of them)
GET_OPTIMIZER = FunctionPatch(
    TRAIN_UTIL,
    "get_optimizer",
    "accepts --optimizer_type LoliClustered; activates Loli runs",
    "activation",
    params=["args", "trainable_params"],
    reads=["args"],
    wrapper=get_optimizer,
)
PREPARE_ACCELERATOR = FunctionPatch(
    TRAIN_UTIL,
    "prepare_accelerator",
    "checks a Loli run before it starts; keeps the accelerator",
    "logs",
    params=["args"],
    wrapper=prepare_accelerator,
)
ENTRY = Instrumentor(LIBRARY, SUPPORTED, [PARSER, GET_OPTIMIZER, PREPARE_ACCELERATOR])


# --------------------------------------------------------------------------- loss
def conditional_loss(context, wrapped, instance, args, kwargs):
    """library/train_util.py ``conditional_loss(model_pred, target, loss_type, reduction, huber_c)``:
    ``loss_type == "loli"`` computes the Loli loss; every other loss type runs the original untouched."""
    bound = bind_arguments(wrapped, args, kwargs)
    run = context.run
    if bound["loss_type"] != "loli":
        loss = wrapped(*args, **kwargs)
        if run is not None:
            run.record_loss(loss)
        return loss
    if run is None:
        raise LoliConfigError(
            "--loss_type loli is set but loli-plugin was not activated for this run; "
            "start the script with `python -m loli_plugin.launch kohya SCRIPT ...` or reinstall loli-plugin"
        )
    from ..loss import loli_loss

    loss = loli_loss(bound["model_pred"], bound["target"], weights=run.loss_weights, reduction=bound["reduction"])
    run.record_loss(loss)
    return loss


# --------------------------------------------------------------------------- SD1/SD2/SDXL timesteps
def get_timesteps(context, wrapped, instance, args, kwargs):
    """library/train_util.py ``get_timesteps(min_timestep, max_timestep, b_size, device)``: the uniform
    integer draw ``torch.randint(min, max)`` becomes a draw from the current cluster's slice of the
    same range. ``min >= max`` is kohya's fixed-timestep validation: handed to the original. While the
    probe or the validation measures, every sample gets the quantile the run asks for."""
    bound = bind_arguments(wrapped, args, kwargs)
    run = context.run
    lo, hi = int(bound["min_timestep"]), int(bound["max_timestep"])
    from ..sampling import DiscreteUniform

    if run is not None and run.probe_cluster is not None and lo < hi:  # probe/validation: the cluster's midpoint
        u = torch.full((int(bound["b_size"]),), run.fixed_quantile(), dtype=torch.float64)
        t = DiscreteUniform(lo, hi).quantile(u).long().to(bound["device"])
        run.note_timesteps(t)
        return t
    if run is None or not run.stratify or lo >= hi:
        if run is not None:
            run.untracked_draw()
        return wrapped(*args, **kwargs)
    k = run.take_cluster()
    t = DiscreteUniform(lo, hi).sample_cluster(int(bound["b_size"]), k, run.clusters)
    return t.long().to(bound["device"])


TRAINING = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        # also where every training loss is recorded under its cluster, hence "logs"
        FunctionPatch(
            TRAIN_UTIL,
            "conditional_loss",
            "--loss_type loli; per-cluster loss",
            ("loss", "logs"),
            params=["model_pred", "target", "loss_type", "reduction", "huber_c"],
            reads=["model_pred", "target", "loss_type", "reduction"],
            wrapper=conditional_loss,
        ),
        FunctionPatch(
            TRAIN_UTIL,
            "get_timesteps",
            "SD1.x/2.x/SDXL timesteps from one cluster per step",
            "sampler",
            params=["min_timestep", "max_timestep", "b_size", "device"],
            wrapper=get_timesteps,
        ),
    ],
)


# --------------------------------------------------------------------------- flow-matching families
def _flow_reflect(family: str, run_args) -> bool:
    """True when kohya's transform from the raw draw to the timestep is decreasing for these options,
    so cluster k is drawn from the mirrored slice and cluster 0 always holds the lowest timesteps.

    flux/lumina ``sigma`` branch: ``noise_scheduler.timesteps`` is descending, so the timestep falls
    as the draw rises, unless ``weighting_scheme == "mode"``, whose own map also falls (two falls
    make a rise). SD3: the draw's transform rises, except "mode".
    """
    scheme = getattr(run_args, "weighting_scheme", None)
    if family == "sd3":
        return scheme == "mode"
    sampling = getattr(run_args, "timestep_sampling", None)
    if sampling in ("uniform", "sigmoid", "shift", "flux_shift", "nextdit_shift"):
        return False
    return scheme != "mode"


def _validating(run_args) -> bool:
    """train_network.py's validation fixes the timestep with ``args.min_timestep = args.max_timestep``
    (its "dirty hack"); the flow samplers ignore both fields, so an ``args`` without them is training."""
    lo = getattr(run_args, "min_timestep", None)
    return lo is not None and lo == getattr(run_args, "max_timestep", None)


def _flow_sampler(family: str, module_name: str):
    def wrapper(context, wrapped, instance, args, kwargs):
        run = context.run
        probing = run is not None and run.probe_cluster is not None
        if run is None or not (run.stratify or probing):
            return wrapped(*args, **kwargs)
        bound = bind_arguments(wrapped, args, kwargs)
        run_args = bound["args"]
        if not probing and _validating(run_args):
            run.untracked_draw()
            return wrapped(*args, **kwargs)
        k = run.probe_cluster if probing else run.take_cluster()
        if _flow_reflect(family, run_args):
            k = run.clusters - 1 - k
        options = (
            f"timestep_sampling={getattr(run_args, 'timestep_sampling', None)!r}, "
            f"weighting_scheme={getattr(run_args, 'weighting_scheme', None)!r}"
        )
        with cluster_draw(
            sys.modules[module_name],
            k,
            run.clusters,
            bound["latents"].shape[0],
            f"{module_name}.get_noisy_model_input_and_timesteps",
            SUPPORTED,
            options,
            position=run.probe_position if probing else None,
        ):
            result = wrapped(*args, **kwargs)
        if probing:  # (noisy_model_input, timesteps, sigmas): the timestep the validation records
            run.note_timesteps(result[1])
        return result

    wrapper.__doc__ = (
        f"library/{module_name.split('.')[-1]}.py get_noisy_model_input_and_timesteps: draw from one cluster"
    )
    return wrapper


_FLOW_PARAMS = ["args", "noise_scheduler", "latents", "noise", "device", "dtype"]


def _family(module: str, params, with_density: bool, family: str, why: str) -> Instrumentor:
    patches = [
        FunctionPatch(
            module,
            "get_noisy_model_input_and_timesteps",
            why,
            "sampler",
            params=params,
            reads=["args", "latents"],
            wrapper=_flow_sampler(family, module),
        )
    ]
    if with_density:
        patches.append(
            FunctionPatch(
                module,
                "compute_density_for_timestep_sampling",
                "keeps u < 1 so the scheduler-table index stays in range",
                "sampler",
                params=DENSITY_PARAMS,
                reads=[],
                wrapper=keep_density_below_one(module),
            )
        )
    return Instrumentor(LIBRARY, SUPPORTED, patches)


#: module -> instrumentor, applied when the module is (or gets) imported during a Loli run.
FAMILIES = {
    "library.sd3_train_utils": _family(
        "library.sd3_train_utils",
        ["args", "latents", "noise", "device", "dtype"],
        False,
        "sd3",
        "SD3 timesteps from one cluster per step",
    ),
    "library.flux_train_utils": _family(
        "library.flux_train_utils",
        _FLOW_PARAMS,
        True,
        "flux",
        "Flux/Chroma/Anima/HunyuanImage timesteps from one cluster per step",
    ),
    "library.lumina_train_util": _family(
        "library.lumina_train_util", _FLOW_PARAMS, True, "lumina", "Lumina timesteps from one cluster per step"
    ),
}


# --------------------------------------------------------------------------- logs
#: train_network.py's step logs carry "loss/current"; fine_tune.py / sdxl_train.py's carry "loss"
STEP_LOSS_KEYS = ("loss/current", "loss")
#: train_network.py's logs at the end of a validation pass (after a step; at an epoch's end)
VALIDATION_KEYS = ("loss/validation/step_average", "loss/validation/epoch_average")
RECORD_TAG = "loli/validation"
TRACKING = "accelerate.tracking"


def tracker_log(context, wrapped, instance, args, kwargs):
    """accelerate/tracking.py ``<Tracker>.log(self, values, step=None, **kwargs)``: every sd-scripts
    script's step logs end here (train_network.py NetworkTrainer.accelerator_logging calls the trackers
    directly, the others through Accelerator.log). A step log of a Loli run gets the per-cluster
    values added; reading them costs one small device-to-host copy, after kohya's own ``loss.item()``."""
    run = context.run
    if run is None:
        return wrapped(*args, **kwargs)
    bound = bind_arguments(wrapped, args, kwargs)
    values, step = bound["values"], bound["step"]
    if not isinstance(values, dict):
        return wrapped(*args, **kwargs)
    if run.validation is not None and any(k in values for k in VALIDATION_KEYS):
        return _log_validation(context, wrapped, args, kwargs, bound["self"], values, step)
    if not any(k in values for k in STEP_LOSS_KEYS):
        return wrapped(*args, **kwargs)
    if step is not None:
        context.logged_step = step
    extra = run.logs()
    return call_replacing(wrapped, args, kwargs, values={**values, **extra}) if extra else wrapped(*args, **kwargs)


def _log_validation(context, wrapped, args, kwargs, tracker, values, step):
    """sd-scripts logs the average of its validation pass (``loss/validation/step_average`` after a step,
    ``loss/validation/epoch_average`` at an epoch's end, with the epoch as TensorBoard's step): the plugin's
    pass over the same batches ends here. Its values go to each tracker at the optimizer step of the last
    step log (merged into the same log for a tracker that takes no step, W&B: sd-scripts hands it the
    step in the values), and its comparability record to TensorBoard as text."""
    logs, record = context.validation_logs(values)
    if not logs:
        return wrapped(*args, **kwargs)
    if step is None:
        return call_replacing(wrapped, args, kwargs, values={**values, **logs})
    at = context.logged_step if context.logged_step is not None else step
    extra = dict(logs)
    if record is not None and getattr(tracker, "name", None) == "tensorboard":
        extra[RECORD_TAG] = record  # accelerate's TensorBoardTracker writes a str as text
    call_replacing(wrapped, args, kwargs, values=extra, step=at)
    return wrapped(*args, **kwargs)


def _tracker(cls: str, optional: bool) -> FunctionPatch:
    return FunctionPatch(
        TRACKING,
        f"{cls}.log",
        "per-cluster scalars next to sd-scripts' loss",
        "logs",
        params=["self", "values", "step"],
        reads=["self", "values", "step"],
        wrapper=tracker_log,
        optional=optional,
    )


def end_training(context, wrapped, instance, args, kwargs):
    """accelerate/accelerator.py ``Accelerator.end_training(self)``: every sd-scripts script calls it on every
    rank once its loop is over, before the trackers close. If sd-scripts' own schedule skipped the end of
    training (``--validate_every_n_epochs`` > 1), the validation measures its held-out batches once more
    here (``context.end_of_training``)."""
    run = context.run
    if run is not None and run.validation is not None:
        context.end_of_training(instance)
    return wrapped(*args, **kwargs)


#: TensorBoard and W&B are the trackers sd-scripts special-cases; the others are patched when this
#: accelerate has them.
LOGS = Instrumentor(
    "huggingface/accelerate (as pinned by sd-scripts)",
    "accelerate >= 0.30 (tested with 1.6.0)",
    [_tracker("TensorBoardTracker", False), _tracker("WandBTracker", False)]
    + [
        _tracker(cls, True)
        for cls in ("CometMLTracker", "AimTracker", "MLflowTracker", "ClearMLTracker", "DVCLiveTracker")
    ]
    + [
        FunctionPatch(
            "accelerate.accelerator",
            "Accelerator.end_training",
            "validation: a last pass when sd-scripts' schedule skipped the end of training",
            "validation",
            params=["self"],
            wrapper=end_training,
        )
    ],
)


# --------------------------------------------------------------------------- progress probe
def process_batch(context, wrapped, instance, args, kwargs):
    """train_network.py ``NetworkTrainer.process_batch(self, batch, text_encoders, unet, network, vae,
    noise_scheduler, vae_dtype, weight_dtype, accelerator, args, text_encoding_strategy,
    tokenize_strategy, is_train=True, train_text_encoder=True, train_unet=True)``: one micro-batch's
    forward and loss for every family that inherits it (SD1/2, SDXL, SD3, Flux/Chroma, Lumina). The
    progress probe keeps the first training batches seen here and measures through this very function,
    with ``is_train=False`` as sd-scripts' own validation calls it (``context.probe_batch``). The
    validation measures each batch of sd-scripts' own validation loop here, once, when the loop first
    hands it over (``context.validation_batch``)."""
    run = context.run
    if run is None or (run.probe is None and run.validation is None) or run.probe_cluster is not None:
        return wrapped(*args, **kwargs)
    bound = bind_arguments(wrapped, args, kwargs)
    if bound["is_train"]:
        context.training_batch(wrapped, args, kwargs, bound)
    elif run.validation is not None and _validating(bound["args"]):
        context.validation_batch(wrapped, args, kwargs, bound)
    return wrapped(*args, **kwargs)


_PROCESS_BATCH = [
    "self",
    "batch",
    "text_encoders",
    "unet",
    "network",
    "vae",
    "noise_scheduler",
    "vae_dtype",
    "weight_dtype",
    "accelerator",
    "args",
    "text_encoding_strategy",
    "tokenize_strategy",
    "is_train",
]
#: train_network.py's NetworkTrainer: the module `train_network` when another script (sdxl_train_network.py,
#: flux_train_network.py, ...) imports it, or `__main__` when train_network.py itself runs
PROBE = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        FunctionPatch(
            module,
            "NetworkTrainer.process_batch",
            "progress probe: keeps training batches, measures through them; validation on sd-scripts' own batches",
            ("probe", "validation"),
            params=_PROCESS_BATCH,
            reads=[
                "self",
                "batch",
                "text_encoders",
                "unet",
                "network",
                "weight_dtype",
                "accelerator",
                "args",
                "is_train",
            ],
            wrapper=process_batch,
            optional=True,
        )
        for module in ("train_network", "__main__")
    ],
)
