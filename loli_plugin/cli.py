"""``loli-plugin`` command line: ``bench`` (speed, memory, quality, base models), ``doctor`` (trainer
checks), ``plot`` (per-cluster loss picture from TensorBoard logs), ``demo``.

A bad argument, or a LoliError a command raises while checking its arguments, ends the command with
ONE line on stderr and exit status 2, argparse-style (``loli-plugin bench optimizer: error: ...``):
no usage block, no traceback. The argument types below do the checks that fit one value; a command
checks combinations of values first thing in its ``run``, before any work or output.
"""

from __future__ import annotations

import argparse
import math
import sys

from .errors import LoliConfigError, LoliError


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


def cluster_count(text: str) -> int:
    from .options import check_clusters

    try:
        return check_clusters(text, option="--clusters")
    except LoliConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def torch_device(text: str) -> str:
    """A device string torch understands and this machine has."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: CUDA is not available here (torch {torch.__version__}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return text


def build_parser() -> argparse.ArgumentParser:
    from . import doctor, plot
    from .bench import add_bench_parsers, demo

    parser = OneLineParser(prog="loli-plugin", description="loli-plugin tools")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to run")
    bench_parser = top.add_parser("bench", help="benchmarks (speed, memory, quality) and the digits base models")
    add_bench_parsers(bench_parser.add_subparsers(dest="what", required=True, metavar="WHAT", help="which benchmark"))
    doctor.add_parser(top)
    plot.add_parser(top)
    demo.add_parser(top)
    return parser


def main(argv=None) -> int:
    """Run a command; returns its exit status (2 for a bad argument, also when argparse found it)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help); hand back the status
        return int(exc.code or 0)
    try:
        rc = args.func(args)
    except LoliError as exc:  # a bad value (combination) a command found, or a missing optional package
        prog = " ".join(["loli-plugin", args.command] + ([args.what] if args.command == "bench" else []))
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0  # bench commands return their figures, not an exit code


def require(*modules: str, extra: str) -> None:
    """Raise LoliDependencyError naming the pip extra when one of ``modules`` is not installed."""
    import importlib.util

    from .errors import LoliDependencyError

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise LoliDependencyError(f"needs {', '.join(missing)}: pip install 'loli-plugin[{extra}]'")


if __name__ == "__main__":
    raise SystemExit(main())
