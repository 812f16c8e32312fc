"""``loli-plugin`` command line: ``bench`` (speed, memory, quality, base models), ``doctor`` (trainer
checks), ``plot`` (per-cluster loss picture from TensorBoard logs), ``compare`` (runs side by side per
cluster, from their validation logs), ``demo``.

A bad argument, or a LoliError a command raises while checking its arguments, ends the command with
ONE line on stderr and exit status 2, argparse-style (``loli-plugin bench optimizer: error: ...``):
no usage block, no traceback. The argument types in ``cli_args`` do the checks that fit one value; a command
checks combinations of values first thing in its ``run``, before any work or output.
"""

from __future__ import annotations

import sys

from .cli_args import OneLineParser
from .errors import LoliError


def build_parser() -> OneLineParser:
    from . import compare, doctor, plot
    from .bench import add_bench_parsers, demo

    parser = OneLineParser(prog="loli-plugin", description="loli-plugin tools")
    top = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to run")
    bench_parser = top.add_parser("bench", help="benchmarks (speed, memory, quality) and the digits base models")
    add_bench_parsers(bench_parser.add_subparsers(dest="what", required=True, metavar="WHAT", help="which benchmark"))
    doctor.add_parser(top)
    plot.add_parser(top)
    compare.add_parser(top)
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


if __name__ == "__main__":
    raise SystemExit(main())
