"""Argument types and checks shared by every ``loli-plugin`` subcommand: each bad value becomes one
argparse error line (``PROG: error: ...``, exit 2), never a traceback. Separate from ``cli`` so the
subcommand modules can use them without importing the command line that imports them."""

from __future__ import annotations

import argparse
import math

from .errors import LoliConfigError


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line, ``PROG: error: MESSAGE`` (exit 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def _number(text: str, kind, test, want: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
    if not test(value):
        raise argparse.ArgumentTypeError(f"must be {want}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def nonnegative_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")


def digit(text: str) -> int:
    return _number(text, int, lambda v: 0 <= v <= 9, "a digit 0-9")


def cluster_count(text: str) -> int:
    from .options import check_clusters

    try:
        return check_clusters(text, option="--clusters")
    except LoliConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_clusters_option(parser) -> None:
    """``--clusters K`` as every command that builds clusters takes it (default: the optimizer's own)."""
    from .options import DEFAULT_CLUSTERS

    parser.add_argument(
        "--clusters",
        type=cluster_count,
        default=DEFAULT_CLUSTERS,
        help=f"K, the number of timestep clusters (default {DEFAULT_CLUSTERS})",
    )


def torch_device(text: str) -> str:
    """A device string torch understands and this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f"{text}: CUDA is not available here (torch {torch.__version__}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def require(*modules: str, extra: str) -> None:
    """Raise LoliDependencyError naming the pip extra when one of ``modules`` is not installed."""
    import importlib.util

    from .errors import LoliDependencyError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LoliDependencyError(f"needs {', '.join(missing)}: pip install 'loli-plugin[{extra}]'")
