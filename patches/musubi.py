"""Patches for kohya-ss/musubi-tuner (read and tested at commit 30c658c, v0.3.4).

Every LoRA script (``*_train_network.py``) subclasses ``NetworkTrainer`` from
``musubi_tuner/training/trainer_base.py`` and runs its ``train()``, whose loop calls ``process_batch``
(``get_noisy_model_input_and_timesteps`` -> ``call_dit`` -> ``compute_loss``) and logs
``generate_step_logs`` + ``extra_step_logs`` through ``accelerator.log``. Those methods are attributes
of a class in an importable module (unlike sd-scripts' ``__main__`` scripts), so wrapping them on
``NetworkTrainer`` reaches every family that inherits them and every override that calls ``super()``.

Overrides at the pinned commit (``SEAMS`` lists the methods a Loli run relies on):

* delegating, so the base wrapper is reached (``DELEGATING``): Wan's sampler (every branch, including
  high/low-noise training's per-sample redraws, goes through ``super()``), HiDream-O1's ``compute_loss``
  (``super()`` then its DINO term), Self-Flow's ``process_batch`` (``super()`` unless ``--self_flow``);
* not delegating, so wrapped themselves with the same wrappers (``OVERRIDES``): HiDream-O1's sampler
  (its "uniform" branch draws itself), Ideogram 4's ``compute_loss`` (its own mean MSE) and Self-Flow's
  ``extra_step_logs`` (its own dict). They live in the family's script module, which is
  ``musubi_tuner.<family>_train_network`` through the top-level launchers and ``__main__`` when started
  as musubi-tuner's docs do (``accelerate launch src/musubi_tuner/<family>_train_network.py``); the
  adapter aims a copy of ``OVERRIDES`` at the trainer's own module then (``overrides_in``).

The adapter refuses a Loli run whose trainer overrides one of those methods in any other way (a newer
musubi-tuner), or runs its own loop (the full fine-tuning scripts ``*_train.py``), naming the override.

Wrappers receive the adapter as ``context``: ``context.run`` (the active ``MusubiRun`` or None),
``context.check_request(trainer, args)``, ``context.building_optimizer(trainer, args)``,
``context.activate(trainer, args, optimizer)``, ``context.drawing()``/``context.drawing_now``. Each cites
the function it wraps, passes the call through unless a Loli run asks for its feature, and reads only
what the wrapped function reads.

Instrumentors (``import`` scope: applied when the module is imported, passing through for plain runs;
``run`` scope: applied only when a run uses a Loli feature):

* ``ENTRY`` (import): ``--loss_type loli`` / ``--loli_loss_weights`` in the common parser, the check of a
  Loli run in ``train`` (before a dataset or a model is loaded), the short name and activation in
  ``get_optimizer``.
* ``TRAINING`` (run): the sampler, the loss and the per-cluster logs on ``NetworkTrainer``.
* ``OVERRIDES`` (run): the three non-delegating overrides above.

The validation (``--loli_validation_dataset_config``) adds ``NetworkTrainer.process_batch`` to ``TRAINING``:
the adapter measures the held-out set through the call it remembers there.
"""

from __future__ import annotations

import copy
import dataclasses
import sys

import torch

from ..errors import LoliConfigError, LoliUnsupportedTrainerError
from ..options import DEFAULT_CLUSTERS
from .draws import cluster_draw
from .instrument import FunctionPatch, Instrumentor, bind_arguments, call_replacing

# musubi-tuner reads --optimizer_type / --optimizer_args exactly like sd-scripts (same author)
from .kohya_ss import DENSITY_PARAMS, add_loss_options, call_routed, keep_density_below_one, requests_loss

SUPPORTED = "kohya-ss/musubi-tuner at commit 30c658c (v0.3.4) and later ones with the same functions"
LIBRARY = "kohya-ss/musubi-tuner"
PARSER_COMMON = "musubi_tuner.training.parser_common"
TRAINER_BASE = "musubi_tuner.training.trainer_base"
#: where "sigma" sampling draws (compute_density_for_timestep_sampling; trainer_base imports it by name)
TIMESTEPS = "musubi_tuner.training.timesteps"
HIDREAM = "musubi_tuner.hidream_o1_train_network"
IDEOGRAM4 = "musubi_tuner.ideogram4_train_network"
SELF_FLOW = "musubi_tuner.flux_2_train_network_self_flow"

#: optimizer steps between two validation passes (musubi-tuner has no validation schedule of its own)
VALIDATION_EVERY = 100

#: samplings that mix several samplers per sample (musubi draws which one with its own torch.rand)
MIXTURES = ("qinglong_flux", "qinglong_qwen")


# --------------------------------------------------------------------------- parser
def setup_parser_common(context, wrapped, instance, args, kwargs):
    """training/parser_common.py ``setup_parser_common()``, the parser every ``*_train_network.py`` starts
    from: add ``--loss_type`` (musubi-tuner has none: ``mse`` is its own loss, ``loli`` the plugin's) and
    ``--loli_loss_weights``. A parser that already has ``--loss_type`` gets ``loli`` added to its choices."""
    parser = wrapped(*args, **kwargs)
    add_loss_options(
        parser,
        new_loss_type=dict(
            choices=["mse", "loli"],
            default="mse",
            help="loli-plugin: mse = musubi-tuner's own loss (default); loli = MSE+L1+cosine (see --loli_loss_weights)",
        ),
    )
    known = {option for a in parser._actions for option in a.option_strings}
    if "--loli_validation_dataset_config" not in known:
        parser.add_argument(
            "--loli_validation_dataset_config",
            type=str,
            default=None,
            help="loli-plugin validation: a second dataset config (.toml) of held-out images or videos, cached with "
            "musubi-tuner's own *_cache_latents.py / *_cache_text_encoder_outputs.py like --dataset_config; their "
            "loss at one fixed timestep per cluster (the quantile midpoints of this run's own distribution) with "
            "fixed noise is logged as val/cluster_KK, val/mean, val/normalized (for `loli-plugin compare`), with any "
            "optimizer",
        )
        parser.add_argument(
            "--loli_validation_every",
            type=int,
            default=VALIDATION_EVERY,
            help=f"loli-plugin: optimizer steps between two validation passes (default {VALIDATION_EVERY}); one more "
            "before the first step and one at the end of training",
        )
        parser.add_argument(
            "--loli_validation_clusters",
            type=int,
            default=DEFAULT_CLUSTERS,
            help=f"loli-plugin: validation timesteps (K) when the optimizer is not LoliClustered (default "
            f"{DEFAULT_CLUSTERS}; with LoliClustered its clusters)",
        )
    return parser


def requests_validation(args) -> bool:
    return getattr(args, "loli_validation_dataset_config", None) is not None


# --------------------------------------------------------------------------- activation
def train(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.train(self, args)``: every ``*_train_network.py``'s
    ``main()`` calls it once the arguments are parsed. A run that asks for a Loli feature is checked here,
    before a dataset or a model is loaded."""
    context.check_request(instance, bind_arguments(wrapped, args, kwargs)["args"])
    return wrapped(*args, **kwargs)


def get_optimizer(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.get_optimizer(self, args, trainable_params)``: route the
    short name to the dotted-class branch of the same method (so musubi's own argument parsing and logging
    run), and activate runs that only use ``--loss_type loli``. The optimizer's constructor finds the
    trainer and its ``args`` through ``context.building_optimizer``."""
    run_args = bind_arguments(wrapped, args, kwargs)["args"]
    with context.building_optimizer(instance, run_args):
        result = call_routed(wrapped, args, kwargs, run_args)
    if (requests_loss(run_args) or requests_validation(run_args)) and context.run is None:
        # the Loli loss or the validation alone, with the user's optimizer
        context.activate(instance, run_args, optimizer=None)
    context.optimizer_built(result[2] if isinstance(result, tuple) and len(result) > 2 else None)
    return result


# --------------------------------------------------------------------------- timesteps
def sample_from_cluster(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.get_noisy_model_input_and_timesteps(self, args, noise,
    latents, timesteps, noise_scheduler, device, dtype)`` (and HiDream-O1's override of it): the step's
    timesteps come from the optimizer's cluster, through musubi's own transform, shift and
    ``min_timestep``/``max_timestep``. An override that calls ``super()`` while this wrapper is drawing
    reaches the base method unchanged (``context.drawing_now``). While the validation measures, every
    sample gets the quantile the run asks for (``run.probing``) through the same transform."""
    run = context.run
    probing = run is not None and run.probe_cluster is not None
    if run is None or not (run.stratify or probing) or context.drawing_now:
        return wrapped(*args, **kwargs)
    bound = bind_arguments(wrapped, args, kwargs)
    with context.drawing():
        if getattr(bound["args"], "timestep_sampling", "sigma") == "sigma":
            result = _draw_sigma(run, wrapped, args, kwargs, bound)
        else:
            result = _draw_through_uniforms(run, wrapped, args, kwargs, bound)
    if probing:  # (noisy_model_input, timesteps): the timestep the validation records
        run.note_timesteps(result[1])
    return result


def _cluster(run) -> int:
    """The cluster of this draw: the one being measured, else the optimizer step's."""
    return run.probe_cluster if run.probe_cluster is not None else run.take_cluster()


def _draw_sigma(run, wrapped, args, kwargs, bound):
    """``--timestep_sampling sigma`` (the default): ``compute_density_for_timestep_sampling`` draws u with
    ``torch.rand``/``torch.normal`` and ``noise_scheduler.timesteps[(u * (max - min) + min).long()]`` is
    the timestep; that draw is replaced by one from the cluster's slice (patches/draws.py). The slice is
    mirrored where u's transform falls, so cluster 0 always holds the lowest timesteps."""
    run_args, table = bound["args"], bound["noise_scheduler"].timesteps
    k = _cluster(run)
    falling = bool(table[0] > table[-1])  # musubi's FlowMatchDiscreteScheduler(reverse=True) lists 1000 ... 1
    if getattr(run_args, "weighting_scheme", "none") == "mode":
        falling = not falling  # the mode map 1 - u - s (cos^2(pi u / 2) - 1 + u) falls as well
    if falling:
        k = run.clusters - 1 - k
    options = f"timestep_sampling='sigma', weighting_scheme={getattr(run_args, 'weighting_scheme', None)!r}"
    with cluster_draw(
        sys.modules[TIMESTEPS],
        k,
        run.clusters,
        bound["noise"].shape[0],
        f"{TIMESTEPS}.compute_density_for_timestep_sampling",
        SUPPORTED,
        options,
        position=run.probe_position if run.probe_cluster is not None else None,
    ):
        return wrapped(*args, **kwargs)


def _draw_through_uniforms(run, wrapped, args, kwargs, bound):
    """Every other sampling. Handed uniforms in ``timesteps`` (what ``--num_timestep_buckets`` hands it),
    musubi maps them through its own inverse CDF of the chosen sampling (``uniform_to_normal_ppF``, ...),
    then its shift and [min, max] scaling. So the plugin hands it uniforms from the cluster's slice of
    [0, 1). With ``--num_timestep_buckets``, musubi's bucketed values place each draw inside the cluster
    (position = value), so both stratifications compose and the overall distribution is unchanged.

    The slice is mirrored where musubi's map falls (``logsnr``), found by asking the map itself, and the
    result is checked against the map at the slice's ends: a musubi-tuner that stopped using the handed
    uniforms would otherwise train stock timesteps under cluster banks. qinglong_* mixes a rising sampler
    (79 % / 95 % of the draws) with falling ones per sample: the slice is one of the uniform that drives
    each of them, as for musubi's own buckets, not checked per sample."""
    run_args = bound["args"]
    probe = _Probe(wrapped, args, kwargs, bound["latents"])
    lo, hi, call_args = 0.0, 1.0, run_args
    if getattr(run_args, "preserve_distribution_shape", False):
        call_args = _untruncated(run_args)
        lo, hi = _truncation_bounds(probe, call_args, run_args)
    mixture = getattr(run_args, "timestep_sampling", None) in MIXTURES
    k = _cluster(run)
    if not mixture and not probe.rising(call_args, lo, hi):
        k = run.clusters - 1 - k
    n = bound["noise"].shape[0]
    if run.probe_cluster is not None:  # the validation: every sample at the quantile asked for
        positions = torch.full((n,), (k + run.probe_position) / run.clusters, dtype=torch.float64)
    else:
        positions = _positions(bound["timesteps"], n, k, run.clusters)
    result = call_replacing(wrapped, args, kwargs, args=call_args, timesteps=(lo + (hi - lo) * positions).tolist())
    if not mixture:
        ends = probe(call_args, [lo + (hi - lo) * k / run.clusters, lo + (hi - lo) * (k + 1) / run.clusters])
        _check_in_slice(result[1], ends, run_args)
    return result


#: float rounding between the probe and the real call, in musubi's timestep units (1 ... 1001)
_TOLERANCE = 1e-3
_BELOW_ONE = 1.0 - 2.0**-53


def _positions(handed, n: int, k: int, clusters: int) -> torch.Tensor:
    """Where each draw lands in cluster ``k``, as uniforms in [k/K, (k+1)/K) (float64, CPU): musubi's own
    bucketed values when it hands some, else uniform."""
    if handed is None:
        from ..sampling import cluster_uniform

        return cluster_uniform(n, k, clusters)
    values = torch.as_tensor(handed, dtype=torch.float64).flatten().clamp(0.0, _BELOW_ONE)
    return (k + values) / clusters


def _untruncated(run_args):
    """``args`` for musubi's untruncated sampler: what ``--preserve_distribution_shape`` draws from before
    it rejects draws outside [min_timestep, max_timestep]."""
    plain = copy.copy(run_args)
    plain.preserve_distribution_shape, plain.min_timestep, plain.max_timestep = False, None, None
    return plain


class _Probe:
    """musubi's own map from a uniform to a timestep, for this call: the wrapped sampler run on zero
    latents of the same layout (the number of dimensions and the last two sizes, which the *_shift
    samplings read) with ``timesteps`` set to the uniforms asked about."""

    def __init__(self, wrapped, args, kwargs, latents: torch.Tensor):
        self._wrapped, self._args, self._kwargs = wrapped, args, kwargs
        self._layout = (*([1] * (latents.ndim - 3)), *latents.shape[-2:])
        self._zero = torch.zeros((), device=latents.device, dtype=latents.dtype)

    def __call__(self, run_args, u) -> torch.Tensor:
        """The timesteps musubi returns for the uniforms ``u`` (float64, CPU)."""
        zeros = self._zero.expand(len(u), *self._layout)
        _, t = call_replacing(
            self._wrapped,
            self._args,
            self._kwargs,
            args=run_args,
            noise=zeros,
            latents=zeros,
            timesteps=[float(x) for x in u],
        )
        return t.detach().double().cpu().flatten()

    def rising(self, run_args, lo: float, hi: float) -> bool:
        a, b = self(run_args, [lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)]).tolist()
        return b >= a


def _truncation_bounds(probe: _Probe, untruncated, run_args, steps: int = 30) -> tuple[float, float]:
    """``--preserve_distribution_shape``: musubi keeps the draws of its untruncated sampler that land in
    [min_timestep, max_timestep] / 1000 (rejection sampling). Its map is monotone, so those are the draws
    whose uniform lies in one interval [lo, hi]; found by bisection on the map itself. Slicing [lo, hi]
    into K equal parts gives the clusters of musubi's truncated distribution."""
    t_min = (getattr(run_args, "min_timestep", None) or 0) / 1000.0
    t_max = (1000.0 if getattr(run_args, "max_timestep", None) is None else run_args.max_timestep) / 1000.0
    rising = probe.rising(untruncated, 0.0, 1.0)

    def t(u):  # musubi returns t * 1000 + 1
        return ((probe(untruncated, u) - 1.0) / 1000.0).tolist()

    def enters(v):  # False below lo, True from lo on
        return v >= t_min if rising else v <= t_max

    def stays(v):  # True up to hi, False after
        return v <= t_max if rising else v >= t_min

    first, last = t([0.0, 1.0])
    a_lo, a_hi = (0.0, 0.0) if enters(first) else (0.0, 1.0)
    b_lo, b_hi = (1.0, 1.0) if stays(last) else (0.0, 1.0)
    for _ in range(steps):
        mid_a, mid_b = (a_lo + a_hi) / 2, (b_lo + b_hi) / 2
        va, vb = t([mid_a, mid_b])
        a_lo, a_hi = (a_lo, mid_a) if enters(va) else (mid_a, a_hi)
        b_lo, b_hi = (mid_b, b_hi) if stays(vb) else (b_lo, mid_b)
    lo, hi = a_hi, b_lo
    if hi <= lo:
        raise LoliConfigError(
            f"--preserve_distribution_shape with --min_timestep {getattr(run_args, 'min_timestep', None)} "
            f"and --max_timestep {getattr(run_args, 'max_timestep', None)}: "
            f"--timestep_sampling {run_args.timestep_sampling} puts no timesteps in that range, "
            "so there is nothing to split into clusters; widen the range or change the sampling"
        )
    return lo, hi


def _check_in_slice(timesteps: torch.Tensor, ends: torch.Tensor, run_args) -> None:
    low, high = float(ends.min()), float(ends.max())
    got = timesteps.detach().double().cpu()
    if bool((got < low - _TOLERANCE).any() or (got > high + _TOLERANCE).any()):
        raise LoliUnsupportedTrainerError(
            f"{TRAINER_BASE}.NetworkTrainer.get_noisy_model_input_and_timesteps did not use the uniforms "
            "loli-plugin handed it in `timesteps` "
            f"(timestep_sampling={getattr(run_args, 'timestep_sampling', None)!r}: expected timesteps in "
            f"[{low:.3f}, {high:.3f}], got {got.tolist()}), so the step's timesteps would not come from its cluster. "
            f"Supported: {SUPPORTED}"
        )


# --------------------------------------------------------------------------- loss
class _Overlay:
    """A module seen with some attributes replaced (``torch.nn.functional`` with another ``mse_loss``)."""

    def __init__(self, real, **replaced):
        self._real, self._replaced = real, replaced

    def __getattr__(self, name):
        return self._replaced[name] if name in self._replaced else getattr(self._real, name)


class _TrainingLoss:
    """The first ``torch.nn.functional.mse_loss(pred, target, reduction=...)`` of a ``compute_loss`` call is
    the training loss (musubi's base computes ``reduction="none"`` then weights and averages it; Ideogram 4
    asks for the mean). For ``--loss_type loli`` it becomes the Loli loss with the same reduction, along
    the family's channel axis; either way its mean is recorded under the step's cluster. Later calls
    (Ideogram 4's ``--log_loss_stats`` diagnostics) are musubi's own."""

    def __init__(self, mse_loss, run):
        self._mse_loss, self._run, self.done = mse_loss, run, False

    def __call__(self, input, target, *rest, **kwargs):  # noqa: A002 - torch's parameter name
        if self.done or rest or set(kwargs) - {"reduction"}:
            return self._mse_loss(input, target, *rest, **kwargs)
        self.done = True
        reduction = kwargs.get("reduction", "mean")
        if self._run.loss_weights is None:
            loss = self._mse_loss(input, target, reduction=reduction)
        else:
            from ..loss import loli_loss

            loss = loli_loss(input, target, weights=self._run.loss_weights, reduction=reduction, dim=self._run.loss_dim)
        self._run.record_loss(loss)
        return loss


def compute_loss(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.compute_loss(self, args, output, timesteps, noise_scheduler,
    dit_dtype, network_dtype, global_step)`` (and Ideogram 4's override of it): during the call the module's
    ``torch`` is seen with ``nn.functional.mse_loss`` replaced by ``_TrainingLoss``, so musubi keeps its
    own SD3 weighting (``--weighting_scheme``), reduction and extra terms (HiDream-O1's DINO loss) around
    the Loli loss. A compute_loss that never calls mse_loss is refused: the run asked for a loss or logs
    it would silently not get."""
    run = context.run
    if run is None:
        return wrapped(*args, **kwargs)
    function = getattr(wrapped, "__func__", wrapped)
    namespace, real = function.__globals__, function.__globals__.get("torch")
    where = f"{function.__module__}.{function.__qualname__}"
    if real is None:
        raise LoliUnsupportedTrainerError(f"{where} does not compute its loss through torch. Supported: {SUPPORTED}")
    training_loss = _TrainingLoss(real.nn.functional.mse_loss, run)
    namespace["torch"] = _Overlay(
        real, nn=_Overlay(real.nn, functional=_Overlay(real.nn.functional, mse_loss=training_loss))
    )
    try:
        result = wrapped(*args, **kwargs)
    finally:
        namespace["torch"] = real
    if not training_loss.done:
        raise LoliUnsupportedTrainerError(
            f"{where} computed its loss without torch.nn.functional.mse_loss, so loli-plugin can neither apply "
            f"--loss_type loli nor record the per-cluster loss. Supported: {SUPPORTED}"
        )
    return result


# --------------------------------------------------------------------------- logs
def extra_step_logs(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.extra_step_logs(self, args, logs)`` (and Self-Flow's
    override of it): the loop merges what it returns into the step's logs before ``accelerator.log``, so
    ``loss/cluster_KK``, ``loss/normalized`` and ``loli/cluster`` reach every tracker next to
    ``loss/current``. Reading them costs one small device-to-host copy, after musubi's own ``loss.item()``.
    (The validation writes its passes itself, at the step they measured: ``context.log_validation``.)"""
    extra = wrapped(*args, **kwargs)
    run = context.run
    if run is None or run.monitor is None:
        return extra
    return {**extra, **run.logs()}


# --------------------------------------------------------------------------- validation
def process_batch(context, wrapped, instance, args, kwargs):
    """training/trainer_base.py ``NetworkTrainer.process_batch(self, args, accelerator, transformer, network,
    batch, latents, noise, noise_scheduler, dit_dtype, network_dtype, vae, global_step)``: one training
    micro-batch's forward and loss (Self-Flow's override calls it through ``super()``). The validation
    remembers the call, to measure its held-out batches through the same method with the same models and
    dtypes (``context.training_call``)."""
    run = context.run
    if run is not None and run.validation is not None and run.probe_cluster is None:
        context.training_call(bind_arguments(wrapped, args, kwargs))
    return wrapped(*args, **kwargs)


# --------------------------------------------------------------------------- instrumentors
PARSER = FunctionPatch(
    PARSER_COMMON,
    "setup_parser_common",
    "adds --loss_type loli and --loli_loss_weights",
    "options",
    params=[],
    wrapper=setup_parser_common,
)
TRAIN = FunctionPatch(
    TRAINER_BASE,
    "NetworkTrainer.train",
    "checks a Loli run before it loads anything",
    "activation",
    params=["self", "args"],
    reads=["args"],
    wrapper=train,
)
#: where every Loli run activates (feature "activation": needed by all of them)
GET_OPTIMIZER = FunctionPatch(
    TRAINER_BASE,
    "NetworkTrainer.get_optimizer",
    "accepts --optimizer_type LoliClustered; activates Loli runs",
    "activation",
    params=["self", "args", "trainable_params"],
    reads=["args"],
    wrapper=get_optimizer,
)
ENTRY = Instrumentor(LIBRARY, SUPPORTED, [PARSER, TRAIN, GET_OPTIMIZER])

_SAMPLER_PARAMS = ["self", "args", "noise", "latents", "timesteps", "noise_scheduler", "device", "dtype"]
_SAMPLER_READS = ["args", "noise", "latents", "timesteps", "noise_scheduler"]
_LOSS_PARAMS = ["self", "args", "output", "timesteps", "noise_scheduler", "dit_dtype", "network_dtype", "global_step"]
_LOGS_PARAMS = ["self", "args", "logs"]
_BATCH_PARAMS = [
    "self",
    "args",
    "accelerator",
    "transformer",
    "network",
    "batch",
    "latents",
    "noise",
    "noise_scheduler",
    "dit_dtype",
    "network_dtype",
    "vae",
    "global_step",
]

TRAINING = Instrumentor(
    LIBRARY,
    SUPPORTED,
    [
        FunctionPatch(
            TRAINER_BASE,
            "NetworkTrainer.get_noisy_model_input_and_timesteps",
            "timesteps from one cluster per step",
            "sampler",
            params=_SAMPLER_PARAMS,
            reads=_SAMPLER_READS,
            wrapper=sample_from_cluster,
        ),
        FunctionPatch(
            TRAINER_BASE,
            "compute_density_for_timestep_sampling",
            "keeps u < 1 so the scheduler-table index stays in range",
            "sampler",
            params=DENSITY_PARAMS,
            reads=[],
            wrapper=keep_density_below_one(TIMESTEPS),
        ),
        # also where every training loss is recorded under its cluster, hence "logs"
        FunctionPatch(
            TRAINER_BASE,
            "NetworkTrainer.compute_loss",
            "--loss_type loli; per-cluster loss",
            ("loss", "logs"),
            params=_LOSS_PARAMS,
            reads=[],
            wrapper=compute_loss,
        ),
        FunctionPatch(
            TRAINER_BASE,
            "NetworkTrainer.extra_step_logs",
            "per-cluster scalars next to loss/current",
            "logs",
            params=_LOGS_PARAMS,
            reads=[],
            wrapper=extra_step_logs,
        ),
        FunctionPatch(
            TRAINER_BASE,
            "NetworkTrainer.process_batch",
            "validation: measures the held-out set through the trainer's own forward and loss",
            "validation",
            params=_BATCH_PARAMS,
            wrapper=process_batch,
        ),
    ],
)


def _overrides(hidream: str, ideogram4: str, self_flow: str) -> list[FunctionPatch]:
    # optional: a module holds only its own family's class (``__main__`` holds one of them at most)
    return [
        FunctionPatch(
            hidream,
            "HiDreamO1NetworkTrainer.get_noisy_model_input_and_timesteps",
            "HiDream-O1 timesteps from one cluster",
            "sampler",
            params=_SAMPLER_PARAMS,
            reads=_SAMPLER_READS,
            wrapper=sample_from_cluster,
            optional=True,
        ),
        FunctionPatch(
            ideogram4,
            "Ideogram4NetworkTrainer.compute_loss",
            "Ideogram 4: --loss_type loli; per-cluster loss",
            ("loss", "logs"),
            params=_LOSS_PARAMS,
            reads=[],
            wrapper=compute_loss,
            optional=True,
        ),
        FunctionPatch(
            self_flow,
            "Flux2SelfFlowNetworkTrainer.extra_step_logs",
            "Self-Flow: per-cluster scalars",
            "logs",
            params=_LOGS_PARAMS,
            reads=[],
            wrapper=extra_step_logs,
            optional=True,
        ),
    ]


OVERRIDES = Instrumentor(LIBRARY, SUPPORTED, _overrides(HIDREAM, IDEOGRAM4, SELF_FLOW))


def overrides_in(module: str) -> Instrumentor | None:
    """``OVERRIDES`` aimed at ``module`` (a family's script run as ``__main__``), for the classes defined
    there (None if there are none; a class it only imports is patched in its own module)."""
    namespace = vars(sys.modules[module])

    def defined_here(patch):
        cls = namespace.get(patch.attr.split(".")[0])
        return isinstance(cls, type) and cls.__module__ == module

    held = [dataclasses.replace(p, module=module) for p in OVERRIDES.patches if defined_here(p)]
    return Instrumentor(LIBRARY, SUPPORTED, held) if held else None


# --------------------------------------------------------------------------- what a trainer class may override
#: NetworkTrainer methods a Loli run relies on -> the features that need them
SEAMS = {
    "train": {"activation"},  # the loop; the full fine-tuning scripts (*_train.py) run their own
    "process_batch": {"activation"},  # calls the sampler, call_dit and compute_loss
    "get_noisy_model_input_and_timesteps": {"sampler"},
    "compute_loss": {"loss", "logs"},
    "extra_step_logs": {"logs"},
}
#: overrides that keep the base method's work: they call super() (read at the pinned commit)
DELEGATING = {
    (
        "WanNetworkTrainer",
        "get_noisy_model_input_and_timesteps",
    ): "wan_train_network.py: every branch calls super(), high/low-noise training once per candidate draw",
    (
        "HiDreamO1NetworkTrainer",
        "compute_loss",
    ): "hidream_o1_train_network.py: super().compute_loss, then its DINO term",
    (
        "Flux2SelfFlowNetworkTrainer",
        "process_batch",
    ): (
        "flux_2_train_network_self_flow.py: super() unless --self_flow, whose step raises NotImplementedError "
        "at 30c658c"
    ),
}


def override_problems(trainer_cls: type, features: set, instrumentors) -> list[str]:
    """Why a trainer of this class cannot serve ``features``: each SEAMS method it overrides other than by
    delegating (``DELEGATING``) or through a fitting patch of ``instrumentors``."""
    base = sys.modules[TRAINER_BASE].NetworkTrainer
    patched = {(p.module, p.attr) for inst in instrumentors for p in inst.patches if p.problem() is None}
    problems = []
    for method, needed_by in SEAMS.items():
        if not needed_by & set(features):
            continue
        owner = next(c for c in trainer_cls.__mro__ if method in c.__dict__)
        if (
            owner is base
            or (owner.__qualname__, method) in DELEGATING
            or (owner.__module__, f"{owner.__qualname__}.{method}") in patched
        ):
            continue
        if method == "train":
            problems.append(
                f"{owner.__module__}.{owner.__qualname__} runs its own training loop "
                "(it overrides NetworkTrainer.train); "
                "loli-plugin supports musubi-tuner's LoRA scripts, *_train_network.py"
            )
        else:
            problems.append(
                f"{owner.__module__}.{owner.__qualname__}.{method} overrides NetworkTrainer.{method} in a way "
                "loli-plugin has not read"
            )
    return problems


#: The axis of each family's predictions (``call_dit``'s ``DiTOutput.pred``) that holds the latent
#: channels: the cosine of ``--loss_type loli`` compares, at each position, the predicted and target
#: channel vectors. Read from each family's call_dit at the pinned commit.
CHANNEL_DIMS = {
    "HunyuanVideoNetworkTrainer": 1,  # (B, C, F, H, W)
    "HunyuanVideo15NetworkTrainer": 1,  # (B, C, F, H, W)
    "WanNetworkTrainer": 1,  # torch.stack of the model's (C, F, H, W) outputs
    "FramePackNetworkTrainer": 1,  # (B, C, F, H, W)
    "FluxKontextNetworkTrainer": 1,  # unpacked: "b (h w) (c ph pw) -> b c (h ph) (w pw)"
    "Flux2NetworkTrainer": 1,  # unpacked: "b (h w) c -> b c h w"
    "ZImageNetworkTrainer": 1,  # (B, C, H, W) after squeeze(2)
    "Krea2NetworkTrainer": 1,  # unpacked to (B, C, 1, H, W)
    "Ideogram4NetworkTrainer": 1,  # unflatten_token_grid: (B, C, H, W)
    "QwenImageNetworkTrainer": 1,  # unpack_latents: (B, C, 1, H, W); layered models (B, L, C, H, W): see channel_dim
    "Kandinsky5NetworkTrainer": 2,  # torch.stack of per-sample (F, C, H, W): (B, F, C, H, W)
    "HiDreamO1NetworkTrainer": -1,  # pixel-patch sequence (B, L, 3 * patch * patch): each patch's pixel vector
}


def channel_dim(trainer_cls: type, run_args) -> int | None:
    """The cosine axis for this trainer (None: a family this plugin has not read)."""
    for cls in trainer_cls.__mro__:
        if cls.__name__ in CHANNEL_DIMS:
            if cls.__name__ == "QwenImageNetworkTrainer" and getattr(run_args, "is_layered", False):
                return 2  # unpack_latents keeps the layer axis first: (B, L, C, H, W)
            return CHANNEL_DIMS[cls.__name__]
    return None
