"""``loli-plugin bench gradients``: why one cluster per step helps at small batches and not at large ones.

Measured on the digits LoRA at its start (the shipped or cached base, a fresh rank-8 LoRA, seed 0), with
the plain MSE loss, for each backbone and objective:

* **scale per cluster**: the norm of the mean gradient of each of K equal-probability timestep clusters
  (the cluster's own direction, averaged over ``--cluster-draws`` samples), relative to the largest. A
  single AdamW state divides every step by one second moment, which the largest clusters set; K banks give
  each cluster its own.
* **direction of a step's gradient** against the full gradient (the mean over ``--full-draws`` samples of
  the trainer's own timestep distribution): the mean cosine over ``--draws`` batches of size B, for a mixed
  batch (timesteps drawn from the whole distribution, as AdamW trains) and a one-cluster batch (all B from
  one cluster, as LoliClustered trains). A mixed batch's gradient approaches the full gradient as B grows;
  a one-cluster batch's approaches its cluster's direction, whose cosine with the full gradient is the
  ceiling ``cluster mean``.

Where the mixed batch's cosine passes the one-cluster batch's ceiling, a single state gets a better
direction per step than any bank, and only the per-cluster scale is left for the banks to win.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

from ..cli_args import digit, positive_int, require
from .machine import machine_line

CLUSTERS = 10


def _flat_grad(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def measure(
    backbone_name: str,
    objective_name: str,
    held_out: int,
    batches,
    draws: int,
    full_draws: int,
    cluster_draws: int,
    seed: int = 0,
) -> dict:
    from . import base as base_model
    from .backbones import BACKBONES
    from .digits import add_lora, held_out_split

    backbone = BACKBONES[backbone_name]
    objective = backbone.objective(objective_name)
    torch.manual_seed(seed)
    model = backbone.build()
    model.load_state_dict(base_model.load(base_model.ensure(objective_name, backbone_name, held_out))[0])
    model, lora = add_lora(model, backbone.lora_targets)
    # peft starts lora_B at zero, where lora_A has no gradient; a small random B makes both move, as after
    # the first steps of training
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=1e-3)
    x = backbone.to_model(held_out_split(held_out)[0])
    g = torch.Generator().manual_seed(seed + 1)

    def grad(t: torch.Tensor) -> torch.Tensor:
        """The LoRA's gradient of the mean MSE over len(t) random training images at timesteps t."""
        x0 = x[torch.randint(len(x), (len(t),), generator=g)]
        noise = backbone.to_model(torch.randn((len(t), 1, 8, 8), generator=g))
        xt, tt, target = objective.noised(x0, noise, t)
        for p in lora:
            p.grad = None
        torch.nn.functional.mse_loss(model(xt, tt).sample, target).backward()
        return _flat_grad(lora).clone()

    def mean_grad(sample, n: int, chunk: int = 64) -> torch.Tensor:
        total, done = None, 0
        while done < n:
            m = min(chunk, n - done)
            gm = grad(sample(m)) * m
            total = gm if total is None else total + gm
            done += m
        return total / n

    dist = objective.dist
    full = mean_grad(lambda n: dist.sample(n, generator=g), full_draws)
    per_cluster = [
        mean_grad(lambda n, k=k: dist.sample_cluster(n, k, CLUSTERS, generator=g), cluster_draws)
        for k in range(CLUSTERS)
    ]
    cos = torch.nn.functional.cosine_similarity
    norms = [float(v.norm()) for v in per_cluster]
    result = {
        "scale": [n / max(norms) for n in norms],
        "cluster_cos": [float(cos(v, full, dim=0)) for v in per_cluster],
        "mixed": {},
        "one_cluster": {},
    }
    for b in batches:
        mixed = [float(cos(grad(dist.sample(b, generator=g)), full, dim=0)) for _ in range(draws)]
        one = [
            float(cos(grad(dist.sample_cluster(b, i % CLUSTERS, CLUSTERS, generator=g)), full, dim=0))
            for i in range(draws)
        ]
        result["mixed"][b] = statistics.fmean(mixed)
        result["one_cluster"][b] = statistics.fmean(one)
    return result


def lines(name: str, r: dict) -> list[str]:
    batches = list(r["mixed"])
    return [
        f"### {name}",
        "",
        "| cluster (low noise first) | " + " | ".join(f"{k:02d}" for k in range(CLUSTERS)) + " |",
        "|---|" + "---|" * CLUSTERS,
        "| gradient scale (of the largest) | " + " | ".join(f"{s:.2f}" for s in r["scale"]) + " |",
        "| cosine with the full gradient | " + " | ".join(f"{c:.2f}" for c in r["cluster_cos"]) + " |",
        "",
        "| batch | " + " | ".join(str(b) for b in batches) + " |",
        "|---|" + "---|" * len(batches),
        "| mixed batch: cosine with the full gradient | " + " | ".join(f"{r['mixed'][b]:.3f}" for b in batches) + " |",
        "| one-cluster batch | " + " | ".join(f"{r['one_cluster'][b]:.3f}" for b in batches) + " |",
        f"| one-cluster ceiling (cluster mean, averaged over clusters) | {statistics.fmean(r['cluster_cos']):.3f} |"
        + " |" * (len(batches) - 1),
        "",
    ]


def run(args) -> int:
    require("sklearn", "peft", extra="demo")
    from .backbones import BACKBONES

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    started = time.perf_counter()
    out = [
        "# Gradient scale and direction per timestep cluster",
        "",
        f"machine: {machine_line()}",
        "",
        f"command: `loli-plugin bench gradients --digit {args.digit} --batch {' '.join(map(str, args.batch))} "
        f"--draws {args.draws} --full-draws {args.full_draws} --cluster-draws {args.cluster_draws}`",
        "",
        __doc__.split("\n\n", 1)[1].strip(),
        "",
    ]
    try:
        for b in BACKBONES.values():
            for o in b.objectives:
                r = measure(b.name, o, args.digit, args.batch, args.draws, args.full_draws, args.cluster_draws)
                out += lines(f"{b.label} {o}, digit {args.digit}", r)
                print("\n".join(out[-14:]), flush=True)
    finally:
        torch.set_num_threads(threads)
    out.append(f"({time.perf_counter() - started:.0f} s)")
    if args.out:
        Path(args.out).write_text("\n".join(out) + "\n")
        print(f"written: {args.out}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "gradients",
        help="gradient scale and direction per timestep cluster on the digits LoRA (why the gain depends on batch)",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--digit", type=digit, default=9, help="held-out digit (default 9, the shipped bases')")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="batch sizes")
    p.add_argument("--draws", type=positive_int, default=64, help="batches per batch size and kind (default 64)")
    p.add_argument("--full-draws", type=positive_int, default=1024, help="samples of the full gradient")
    p.add_argument("--cluster-draws", type=positive_int, default=256, help="samples of each cluster's gradient")
    p.add_argument("--out", help="also write the tables to this markdown file")
    p.set_defaults(func=run)
