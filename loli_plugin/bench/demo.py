"""``loli-plugin demo``: AdamW and LoliClustered side by side on a real tiny LoRA, on CPU, in about a minute.

A tiny diffusers ``UNet2DModel`` pre-trained on scikit-learn's handwritten digits 0-8 with epsilon
prediction (shipped with the package; ``loli-plugin bench make-base`` made it, nothing is downloaded)
learns the held-out digit 9 through a rank-8 peft LoRA, twice, from the same seed (the same initial
LoRA, the same training images and the same noise in the same order):

* **AdamW**: ``torch.optim.AdamW`` with the MSE loss, timesteps drawn as usual;
* **LoliClustered**: the recommended configuration, ``LoliClustered(AdamW, K=10)`` with one-cluster
  timesteps and the Loli loss.

Both runs are ``bench quality``'s own (``quality.fit``: variants "AdamW" and "Loli K=10 + loli loss"), so
the same command over more seeds reproduces and extends the demo's verdict. Each LoRA is judged as a user
judges one: 64 samples from the same fixed noise, scored by the Fréchet distance (FD) of a digits
classifier's features to the real held-out 9s; the held-out loss per noise band; and the progress probe
(the loss of 32 fixed training images with fixed noise at each cluster's midpoint timestep, every 50
steps), whose curves move only when the weights do. The PNG shows the samples, the raw training loss
of both runs, the probe curves and the per-band change.

Needs ``pip install 'loli-plugin[demo]'`` (scikit-learn, peft, matplotlib, tqdm).
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from ..cli_args import nonnegative_int, positive_float, positive_int, require
from ..errors import LoliConfigError

OBJECTIVE = "eps"
RUNS = {"AdamW": "AdamW", "LoliClustered": "Loli K=10 + loli loss"}  # demo label -> bench quality variant
CLUSTERS = 10  # of the recommended configuration, and the probe's timesteps
SAMPLES, SAMPLE_STEPS = 64, 30  # bench quality's
PROBE_IMAGES, PROBE_EVERY = 32, 50  # a probe is 10 forwards of 32 images: every 20 steps it was a third of the demo
SHOWN = 16  # samples drawn in the PNG per run
MIN_STEPS_FOR_SHARE = 50  # steps before the timesteps' share of the raw loss's variance is printed


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", "tqdm", extra="demo")
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise LoliConfigError(f"--out {out} is a file; give a folder for the PNG") from None
    except OSError as exc:
        raise LoliConfigError(f"--out {out}: cannot create that folder ({exc.strerror or exc})") from None
    png = out / "demo.png"
    if png.exists() and not png.is_file():
        raise LoliConfigError(f"--out {out}: {png} is not a file; remove it or give another folder")

    started = time.perf_counter()
    print(
        f"LoRA (rank 8) on digit 9 of a tiny UNet pre-trained on digits 0-8 (epsilon prediction), batch {args.batch}, "
        f"lr {args.lr:g}, {args.steps} steps, seed {args.seed}, run twice from the same seed (same initial LoRA, "
        "images and noise):\n"
        "  AdamW:         torch.optim.AdamW, MSE loss, timesteps drawn as usual\n"
        f"  LoliClustered: LoliClustered(AdamW, K={CLUSTERS}), one-cluster timesteps, Loli loss "
        "(the recommended configuration)",
        flush=True,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as bench quality: the same bits on any machine load (see quality.fit)
    try:
        base = base_scores()
        results = {label: train(label, variant, args) for label, variant in RUNS.items()}
    finally:
        torch.set_num_threads(threads)

    print()
    print_samples(base, results)
    print_bands(base, results)
    print_probe(results)
    print_raw_loss(results)
    print_what_to_look_at(results, args)
    write_png(png, results, args)
    print(f"\nplot: {png}   (demo time {time.perf_counter() - started:.0f} s)")
    return 0


# --------------------------------------------------------------------------- the two runs
class Observer:
    """What the demo keeps of one run (``quality.fit`` calls it after every step): the raw training loss
    and the timesteps drawn, the progress probe every ``every`` steps, the final samples."""

    def __init__(self, steps: int, every: int, bar):
        from ..probe import ProgressProbe
        from .digits import Objective, nine_split

        self.steps, self.every, self.bar = steps, every, bar
        objective = Objective(OBJECTIVE)
        self.probe = ProgressProbe(nine_split()[0][:PROBE_IMAGES], objective.dist, clusters=CLUSTERS, seed=0)
        self.losses: list[float] = []
        self.timesteps: list[float] = []  # each step's mean timestep
        self.probes: list[tuple[int, dict]] = []
        self.images = None

    def measure(self, step, model, objective) -> None:
        def mse(x0, noise, t):  # the held-out metric, per image: comparable between the two runs' losses
            xt, tt, target = objective.noised(x0, noise, t)
            return torch.nn.functional.mse_loss(model(xt, tt).sample, target, reduction="none").mean(dim=(1, 2, 3))

        self.probes.append((step, self.probe(mse, model)))

    def __call__(self, step, model, objective, loss, t) -> None:
        from .samples import fixed_noise, generate

        if step == 0:  # before the first step: the base model (a new LoRA changes nothing yet)
            self.measure(step, model, objective)
            return
        self.losses.append(loss)
        self.timesteps.append(float(t.float().mean()))
        if step % self.every == 0 or step == self.steps:
            self.measure(step, model, objective)
        if step == self.steps:
            self.images = generate(model, objective, fixed_noise(SAMPLES), SAMPLE_STEPS)[:SHOWN]
        self.bar.update(1)


def base_scores() -> dict:
    """The base model's scores (where both runs start) and its probe values."""
    from . import base as base_model
    from .digits import Objective, tiny_unet
    from .metrics import evaluate

    model = tiny_unet()
    model.load_state_dict(base_model.load(base_model.shipped(OBJECTIVE))[0])
    return evaluate(model, Objective(OBJECTIVE), SAMPLES, SAMPLE_STEPS)


def train(label: str, variant: str, args) -> dict:
    from tqdm import tqdm

    from .quality import fit

    with tqdm(total=args.steps, desc=f"{label:13s}", unit="step", mininterval=1) as bar:
        observer = Observer(args.steps, PROBE_EVERY, bar)
        row = fit(
            OBJECTIVE,
            variant,
            args.batch,
            args.lr,
            args.seed,
            [args.steps],
            SAMPLES,
            SAMPLE_STEPS,
            observer=observer,
        )
    return {"scores": row["horizons"][str(args.steps)], "observer": observer}


# --------------------------------------------------------------------------- the printed tables
def change(new: float, old: float) -> str:
    """``new`` against ``old`` in per cent, one decimal below 10 %."""
    if not old:
        return "-"
    x = (new / old - 1) * 100
    return f"{x:+.1f} %" if abs(x) < 10 else f"{x:+.0f} %"


def print_samples(base: dict, results: dict) -> None:
    a, b = (results[k]["scores"] for k in RUNS)
    print(
        f"1. Samples: {SAMPLES} images from the same fixed noise ({SAMPLE_STEPS} DDIM steps), scored by a digits "
        "classifier. FD: Fréchet distance of its features to the real held-out 9s (lower is better; real 9s "
        "score about 1)."
    )
    print("| | base model | AdamW | LoliClustered | LoliClustered vs AdamW |")
    print("|---|---|---|---|---|")
    print(f"| FD | {base['fd']:.2f} | {a['fd']:.2f} | {b['fd']:.2f} | {change(b['fd'], a['fd'])} |")
    print(
        f"| share labelled 9 | {base['share']:.2f} | {a['share']:.2f} | {b['share']:.2f} "
        f"| {(b['share'] - a['share']) * 100:+.0f} pp |"
    )


def print_bands(base: dict, results: dict) -> None:
    from .digits import Objective
    from .metrics import BANDS, band_timesteps

    a, b = (results[k]["scores"] for k in RUNS)
    t = band_timesteps(Objective(OBJECTIVE)).tolist()
    print(
        f"\n2. Held-out loss per noise band: MSE of the held-out 9s at {BANDS} fixed timesteps with fixed noise "
        "(band 0: least noise)."
    )
    print("| band | t | base model | AdamW | LoliClustered | LoliClustered vs AdamW |")
    print("|---|---|---|---|---|---|")
    for i in range(BANDS):
        print(
            f"| {i} | {t[i]} | {base['bands'][i]:.4f} | {a['bands'][i]:.4f} | {b['bands'][i]:.4f} "
            f"| {change(b['bands'][i], a['bands'][i])} |"
        )
    for key, name in (("mean", "mean"), ("geomean", "geometric mean")):
        print(f"| {name} | | {base[key]:.4f} | {a[key]:.4f} | {b[key]:.4f} | {change(b[key], a[key])} |")


def print_probe(results: dict) -> None:
    a, b = (results[k]["observer"] for k in RUNS)
    (first, pa), (last, qa) = a.probes[0], a.probes[-1]
    qb = b.probes[-1][1]
    print(
        f"\n3. Progress probe: MSE of {PROBE_IMAGES} fixed training images with fixed noise at each cluster's "
        f"midpoint t, every {PROBE_EVERY} steps; only the weights change between two probes."
    )
    print(
        f"| cluster | t | both at step {first} | AdamW step {last} | LoliClustered step {last} "
        "| LoliClustered vs AdamW |"
    )
    print("|---|---|---|---|---|---|")
    for k in range(CLUSTERS):
        tag = f"probe/cluster_{k:02d}"
        print(
            f"| {k:02d} | {int(a.probe.timesteps[k])} | {pa[tag]:.4f} | {qa[tag]:.4f} | {qb[tag]:.4f} "
            f"| {change(qb[tag], qa[tag])} |"
        )


def variance_explained_by_timestep(losses: list[float], timesteps: list[float]) -> float:
    """Share of the variance of log(raw loss) that the drawn timestep's decile explains (one-way R²)."""
    logs = [math.log(v) for v in losses]
    if len(logs) < MIN_STEPS_FOR_SHARE:  # a few steps per decile say nothing
        return float("nan")
    order = sorted(range(len(timesteps)), key=timesteps.__getitem__)
    groups = [order[i * len(order) // 10 : (i + 1) * len(order) // 10] for i in range(10)]
    mean = statistics.fmean(logs)
    total = sum((v - mean) ** 2 for v in logs)
    within = sum(sum((logs[i] - statistics.fmean(logs[j] for j in g)) ** 2 for i in g) for g in groups if g)
    return 1 - within / total if total else float("nan")


def print_raw_loss(results: dict) -> None:
    a = results["AdamW"]["observer"]
    n = min(20, len(a.losses))
    share = variance_explained_by_timestep(a.losses, a.timesteps)
    print(
        f"\n4. AdamW's raw training loss, last {n} steps: {min(a.losses[-n:]):.3f} to {max(a.losses[-n:]):.3f}; "
        + (
            f"the timesteps each step drew explain {share * 100:.0f} % of its variance (log scale)."
            if math.isfinite(share)
            else "too few steps to say how much of it the timesteps explain."
        )
    )


def print_what_to_look_at(results: dict, args) -> None:
    a, b = (results[k]["scores"] for k in RUNS)
    better = [i for i, (x, y) in enumerate(zip(a["bands"], b["bands"])) if y < x]
    worse = [i for i, (x, y) in enumerate(zip(a["bands"], b["bands"])) if y > x]
    print("\nWhat to look at:")
    print(
        f"- The samples (table 1 and the PNG's top row): LoliClustered's FD is {change(b['fd'], a['fd'])} against "
        "AdamW's, from the same seed. This is one seed; `bench quality` runs the same two LoRAs over more seeds: "
        f"`loli-plugin bench quality --objectives eps --batch {args.batch} --lr {args.lr:g} --horizons {args.steps} "
        '--seeds 0 1 2 3 4 5 6 7 --variants AdamW "Loli K=10 + loli loss"` (docs/bench/README.md has its results).'
    )
    ratios = [(y / x - 1) * 100 for x, y in zip(a["bands"], b["bands"])]
    biggest = min(range(len(ratios)), key=ratios.__getitem__)
    print(
        f"- The mean held-out loss moves by {change(b['mean'], a['mean'])} and hides where the change is: with epsilon "
        f"prediction band 0's loss is {a['bands'][0] / a['bands'][-1]:.0f}x the last band's, so the mean is mostly "
        f"band 0. Per band (table 2) LoliClustered's loss is lower in band(s) {fmt(better)} (most in band {biggest}: "
        f"{change(b['bands'][biggest], a['bands'][biggest])}) and higher in {fmt(worse)}."
    )
    print(
        "- AdamW's raw training loss (section 4; the PNG's bottom left, coloured by the timestep drawn) goes up and "
        "down with the timesteps each step drew: it says little about progress. The probe curves (table 3, the "
        "PNG's middle plot) move only with the weights: compare them per cluster between the two runs."
    )


def fmt(indices: list[int]) -> str:
    return ", ".join(map(str, indices)) if indices else "none"


# --------------------------------------------------------------------------- the PNG
def write_png(png: Path, results: dict, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .digits import nine_split
    from .metrics import BANDS

    fig = plt.figure(figsize=(15, 9.5))
    grid = fig.add_gridspec(2, 3, height_ratios=[1, 1.1])
    fig.suptitle(
        f"loli-plugin demo: LoRA on digit 9, epsilon prediction, batch {args.batch}, lr {args.lr:g}, "
        f"{args.steps} steps, seed {args.seed}; both runs from the same seed",
        fontsize=12,
    )
    tiles = [("real held-out 9s", nine_split()[1][:SHOWN], None)] + [
        (label, results[label]["observer"].images, results[label]["scores"]) for label in RUNS
    ]
    for col, (title, images, scores) in enumerate(tiles):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(mosaic(images), cmap="gray", vmin=-1, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        if scores is not None:
            title += f": FD {scores['fd']:.2f}, labelled 9: {scores['share']:.0%}"
        ax.set_title(title, fontsize=10)

    colours = {"AdamW": "C1", "LoliClustered": "C0"}
    ax = fig.add_subplot(grid[1, 0])
    adamw = results["AdamW"]["observer"]  # its loss is plain MSE; LoliClustered's (the Loli loss) is on another scale
    steps = range(1, len(adamw.losses) + 1)
    ax.plot(steps, adamw.losses, color="0.8", lw=0.5, zorder=1)
    dots = ax.scatter(steps, adamw.losses, c=adamw.timesteps, cmap="viridis", s=7, zorder=2)
    fig.colorbar(dots, ax=ax, label="timestep drawn (mean of the batch)", pad=0.01)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title("AdamW's raw loss per step, coloured by the timestep drawn", fontsize=9)

    ax = fig.add_subplot(grid[1, 1])
    for label in RUNS:
        observer = results[label]["observer"]
        steps = [s for s, _ in observer.probes]
        for k in range(CLUSTERS):
            values = [
                logs[f"probe/cluster_{k:02d}"] / observer.probes[0][1][f"probe/cluster_{k:02d}"]
                for _, logs in observer.probes
            ]
            ax.plot(steps, values, color=colours[label], lw=0.8, alpha=0.35 + 0.065 * k)
        ax.plot(
            steps,
            [logs["probe/normalized"] for _, logs in observer.probes],
            color=colours[label],
            lw=2.5,
            label=f"{label}: mean",
        )
    ax.set_xlabel("step")
    ax.set_ylabel("probe / its first value")
    ax.set_title(
        "progress probe per cluster (thin) and its mean (thick):\nfixed images, noise and timesteps", fontsize=9
    )
    ax.legend(fontsize=8)

    ax = fig.add_subplot(grid[1, 2])
    a, b = (results[k]["scores"] for k in RUNS)
    ratios = [(y / x - 1) * 100 for x, y in zip(a["bands"], b["bands"])]
    ax.bar(range(BANDS), ratios, color=["C2" if r < 0 else "C3" for r in ratios])
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(range(BANDS))
    ax.set_xlabel("noise band (0: least noise)")
    ax.set_ylabel("%")
    ax.set_title(
        f"held-out MSE per noise band, LoliClustered vs AdamW\n(mean over bands: {change(b['mean'], a['mean'])}; "
        "below 0: LoliClustered better)",
        fontsize=9,
    )
    fig.tight_layout()
    try:
        fig.savefig(png, dpi=100)
    except OSError as exc:
        raise LoliConfigError(f"cannot write {png} ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)


def mosaic(images: torch.Tensor, columns: int = 4) -> torch.Tensor:
    """(N, 1, 8, 8) images in [-1, 1] as one (rows*9, columns*9) picture with a one-pixel gap."""
    rows = math.ceil(len(images) / columns)
    canvas = torch.full((rows * 9, columns * 9), -1.0)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * 9 : r * 9 + 8, c * 9 : c * 9 + 8] = image[0].float()
    return canvas


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="AdamW and LoliClustered side by side on a tiny LoRA on CPU: samples, per-noise-band loss, probe "
        "(needs loli-plugin[demo])",
    )
    p.add_argument("--out", default="out/demo", help="folder for demo.png (default out/demo)")
    p.add_argument("--steps", type=positive_int, default=400, help="LoRA steps of each run (default 400)")
    p.add_argument("--batch", type=positive_int, default=2, help="images per step (default 2)")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of both runs (default 0)")
    p.set_defaults(func=run)
