"""``loli-plugin demo``: a real tiny LoRA fine-tune on CPU that shows why the raw loss curve of LoRA
training is noise and what the per-cluster view shows instead.

1. A tiny diffusers ``UNet2DModel`` pre-trained on scikit-learn's handwritten digits 0-8 (rectified
   flow, logit-normal timesteps) is loaded from the package (``loli-plugin bench make-base`` made it;
   the data ships with scikit-learn, nothing is downloaded).
2. A LoRA (peft) fits the held-out digit 9 with ``LoliClustered(AdamW, K=10)``, one-cluster timestep
   sampling and the Loli loss, at batch size 2: the raw loss jumps with the timesteps each step drew.
3. At the end: a per-cluster table of the training loss, the held-out loss per noise band on a
   fixed timestep grid with fixed noise (before and after), and a PNG of raw vs per-cluster loss.

Needs ``pip install 'loli-plugin[demo]'`` (scikit-learn, peft, matplotlib). About half a minute on one
CPU core.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from ..cli import cluster_count, positive_float, positive_int, require
from ..errors import LoliConfigError


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", "tqdm", extra="demo")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoliConfigError(f"--out {out} is a file; give a folder for the PNG")
    from tqdm import tqdm

    from .. import ClusterLossMonitor, LoliClustered, loli_loss
    from ..plot import plot_run
    from . import base as base_model
    from .digits import BANDS, Objective, add_lora, nine_split, tiny_unet

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread: batch-2 8x8 images are too small to split, and on a 2-core machine with anything
    # else running, two OpenMP threads wait on each other (measured: 100 steps 4 s on one thread,
    # 47-160 s on two while another process kept one core busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        flow = Objective("flow")  # rectified flow, logit-normal t
        sampler = flow.dist
        base, _ = base_model.load(base_model.shipped("flow"))  # pre-trained on digits 0-8, shipped with the package
        x_train, x_val = nine_split()
        model = tiny_unet()
        model.load_state_dict(base)
        torch.manual_seed(0)  # peft initialises the LoRA from the global RNG: same run every time
        model, lora = add_lora(model)
        g = torch.Generator().manual_seed(0)
        before = flow.validation(model, x_val)
        clusters = args.clusters
        opt = LoliClustered(lora, inner="AdamW", clusters=clusters, lr=args.lr, weight_decay=0.0)
        monitor = ClusterLossMonitor(clusters=clusters)
        scalars: dict[str, list] = {}
        history: list[list[float]] = [[] for _ in range(clusters)]  # each cluster's training losses
        for step in tqdm(range(args.steps), desc=f"LoRA on digit 9 (LoliClustered K={clusters})", unit="step", mininterval=2):
            k = opt.current_cluster
            x0 = x_train[torch.randint(len(x_train), (args.batch,), generator=g)]
            t = sampler.sample_cluster(args.batch, k, clusters, generator=g)
            xt, tt, target = flow.noisy(x0, t, g)
            loss = loli_loss(model(xt, tt).sample, target).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            monitor.update(k, loss)
            history[k].append(loss.item())
            scalars.setdefault("loss/current", []).append((step, loss.item()))
            for tag, value in monitor.logs().items():
                scalars.setdefault(tag, []).append((step, value))
        after = flow.validation(model, x_val)
    finally:
        torch.set_num_threads(threads)

    print(f"\nLoRA on digit 9: {args.steps} steps at batch {args.batch}, LoliClustered(AdamW, K={clusters}), "
          f"one-cluster timesteps, Loli loss, lr {args.lr}")
    raw = [v for _, v in scalars["loss/current"]]
    n = min(20, len(raw))
    print(f"raw training loss, first {n} steps: mean {statistics.mean(raw[:n]):.3f}, range {min(raw[:n]):.3f}-{max(raw[:n]):.3f}; "
          f"last {n}: mean {statistics.mean(raw[-n:]):.3f}, range {min(raw[-n:]):.3f}-{max(raw[-n:]):.3f}")
    print("(it jumps with the timesteps each step drew: in flow matching the least noisy cluster's loss is the largest)")
    print_cluster_table(monitor, history, sampler)
    print_band_table(flow, before, after, BANDS)
    normalized = scalars.get("loss/normalized", [(0, float("nan"))])[-1][1]
    print(f"\nloss/normalized at the end: {normalized:.3f} (mean over clusters of now / start)")
    png = plot_run(scalars, out / "demo_clusters.png", f"LoRA on digit 9, K={clusters}, batch {args.batch}")
    print(f"plot: {png}   ({time.perf_counter() - start:.0f} s)")
    return 0


def ratio_spread(monitor, k: int, losses: list[float]) -> float | None:
    """Two standard errors of cluster k's now / start ratio from draw noise alone: the step-to-step
    spread of its losses (from successive differences, so a falling trend does not count as noise)
    carried through the mean of its first ``warmup`` losses and through the EMA."""
    if len(losses) < 3:
        return None
    sigma2 = statistics.mean((b - a) ** 2 for a, b in zip(losses, losses[1:])) / 2
    start, now = monitor.reference(k), monitor.ema[k]
    var_start = sigma2 / monitor.warmup
    var_now = sigma2 * (1 - monitor.ema_decay) / (1 + monitor.ema_decay)  # stationary variance of an EMA of independent draws
    return 2 * (now / start) * math.sqrt(var_now / now**2 + var_start / start**2)


def print_cluster_table(monitor, history, sampler) -> None:
    print(f"\ntraining loss per cluster: start = mean of its first {monitor.warmup} losses, now = its EMA (decay {monitor.ema_decay})")
    print("| cluster | t range | steps | start | now | now / start | noise of now / start (2 s.e.) |")
    print("|---|---|---|---|---|---|---|")
    for k in range(monitor.clusters):
        lo, hi = sampler.cluster_range(k, monitor.clusters)
        ref, ema = monitor.reference(k), monitor.ema[k]
        if ref is None or ema is None:
            print(f"| {k:02d} | {lo:.2f}-{hi:.2f} | {monitor.count[k]} | - | - | - | - |")
            continue
        spread = ratio_spread(monitor, k, history[k])
        print(f"| {k:02d} | {lo:.2f}-{hi:.2f} | {monitor.count[k]} | {ref:.3f} | {ema:.3f} | {ema / ref:.2f} | "
              f"{'-' if spread is None else f'±{spread:.2f}'} |")
    print("now / start below 1: that cluster's training loss fell. Each step draws 2 new images and new noise, so a\n"
          "cluster's training loss is noisy; a now / start above 1 but within its noise says nothing about that noise\n"
          "level. The held-out loss below, on fixed timesteps and fixed noise, says whether it really got worse.")


def print_band_table(objective, before: dict, after: dict, bands) -> None:
    grid = objective.grid.tolist()
    thirds = [grid[0:3], grid[3:6], grid[6:9]]
    print("\nheld-out digit-9 loss (MSE) on a fixed t grid with fixed noise, per noise band:")
    print("| noise band | t grid | before the LoRA | after | after / before |")
    print("|---|---|---|---|---|")
    for band, ts in zip(bands, thirds):
        print(f"| {band} | {', '.join(f'{t:.2f}' for t in ts)} | {before[band]:.4f} | {after[band]:.4f} | {after[band] / before[band]:.2f} |")
    print(f"| all | | {before['mean']:.4f} | {after['mean']:.4f} | {after['mean'] / before['mean']:.2f} |")


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="tiny LoRA fine-tune on CPU: raw vs per-cluster loss (needs loli-plugin[demo])")
    p.add_argument("--out", default="out/demo", help="folder for the PNG (default out/demo)")
    p.add_argument("--steps", type=positive_int, default=400, help="LoRA steps (default 400)")
    p.add_argument("--clusters", type=cluster_count, default=10, help="K, the number of timestep clusters (default 10)")
    p.add_argument("--batch", type=positive_int, default=2, help="images per step (default 2)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (default 3e-3)")
    p.set_defaults(func=run)
