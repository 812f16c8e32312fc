"""``loli-plugin demo``: a real tiny LoRA fine-tune on CPU that shows why the raw loss curve of LoRA
training is noise and what the per-cluster view shows instead.

1. A tiny diffusers ``UNet2DModel`` pre-trained on scikit-learn's handwritten digits 0-8 (rectified
   flow, logit-normal timesteps) is loaded from the package (``loli-plugin bench make-base`` made it;
   the data ships with scikit-learn, nothing is downloaded).
2. A LoRA (peft) fits the held-out digit 9 with ``LoliClustered(AdamW, K=10)``, one-cluster timestep
   sampling and the Loli loss, at batch size 2: the raw loss jumps with the timesteps each step drew.
   Every 20 steps a progress probe (``loli_plugin.probe``) measures the same loss on 32 fixed
   training images with fixed noise at each cluster's midpoint timestep.
3. At the end: a per-cluster table of the training loss (with how much of its change is draw noise),
   the probe per cluster, the held-out loss per noise band on a fixed timestep grid with fixed noise
   (before and after), and a PNG: raw and per-cluster training loss, probe curves, normalized views.

Needs ``pip install 'loli-plugin[demo]'`` (scikit-learn, peft, matplotlib). About 35 s of one CPU core.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from ..cli_args import add_clusters_option, positive_float, positive_int, require
from ..errors import LoliConfigError


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", "tqdm", extra="demo")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoliConfigError(f"--out {out} is a file; give a folder for the PNG")
    if args.probe_samples > TRAIN_IMAGES:
        raise LoliConfigError(
            f"--probe-samples {args.probe_samples}: the LoRA trains on {TRAIN_IMAGES} images; use at most that many"
        )
    from ..plot import plot_run
    from .digits import BANDS

    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # One thread: batch-2 8x8 images are too small to split, and on a 2-core machine with anything
    # else running, two OpenMP threads wait on each other (measured: 100 steps 4 s on one thread,
    # 47-160 s on two while another process kept one core busy).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        r = train(args)
    finally:
        torch.set_num_threads(threads)

    print(
        f"\nLoRA on digit 9: {args.steps} steps at batch {args.batch}, LoliClustered(AdamW, K={args.clusters}), "
        f"one-cluster timesteps, Loli loss, lr {args.lr}"
    )
    raw = [v for _, v in r.scalars["loss/current"]]
    n = min(20, len(raw))
    print(
        f"raw training loss, first {n} steps: mean {statistics.mean(raw[:n]):.3f}, "
        f"range {min(raw[:n]):.3f}-{max(raw[:n]):.3f}; "
        f"last {n}: mean {statistics.mean(raw[-n:]):.3f}, range {min(raw[-n:]):.3f}-{max(raw[-n:]):.3f}"
    )
    print(
        "(it jumps with the timesteps each step drew: in flow matching the least noisy cluster's loss is the largest)"
    )
    print_cluster_table(r.monitor, r.history, r.flow.dist)
    print_probe_table(r, args)
    print_band_table(r.flow, r.before, r.after, BANDS)
    last = {tag: values[-1][1] for tag, values in r.scalars.items()}
    print(
        f"\nat the end: loss/normalized {last.get('loss/normalized', float('nan')):.3f} "
        "(mean over clusters of training loss now / start), "
        f"probe/normalized {last['probe/normalized']:.3f} (mean over clusters of last / first probe)"
    )
    png = plot_run(
        r.scalars,
        out / "demo_clusters.png",
        f"LoRA on digit 9 (flow matching): LoliClustered(AdamW, K={args.clusters}), "
        f"batch {args.batch}, {args.steps} steps",
    )
    print(f"plot: {png}   ({time.perf_counter() - start:.0f} s)")
    return 0


TRAIN_IMAGES = 120  # digits.nine_split(): the LoRA's training images


class Run:
    """What one demo run measured."""

    def __init__(self, flow, monitor, history, scalars, before, after, probe):
        self.flow, self.monitor, self.history, self.scalars = flow, monitor, history, scalars
        self.before, self.after, self.probe = before, after, probe


def train(args) -> Run:
    """The LoRA fit with its training-loss monitor and progress probe. Every scalar is logged at the
    number of optimizer steps done when it was measured: a step's training loss before its update,
    the probe after it (so the first probe, at 0, sees the untouched base model)."""
    from tqdm import tqdm

    from .. import ClusterLossMonitor, LoliClustered, loli_loss
    from ..probe import ProgressProbe
    from . import base as base_model
    from .digits import Objective, add_lora, nine_split, tiny_unet

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
    probe = ProgressProbe(x_train[: args.probe_samples], sampler, clusters=clusters, seed=0)

    def probe_loss(x0, noise, t):  # the training loss, per image
        xt, tt, target = flow.noised(x0, noise, t)
        return loli_loss(model(xt, tt).sample, target).mean(dim=(1, 2, 3))

    scalars: dict[str, list] = {}

    def log(step, logs):
        for tag, value in logs.items():
            scalars.setdefault(tag, []).append((step, value))

    history: list[list[float]] = [[] for _ in range(clusters)]  # each cluster's training losses
    log(0, probe(probe_loss, model))
    for step in tqdm(
        range(args.steps), desc=f"LoRA on digit 9 (LoliClustered K={clusters})", unit="step", mininterval=2
    ):
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
        log(step, {"loss/current": loss.item(), **monitor.logs()})
        if (step + 1) % args.probe_every == 0 or step + 1 == args.steps:
            log(step + 1, probe(probe_loss, model))
    return Run(flow, monitor, history, scalars, before, flow.validation(model, x_val), probe)


def ratio_spread(monitor, k: int, losses: list[float]) -> float | None:
    """Two standard errors of cluster k's now / start ratio from draw noise alone: the step-to-step
    spread of its losses (from successive differences, so a falling trend does not count as noise)
    carried through the mean of its first ``warmup`` losses and through the EMA."""
    if len(losses) < 3:
        return None
    sigma2 = statistics.mean((b - a) ** 2 for a, b in zip(losses, losses[1:])) / 2
    start, now = monitor.reference(k), monitor.ema[k]
    var_start = sigma2 / monitor.warmup
    var_now = (
        sigma2 * (1 - monitor.ema_decay) / (1 + monitor.ema_decay)
    )  # stationary variance of an EMA of independent draws
    return 2 * (now / start) * math.sqrt(var_now / now**2 + var_start / start**2)


def print_cluster_table(monitor, history, sampler) -> None:
    print(
        f"\ntraining loss per cluster: start = mean of its first {monitor.warmup} losses, "
        f"now = its EMA (decay {monitor.ema_decay})"
    )
    print("| cluster | t range | steps | start | now | now / start | noise of now / start (2 s.e.) |")
    print("|---|---|---|---|---|---|---|")
    for k in range(monitor.clusters):
        lo, hi = sampler.cluster_range(k, monitor.clusters)
        ref, ema = monitor.reference(k), monitor.ema[k]
        if ref is None or ema is None:
            print(f"| {k:02d} | {lo:.2f}-{hi:.2f} | {monitor.count[k]} | - | - | - | - |")
            continue
        spread = ratio_spread(monitor, k, history[k])
        print(
            f"| {k:02d} | {lo:.2f}-{hi:.2f} | {monitor.count[k]} | {ref:.3f} | {ema:.3f} | {ema / ref:.2f} | "
            f"{'-' if spread is None else f'±{spread:.2f}'} |"
        )
    print(
        "now / start below 1: that cluster's training loss fell. Each step draws 2 new images and new noise, so a\n"
        "cluster's training loss is noisy; a now / start above 1 but within its noise says nothing about that noise\n"
        "level. The progress probe and the held-out loss below, on fixed noise, say whether it really got worse."
    )


def print_probe_table(r: Run, args) -> None:
    width = max(2, len(str(args.clusters - 1)))
    series = {k: r.scalars[f"probe/cluster_{k:0{width}d}"] for k in range(args.clusters)}
    first_step, last_step = series[0][0][0], series[0][-1][0]
    print(
        f"\nprogress probe: the training loss of {args.probe_samples} fixed training images with fixed noise at each "
        f"cluster's midpoint t, every {args.probe_every} steps"
    )
    print(
        f"| cluster | probe t | step {first_step} | step {last_step} | last / first "
        "| training loss now / start (above) |"
    )
    print("|---|---|---|---|---|---|")
    for k, values in series.items():
        ref, ema = r.monitor.reference(k), r.monitor.ema[k]
        training = f"{ema / ref:.2f}" if ref and ema is not None else "-"
        print(
            f"| {k:0{width}d} | {r.probe.timesteps[k].item():.3f} | {values[0][1]:.4f} | {values[-1][1]:.4f} | "
            f"{values[-1][1] / values[0][1]:.2f} | {training} |"
        )
    print(
        "Only the weights change between two probes, so a probe curve moves only when the model fits these images\n"
        "better or worse at that noise level; it is the answer to a training-loss ratio that is lost in draw noise."
    )


def print_band_table(objective, before: dict, after: dict, bands) -> None:
    grid = objective.grid.tolist()
    thirds = [grid[0:3], grid[3:6], grid[6:9]]
    print("\nheld-out digit-9 loss (MSE) on a fixed t grid with fixed noise, per noise band:")
    print("| noise band | t grid | before the LoRA | after | after / before |")
    print("|---|---|---|---|---|")
    for band, ts in zip(bands, thirds):
        print(
            f"| {band} | {', '.join(f'{t:.2f}' for t in ts)} | {before[band]:.4f} | {after[band]:.4f} "
            f"| {after[band] / before[band]:.2f} |"
        )
    print(f"| all | | {before['mean']:.4f} | {after['mean']:.4f} | {after['mean'] / before['mean']:.2f} |")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo", help="tiny LoRA fine-tune on CPU: raw vs per-cluster loss and progress probe (needs loli-plugin[demo])"
    )
    p.add_argument("--out", default="out/demo", help="folder for the PNG (default out/demo)")
    p.add_argument("--steps", type=positive_int, default=400, help="LoRA steps (default 400)")
    add_clusters_option(p)
    p.add_argument("--batch", type=positive_int, default=2, help="images per step (default 2)")
    p.add_argument("--lr", type=positive_float, default=3e-3, help="learning rate (default 3e-3)")
    p.add_argument(
        "--probe-every", type=positive_int, default=20, help="optimizer steps between two progress probes (default 20)"
    )
    p.add_argument(
        "--probe-samples",
        type=positive_int,
        default=32,
        help=f"fixed training images in the probe (default 32, at most {TRAIN_IMAGES})",
    )
    p.set_defaults(func=run)
