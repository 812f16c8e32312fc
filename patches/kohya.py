"""Patches for kohya-ss/sd-scripts (>= v0.10.0; read and tested at commit 48d368f, v0.10.1-5).

Each wrapper cites the function it wraps. Only ``library.*`` module functions are wrapped, never
trainer methods: when ``train_network.py`` runs as ``__main__`` its ``NetworkTrainer`` is a different
class object from the one other scripts import, while every script calls these functions through
their module (``train_util.get_optimizer(...)``), so wrapping the module attribute reaches them all.

Two instrumentors:

* ``ENTRY`` (installed when ``library.train_util`` is imported, through the ``.pth`` hook or the
  ``python -m loli_plugin.kohya`` launcher): the parser gets ``--loss_type loli`` and
  ``--loli_loss_weights``; ``get_optimizer`` understands the short name ``LoliClustered``.
* ``TRAINING`` and the per-family sampler instrumentors (installed when a run actually uses a Loli
  feature): the loss, and the timestep samplers that draw from one cluster per optimizer step.
  Runs that use no Loli option never get them, so their behaviour is the stock one.
"""

from __future__ import annotations

import ast
import copy
import sys

from ..errors import LoliConfigError
from .base import Instrumentor, PatchTarget, bind_arguments
from .draws import StratifiedTorch, cluster_draw

SUPPORTED = "kohya-ss/sd-scripts v0.10.0 or newer (tested at commit 48d368f, v0.10.1-5)"

#: --optimizer_type values that select the plugin. Avoid names ending in "8bit" or "schedulefree":
#: get_optimizer and is_schedulefree_optimizer branch on those suffixes.
SHORT_NAMES = ("loliclustered", "loli_clustered")
DOTTED_NAME = "loli_plugin.LoliClustered"
#: optimizer_args keys whose values are plain names; the plugin quotes them so kohya's
#: ast.literal_eval accepts `inner=AdamW8bit` as well as `inner='AdamW8bit'`.
NAME_KEYS = ("inner", "schedule")


def _run():
    from ..adapters import kohya

    return kohya.active_run()


# --------------------------------------------------------------------------- parser
def add_training_arguments(wrapped, instance, args, kwargs):
    """library/train_util.py ``add_training_arguments(parser, support_dreambooth)`` defines the closed
    ``--loss_type`` choices; add ``loli`` to them and the ``--loli_loss_weights`` option."""
    result = wrapped(*args, **kwargs)
    parser = bind_arguments(wrapped, args, kwargs)["parser"]
    for action in parser._actions:
        if "--loss_type" in action.option_strings and action.choices is not None and "loli" not in action.choices:
            action.choices = [*action.choices, "loli"]
            action.help = (action.help or "") + " / loli: loli-plugin's MSE+L1+cosine loss (see --loli_loss_weights)"
    if not any("--loli_loss_weights" in a.option_strings for a in parser._actions):
        parser.add_argument(
            "--loli_loss_weights",
            type=str,
            default=None,
            help='loli-plugin: weights of --loss_type loli, e.g. "mse=0.4,l1=0.4,cos=0.2" (the default)',
        )
    return result


# --------------------------------------------------------------------------- optimizer
def quote_name_args(optimizer_args):
    """Quote bare values of the plugin's name keys (``inner=AdamW8bit`` -> ``inner='AdamW8bit'``)."""
    out = []
    for arg in optimizer_args or []:
        key, sep, value = arg.partition("=")
        if sep and key.strip() in NAME_KEYS:
            try:
                ast.literal_eval(value)
            except (ValueError, SyntaxError):
                value = repr(value.strip())
            arg = f"{key.strip()}={value}"
        out.append(arg)
    return out


def get_optimizer(wrapped, instance, args, kwargs):
    """library/train_util.py ``get_optimizer(args, trainable_params)``: route the short name to the
    dotted-class branch of the same function (so kohya's own argument parsing and logging run), and
    activate the plugin for runs that only use ``--loss_type loli``."""
    from ..adapters import kohya

    bound = bind_arguments(wrapped, args, kwargs)
    run_args, trainable_params = bound["args"], bound["trainable_params"]
    opt_type = (run_args.optimizer_type or "").strip()
    if opt_type.lower() in SHORT_NAMES:
        routed = copy.copy(run_args)
        routed.optimizer_type = DOTTED_NAME
        routed.optimizer_args = quote_name_args(run_args.optimizer_args)
        with kohya.building_optimizer(run_args):
            return wrapped(routed, trainable_params)
    with kohya.building_optimizer(run_args):
        result = wrapped(run_args, trainable_params)
    if getattr(run_args, "loss_type", None) == "loli" and kohya.active_run() is None:
        kohya.activate(run_args, optimizer=None)  # the Loli loss alone, with the user's optimizer
    return result


ENTRY = Instrumentor(
    "kohya-ss/sd-scripts",
    SUPPORTED,
    [
        PatchTarget("library.train_util", "add_training_arguments", ["parser", "support_dreambooth"], add_training_arguments,
                    "adds --loss_type loli and --loli_loss_weights"),
        PatchTarget("library.train_util", "get_optimizer", ["args", "trainable_params"], get_optimizer,
                    "accepts --optimizer_type LoliClustered"),
    ],
)


# --------------------------------------------------------------------------- loss
def conditional_loss(wrapped, instance, args, kwargs):
    """library/train_util.py ``conditional_loss(model_pred, target, loss_type, reduction, huber_c)``:
    ``loss_type == "loli"`` computes the Loli loss; every other loss type runs the original untouched."""
    bound = bind_arguments(wrapped, args, kwargs)
    run = _run()
    if bound["loss_type"] != "loli":
        loss = wrapped(*args, **kwargs)
        if run is not None:
            run.record_loss(loss)
        return loss
    if run is None:
        raise LoliConfigError("--loss_type loli is set but loli-plugin was not activated for this run; "
                              "start the script with `python -m loli_plugin.kohya SCRIPT ...` or reinstall loli-plugin")
    from ..loss import loli_loss

    loss = loli_loss(bound["model_pred"], bound["target"], weights=run.loss_weights, reduction=bound["reduction"])
    run.record_loss(loss)
    return loss


# --------------------------------------------------------------------------- SD1/SD2/SDXL timesteps
def get_timesteps(wrapped, instance, args, kwargs):
    """library/train_util.py ``get_timesteps(min_timestep, max_timestep, b_size, device)``: the uniform
    integer draw ``torch.randint(min, max)`` becomes a draw from the current cluster's slice of the
    same range. ``min >= max`` is kohya's fixed-timestep validation: handed to the original."""
    bound = bind_arguments(wrapped, args, kwargs)
    run = _run()
    lo, hi = int(bound["min_timestep"]), int(bound["max_timestep"])
    if run is None or not run.stratify or lo >= hi:
        if run is not None:
            run.untracked_draw()
        return wrapped(*args, **kwargs)
    from ..sampling import DiscreteUniform

    k = run.take_cluster()
    t = DiscreteUniform(lo, hi).sample_cluster(int(bound["b_size"]), k, run.clusters)
    return t.long().to(bound["device"])


TRAINING = Instrumentor(
    "kohya-ss/sd-scripts",
    SUPPORTED,
    [
        PatchTarget("library.train_util", "conditional_loss", ["model_pred", "target", "loss_type", "reduction", "huber_c"],
                    conditional_loss, "--loss_type loli"),
        PatchTarget("library.train_util", "get_timesteps", ["min_timestep", "max_timestep", "b_size", "device"],
                    get_timesteps, "SD1.x/2.x/SDXL timesteps from one cluster per step"),
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


def _flow_sampler(family: str, module_name: str):
    def wrapper(wrapped, instance, args, kwargs):
        run = _run()
        bound = bind_arguments(wrapped, args, kwargs)
        run_args = bound["args"]
        # kohya's validation fixes the timestep with min_timestep == max_timestep; hand it over.
        validating = run_args.min_timestep is not None and run_args.min_timestep == run_args.max_timestep
        if run is None or not run.stratify or validating:
            if run is not None:
                run.untracked_draw()
            return wrapped(*args, **kwargs)
        k = run.take_cluster()
        if _flow_reflect(family, run_args):
            k = run.clusters - 1 - k
        options = (f"timestep_sampling={getattr(run_args, 'timestep_sampling', None)!r}, "
                   f"weighting_scheme={getattr(run_args, 'weighting_scheme', None)!r}")
        with cluster_draw(sys.modules[module_name], k, run.clusters, bound["latents"].shape[0],
                          f"{module_name}.get_noisy_model_input_and_timesteps", SUPPORTED, options):
            return wrapped(*args, **kwargs)

    wrapper.__doc__ = f"library/{module_name.split('.')[-1]}.py get_noisy_model_input_and_timesteps: draw from one cluster"
    return wrapper


_LAST_BELOW_ONE = 1.0 - 2.0**-24  # the largest float32 below 1


def _density_clamp(module_name: str):
    def wrapper(wrapped, instance, args, kwargs):
        """``compute_density_for_timestep_sampling``: under "mode" a draw near 0 maps to u == 1.0 in
        float32, and the caller's ``noise_scheduler.timesteps[(u * N).long()]`` indexes past the end.
        While a cluster draw is in progress (the module's ``torch`` is the stand-in), clamp u just below 1."""
        u = wrapped(*args, **kwargs)
        if isinstance(sys.modules[module_name].torch, StratifiedTorch):
            u = u.clamp(max=_LAST_BELOW_ONE)
        return u

    return wrapper


_DENSITY_PARAMS = ["weighting_scheme", "batch_size", "logit_mean", "logit_std", "mode_scale"]
_FLOW_PARAMS = ["args", "noise_scheduler", "latents", "noise", "device", "dtype"]


def _family(module: str, params, with_density: bool, family: str, why: str) -> Instrumentor:
    targets = [PatchTarget(module, "get_noisy_model_input_and_timesteps", params, _flow_sampler(family, module), why)]
    if with_density:
        targets.append(PatchTarget(module, "compute_density_for_timestep_sampling", _DENSITY_PARAMS, _density_clamp(module),
                                   "keeps u < 1 so the scheduler-table index stays in range"))
    return Instrumentor("kohya-ss/sd-scripts", SUPPORTED, targets)


#: module -> instrumentor, installed when the module is (or gets) imported during a Loli run.
FAMILIES = {
    "library.sd3_train_utils": _family("library.sd3_train_utils", ["args", "latents", "noise", "device", "dtype"], False, "sd3",
                                       "SD3 timesteps from one cluster per step"),
    "library.flux_train_utils": _family("library.flux_train_utils", _FLOW_PARAMS, True, "flux",
                                        "Flux/Chroma/Anima/HunyuanImage timesteps from one cluster per step"),
    "library.lumina_train_util": _family("library.lumina_train_util", _FLOW_PARAMS, True, "lumina",
                                         "Lumina timesteps from one cluster per step"),
}
