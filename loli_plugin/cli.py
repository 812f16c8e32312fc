"""``loli-plugin`` command line: ``demo`` (AdamW against LoliClustered on a tiny LoRA), ``doctor`` (trainer
checks), ``memory`` (optimizer-state GiB), ``plot`` (per-cluster loss picture from TensorBoard logs),
``compare`` (runs side by side per cluster, from their validation logs), ``bench`` (speed, memory,
quality, base models). Without a command it prints its usage and the commands.

A bad argument, or a LoliError a command raises while checking its arguments, ends the command with
ONE line on stderr and exit status 2, argparse-style (``loli-plugin bench optimizer: error: ...``):
no usage block, no traceback. The argument types in ``cli_args`` do the checks that fit one value; a command
checks combinations of values first thing in its ``run``, before any work or output.
"""

from __future__ import annotations

import sys

from .cli_args import OneLineParser
from .errors import LoliError


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed_version

    try:
        return installed_version("loli-plugin")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> OneLineParser:
    from . import compare, doctor, memory, plot
    from .bench import add_bench_parsers, demo

    parser = OneLineParser(
        prog="loli-plugin",
        description="loli-plugin tools: timestep-clustered optimizer states for your diffusion trainer. Start with "
        "`loli-plugin demo`; `loli-plugin COMMAND --help` explains each command.",
    )
    parser.add_argument("--version", action="version", version=f"loli-plugin {version()}")
    top = parser.add_subparsers(dest="command", metavar="COMMAND", help="what to run")
    demo.add_parser(top)
    doctor.add_parser(top)
    memory.add_parser(top)
    plot.add_parser(top)
    compare.add_parser(top)
    bench_parser = top.add_parser("bench", help="benchmarks (speed, memory, quality) and the digits base models")
    add_bench_parsers(bench_parser.add_subparsers(dest="what", required=True, metavar="WHAT", help="which benchmark"))
    return parser


def main(argv=None) -> int:
    """Run a command; returns its exit status (2 for a bad argument, also when argparse found it)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse has printed its one line (or --help, --version); hand back the status
        return int(exc.code or 0)
    if args.command is None:  # no command: what there is to run, not an error line
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except LoliError as exc:  # a bad value (combination) a command found, or a missing optional package
        prog = " ".join(["loli-plugin", args.command] + ([args.what] if args.command == "bench" else []))
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    return rc if isinstance(rc, int) else 0  # bench commands return their figures, not an exit code


if __name__ == "__main__":
    raise SystemExit(main())
