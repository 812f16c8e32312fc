"""``loli-plugin bench sampler``: the cost of a cluster draw against the plain draw, per family and batch size."""

from __future__ import annotations

import statistics
import time

import torch

from ..cli_args import add_clusters_option, positive_int
from .machine import machine_line


def bench_sampler(args) -> dict:
    """Time a cluster draw (what the patched samplers do) against the plain draw, per batch size."""
    from ..sampling import CosMap, DiscreteUniform, LogitNormal, ModeScale, Shift

    families = {
        "logit_normal": LogitNormal(),
        "sd3_shift": Shift(LogitNormal(), 3.0),
        "mode": ModeScale(1.29),
        "cosmap": CosMap(),
        "sd_randint": DiscreteUniform(0, 1000),
    }
    print(f"# machine: {machine_line()}")
    print(f"# median of {args.calls} calls, interleaved; K={args.clusters}")
    print("| family | batch | plain us/call | cluster us/call | ratio |")
    print("|---|---|---|---|---|")
    results = {}
    g = torch.Generator().manual_seed(0)
    for name, dist in families.items():
        for batch in args.batch:
            plain, ours = [], []
            for i in range(args.calls):
                t0 = time.perf_counter()
                dist.sample(batch, generator=g)
                t1 = time.perf_counter()
                dist.sample_cluster(batch, i % args.clusters, args.clusters, generator=g)
                t2 = time.perf_counter()
                plain.append(t1 - t0)
                ours.append(t2 - t1)
            a, b = statistics.median(plain) * 1e6, statistics.median(ours) * 1e6
            results[(name, batch)] = (a, b)
            print(f"| {name} | {batch} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return results


def add_parser(sub) -> None:
    s = sub.add_parser("sampler", help="time of a cluster draw vs the plain draw")
    add_clusters_option(s)
    s.add_argument(
        "--calls", type=positive_int, default=2000, help="timed calls per family and batch size (default 2000)"
    )
    s.add_argument(
        "--batch", type=positive_int, nargs="+", default=[1, 4, 16], help="batch sizes to time (default 1 4 16)"
    )
    s.set_defaults(func=bench_sampler)
