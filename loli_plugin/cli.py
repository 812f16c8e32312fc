"""``loli-plugin`` command line: ``bench`` (speed and memory) and ``doctor`` (trainer checks)."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from . import bench, doctor

    parser = argparse.ArgumentParser(prog="loli-plugin", description="loli-plugin tools")
    top = parser.add_subparsers(dest="command", required=True)
    bench_parser = top.add_parser("bench", help="speed and memory benchmarks")
    bench.add_parser(bench_parser.add_subparsers(dest="what", required=True))
    doctor.add_parser(top)
    args = parser.parse_args(argv)
    return args.func(args) or 0


if __name__ == "__main__":
    raise SystemExit(main())
