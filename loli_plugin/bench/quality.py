"""``loli-plugin bench quality``: a small, honest training-quality benchmark on real data.

A tiny diffusers ``UNet2DModel`` is pre-trained on scikit-learn's digits 0-8; a LoRA (peft) is then
fitted on the held-out digit 9 with each variant below, for two objectives:

* ``eps``: epsilon prediction, DDPM noise schedule, integer timesteps drawn uniformly;
* ``flow``: rectified flow, logit-normal t.

Variants: AdamW; AdamW + one-cluster sampler; LoliClustered K=5 and K=10 (with the sampler); K=10
with the Loli loss; AdamW with the Loli loss; K=10 with ``beta_horizon``; K=10 with ``warm_start``.
Metric: held-out MSE on a fixed grid of timesteps with fixed noise (it does not move with random
timestep draws), per timestep band (low / mid / high noise) and averaged; lower is better. Several
seeds and batch sizes. Output: a Markdown table and a PNG.
"""

from __future__ import annotations

import itertools
import statistics
import time
from pathlib import Path

import torch

from ..cli_args import positive_float, positive_int, require
from .machine import machine_line
from . import base as base_model
from .digits import BANDS, Objective, add_lora, nine_split, tiny_unet

VARIANTS = {
    "AdamW": dict(loli=False, sampler=False, clusters=10, loss="mse"),
    "AdamW + sampler": dict(loli=False, sampler=True, clusters=10, loss="mse"),
    "Loli K=5": dict(loli=True, sampler=True, clusters=5, loss="mse"),
    "Loli K=10": dict(loli=True, sampler=True, clusters=10, loss="mse"),
    "Loli K=10 + loli loss": dict(loli=True, sampler=True, clusters=10, loss="loli"),
    "AdamW + loli loss": dict(loli=False, sampler=False, clusters=10, loss="loli"),
    "Loli K=10 beta_horizon": dict(loli=True, sampler=True, clusters=10, loss="mse", beta_horizon=True),
    "Loli K=10 warm_start": dict(loli=True, sampler=True, clusters=10, loss="mse", warm_start=True),
}

def fit_lora(objective, base_state, variant: dict, batch: int, seed: int, steps: int, lr: float):
    from .. import LoliClustered, loli_loss
    from ..schedule import ClusterSchedule

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x_train, x_val = nine_split()
    model = tiny_unet()
    model.load_state_dict(base_state)
    model, lora = add_lora(model)
    K = variant["clusters"]
    if variant["loli"]:
        opt = LoliClustered(lora, inner="AdamW", clusters=K, lr=lr, weight_decay=0.0,
                            beta_horizon=variant.get("beta_horizon", False), warm_start=variant.get("warm_start", False))
        cluster_of = lambda: opt.current_cluster  # noqa: E731
    else:
        opt = torch.optim.AdamW(lora, lr=lr, weight_decay=0.0)
        schedule = ClusterSchedule(K, "shuffle", seed)
        cluster_of = lambda: schedule.current  # noqa: E731
    for _ in range(steps):
        x0 = x_train[torch.randint(len(x_train), (batch,), generator=g)]
        t = objective.dist.sample_cluster(batch, cluster_of(), K, generator=g) if variant["sampler"] else objective.dist.sample(batch, generator=g)
        xt, tt, target = objective.noisy(x0, t, g)
        pred = model(xt, tt).sample
        loss = loli_loss(pred, target).mean() if variant["loss"] == "loli" else torch.nn.functional.mse_loss(pred, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if not variant["loli"]:
            schedule.advance()
    return objective.validation(model, x_val)


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", extra="demo")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for obj_name in args.objectives:
        objective = Objective(obj_name)
        base, _ = base_model.load(base_model.shipped(obj_name))  # pre-trained on digits 0-8, shipped
        for batch, seed in itertools.product(args.batch, args.seeds):
            for name in args.variants:
                result = fit_lora(objective, base, VARIANTS[name], batch, seed, args.steps, args.lr)
                rows.append({"objective": obj_name, "batch": batch, "seed": seed, "variant": name, **result})
                print(f"[{time.perf_counter() - started:5.0f}s] {obj_name} batch {batch} seed {seed} {name:24s} mean {result['mean']:.4f}", flush=True)
    table = summarize(rows, args)
    (out / "quality.md").write_text(table)
    plot(rows, args, out / "quality.png")
    print(table)
    print(f"written: {out / 'quality.md'}, {out / 'quality.png'}")
    return 0


def summarize(rows, args) -> str:
    lines = [f"# loli-plugin quality benchmark", "",
             f"machine: {machine_line()}", "",
             f"command: `loli-plugin bench quality --steps {args.steps} --lr {args.lr} --batch {' '.join(map(str, args.batch))} "
             f"--seeds {' '.join(map(str, args.seeds))}`", "",
             "Held-out digit-9 MSE on a fixed timestep grid with fixed noise (lower is better); mean over seeds "
             "(min-max in brackets); 'vs AdamW' = relative change of the mean against plain AdamW at the same objective and batch.", ""]
    for obj_name in args.objectives:
        lines += [f"## {obj_name}", "", "| batch | variant | low noise | mid | high noise | mean | vs AdamW |", "|---|---|---|---|---|---|---|"]
        for batch in args.batch:
            ref = statistics.mean(r["mean"] for r in rows if r["objective"] == obj_name and r["batch"] == batch and r["variant"] == "AdamW")
            for name in args.variants:
                sel = [r for r in rows if r["objective"] == obj_name and r["batch"] == batch and r["variant"] == name]
                means = [r["mean"] for r in sel]
                cells = [f"{statistics.mean(r[b] for r in sel):.4f}" for b in BANDS]
                m = statistics.mean(means)
                lines.append(f"| {batch} | {name} | {' | '.join(cells)} | {m:.4f} ({min(means):.4f}-{max(means):.4f}) | {100 * (m / ref - 1):+.1f}% |")
        lines.append("")
    return "\n".join(lines)


def plot(rows, args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.objectives), figsize=(6 * len(args.objectives), 4.5), squeeze=False)
    for ax, obj_name in zip(axes[0], args.objectives):
        width = 0.8 / len(args.variants)
        for i, name in enumerate(args.variants):
            ys = []
            for batch in args.batch:
                ref = statistics.mean(r["mean"] for r in rows if r["objective"] == obj_name and r["batch"] == batch and r["variant"] == "AdamW")
                m = statistics.mean(r["mean"] for r in rows if r["objective"] == obj_name and r["batch"] == batch and r["variant"] == name)
                ys.append(100 * (m / ref - 1))
            ax.bar([j + i * width for j in range(len(args.batch))], ys, width, label=name)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(args.batch))], [f"batch {b}" for b in args.batch])
        ax.set_ylabel("held-out loss vs AdamW (%)  — lower is better")
        ax.set_title(f"{obj_name}: LoRA on digit 9")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_parser(sub) -> None:
    p = sub.add_parser("quality", help="held-out loss of LoRA fits with each variant (digits, CPU)")
    p.add_argument("--out", default="docs/bench", help="folder for quality.md and quality.png (default docs/bench)")
    p.add_argument("--objectives", nargs="+", default=["eps", "flow"], choices=["eps", "flow"], help="training objectives (default both)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                   help=f"variants to fit (default all: {', '.join(VARIANTS)})")
    p.add_argument("--batch", type=positive_int, nargs="+", default=[1, 2, 8], help="batch sizes (default 1 2 8)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="seeds (default 0 1)")
    p.add_argument("--steps", type=positive_int, default=200, help="LoRA steps per fit (default 200)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (default 3e-3)")
    p.set_defaults(func=run)
