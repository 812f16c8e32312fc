"""``loli-plugin`` command line: ``bench`` (speed and memory), ``doctor`` (trainer checks), ``plot``
(per-cluster loss picture from TensorBoard logs)."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from . import doctor, plot
    from .bench import add_bench_parsers, demo

    parser = argparse.ArgumentParser(prog="loli-plugin", description="loli-plugin tools")
    top = parser.add_subparsers(dest="command", required=True)
    bench_parser = top.add_parser("bench", help="speed and memory benchmarks")
    add_bench_parsers(bench_parser.add_subparsers(dest="what", required=True))
    doctor.add_parser(top)
    plot.add_parser(top)
    demo.add_parser(top)
    args = parser.parse_args(argv)
    rc = args.func(args)
    return rc if isinstance(rc, int) else 0  # bench commands return their figures, not an exit code


if __name__ == "__main__":
    raise SystemExit(main())
