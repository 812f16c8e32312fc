"""What kohya-ss's two trainers, sd-scripts and musubi-tuner, share; both patch modules import it openly.

musubi-tuner grew out of sd-scripts (same author) and reads the plugin's options the same way: one
``key=value`` per ``--optimizer_args`` entry, each value through ``ast.literal_eval``, a dotted-class
branch for ``--optimizer_type``, ``--min_timestep``/``--max_timestep`` for the integer range and
``--weighting_scheme mode`` with ``--mode_scale``; their flow samplers end in the same
``compute_density_for_timestep_sampling``. So the option parsing, the checks that refuse impossible
combinations before training, the short-name routing and the density clamp live here, once.
"""

from __future__ import annotations

import argparse
import ast
import copy
import sys

from ..errors import LoliConfigError
from .draws import StratifiedTorch
from .instrument import call_replacing

#: --optimizer_type values that select the plugin. Avoid names ending in "8bit" or "schedulefree":
#: sd-scripts' get_optimizer and is_schedulefree_optimizer branch on those suffixes.
SHORT_NAMES = ("loliclustered", "loli_clustered")
DOTTED_NAME = "loli_plugin.LoliClustered"
#: optimizer_args keys whose values are plain names; the plugin quotes them so that ast.literal_eval
#: accepts `inner=AdamW8bit` as well as `inner='AdamW8bit'`.
NAME_KEYS = ("inner", "schedule")
LOSS_WEIGHTS_HELP = 'loli-plugin: weights of --loss_type loli, e.g. "mse=0.4,l1=0.4,cos=0.2" (the default)'


# --------------------------------------------------------------------------- what a run asks for
def requests_optimizer(args) -> bool:
    """``--optimizer_type LoliClustered`` (short name) or the dotted ``loli_plugin.LoliClustered``."""
    opt_type = str(getattr(args, "optimizer_type", "") or "").strip()
    return opt_type.lower() in SHORT_NAMES or opt_type in (DOTTED_NAME, "loli_plugin.clustered.LoliClustered")


def requests_loss(args) -> bool:
    return getattr(args, "loss_type", None) == "loli"


def asked(args, probe: bool = False) -> str:
    """The Loli options of a run, as the user typed them (for the refusal messages); ``probe``: the run
    also asked for the progress probe (sd-scripts' ``--loli_probe``)."""
    parts = []
    if requests_optimizer(args):
        parts.append(f"--optimizer_type {getattr(args, 'optimizer_type', '')}")
    if requests_loss(args):
        parts.append("--loss_type loli")
    if probe and not requests_optimizer(args):
        parts.append("--loli_probe on")
    return " and ".join(parts) or "a Loli run"


def namespace_from_argv(argv: list[str]) -> argparse.Namespace:
    """The options a Loli run is asked for with (``requests_*``), read from a command line without the
    trainer's parser (for the one line said at the import of a layout loli-plugin cannot serve)."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--optimizer_type", default="")
    parser.add_argument("--loss_type", default=None)
    parser.add_argument("--loli_probe", default="auto")
    try:
        args, _ = parser.parse_known_args(argv)
    except SystemExit:  # an option given without its value: the trainer's parser says so
        return argparse.Namespace(optimizer_type="", loss_type=None, loli_probe="auto")
    return args


def add_loss_options(parser, new_loss_type: dict | None = None) -> None:
    """``loli`` among the ``--loss_type`` choices and the ``--loli_loss_weights`` option. A parser without
    ``--loss_type`` gets one made of ``new_loss_type`` (``add_argument``'s keywords), when given."""
    loss_type = next((a for a in parser._actions if "--loss_type" in a.option_strings), None)
    if loss_type is None:
        if new_loss_type is not None:
            parser.add_argument("--loss_type", **new_loss_type)
    elif loss_type.choices is not None and "loli" not in loss_type.choices:
        loss_type.choices = [*loss_type.choices, "loli"]
        loss_type.help = (loss_type.help or "") + " / loli: loli-plugin's MSE+L1+cosine loss (see --loli_loss_weights)"
    if not any("--loli_loss_weights" in a.option_strings for a in parser._actions):
        parser.add_argument("--loli_loss_weights", type=str, default=None, help=LOSS_WEIGHTS_HELP)


# --------------------------------------------------------------------------- checks before training
def check_timestep_range(clusters: int, args) -> None:
    """sd-scripts' get_timesteps and musubi-tuner's "sigma" sampling draw integer timesteps in
    [--min_timestep, --max_timestep) (defaults 0 and 1000): each cluster needs at least one of them."""
    lo = getattr(args, "min_timestep", None) or 0
    hi = 1000 if getattr(args, "max_timestep", None) is None else args.max_timestep
    if hi > lo and clusters > hi - lo:
        raise LoliConfigError(
            f"optimizer_args clusters={clusters} is larger than the {hi - lo} timesteps between "
            f"--min_timestep {lo} and --max_timestep {hi}; lower clusters or widen the range"
        )


def check_mode_scale(args) -> None:
    """``--weighting_scheme mode`` draws through an inverse CDF that exists only for some --mode_scale."""
    from ..sampling import ModeScale

    try:
        ModeScale(getattr(args, "mode_scale", 1.29))
    except LoliConfigError as exc:
        raise LoliConfigError(f"--mode_scale: {exc}") from None


# --------------------------------------------------------------------------- the short name
def call_routed(wrapped, args, kwargs, run_args):
    """Call an optimizer factory that takes ``args`` (sd-scripts' ``get_optimizer``, musubi-tuner's
    ``NetworkTrainer.get_optimizer``), sending the short name ``LoliClustered`` to its dotted-class
    branch with bare names in ``--optimizer_args`` quoted; any other optimizer_type goes through as is."""
    if str(getattr(run_args, "optimizer_type", "") or "").strip().lower() not in SHORT_NAMES:
        return wrapped(*args, **kwargs)
    routed = copy.copy(run_args)
    routed.optimizer_type = DOTTED_NAME
    routed.optimizer_args = quote_name_args(getattr(run_args, "optimizer_args", None))
    return call_replacing(wrapped, args, kwargs, args=routed)


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


# --------------------------------------------------------------------------- the density clamp
#: the largest float32 below 1
LAST_BELOW_ONE = 1.0 - 2.0**-24
DENSITY_PARAMS = ["weighting_scheme", "batch_size", "logit_mean", "logit_std", "mode_scale"]


def keep_density_below_one(module_name: str):
    """A wrapper of ``compute_density_for_timestep_sampling(weighting_scheme, batch_size, logit_mean,
    logit_std, mode_scale)`` (sd-scripts' flux/lumina utils, musubi-tuner's training/timesteps.py as
    trainer_base calls it): under "mode" a cluster draw close to 0 maps to u == 1.0 in float32, and the
    caller's ``noise_scheduler.timesteps[(u * N).long()]`` would index past the table's end. While a cluster
    draw is in progress (``module_name``'s ``torch``, where the function draws, is the stand-in of
    patches/draws.py), u is kept just below 1; any other call returns the trainer's value untouched."""

    def wrapper(context, wrapped, instance, args, kwargs):
        u = wrapped(*args, **kwargs)
        if isinstance(sys.modules[module_name].torch, StratifiedTorch):
            u = u.clamp(max=LAST_BELOW_ONE)
        return u

    return wrapper
