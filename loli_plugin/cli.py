"""``loli-plugin`` command line: benchmarks (more subcommands come with the adapters)."""

from __future__ import annotations

import argparse


def main(argv=None) -> int:
    from . import bench

    parser = argparse.ArgumentParser(prog="loli-plugin", description="loli-plugin tools")
    top = parser.add_subparsers(dest="command", required=True)
    bench_parser = top.add_parser("bench", help="speed and memory benchmarks")
    bench.add_parser(bench_parser.add_subparsers(dest="what", required=True))
    args = parser.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
