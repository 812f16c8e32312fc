"""``loli-plugin plot LOGDIR``: the per-cluster picture of kohya or OneTrainer runs, from their
TensorBoard event files.

Which runs: a run is a folder holding ``events.out.tfevents*`` files, in LOGDIR itself or at most two
folder levels below it, the depth of the trainers' own layouts: kohya writes
``--logging_dir/<prefix><time>/network_train/``, OneTrainer ``workspace/tensorboard/<prefix><time>/``
(so LOGDIR may be the logging dir, a OneTrainer workspace or its tensorboard folder, or one run).
Deeper folders are not searched, and runs without loss scalars are skipped.

Where the PNGs go: one per run, into one output folder (``--out``, default ``loli-plots`` in the
current folder), named after the run's path below LOGDIR; next to each run only with
``--next-to-runs``.

Top panel: the raw step loss (what the trainer's loss curve shows) with the per-cluster loss EMAs
over it; bottom panel: ``loss/normalized`` (mean over clusters of each cluster's EMA / the mean of its
first losses). The raw curve jumps with the timesteps each step drew; the per-cluster and
normalized curves remove that, but still move with the images and noise each step drew. Needs
``pip install loli-plugin[plot]`` (tensorboard, matplotlib).
"""

from __future__ import annotations

import re
from pathlib import Path

from .cli import require
from .errors import LoliConfigError

RAW_TAGS = ("loss/current", "loss/train_step", "loss")  # kohya train_network, OneTrainer, kohya fine_tune
CLUSTER_TAG = re.compile(r"^loss/cluster_(\d+)$")
EVENTS = "events.out.tfevents*"
DEPTH = 2  # kohya: logging_dir/<run>/network_train; OneTrainer: workspace/tensorboard/<run>


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def find_runs(logdir: Path) -> list[Path]:
    """Folders with event files in ``logdir`` or up to DEPTH levels below it (never a whole tree)."""
    patterns = ["/".join(["*"] * depth + [EVENTS]) for depth in range(DEPTH + 1)]
    return sorted({p.parent for pattern in patterns for p in logdir.glob(pattern) if p.is_file()})


def has_loss(scalars: dict) -> bool:
    return any(t in scalars for t in RAW_TAGS) or any(CLUSTER_TAG.match(t) for t in scalars)


def run_name(run_dir: Path, logdir: Path) -> str:
    relative = run_dir.relative_to(logdir).as_posix()
    return logdir.resolve().name if relative == "." else relative.replace("/", "_")


def plot_run(scalars: dict, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw_tag = next((t for t in RAW_TAGS if t in scalars), None)
    clusters = sorted((int(m.group(1)), t) for t in scalars if (m := CLUSTER_TAG.match(t)))
    if not has_loss(scalars):
        raise LoliConfigError(f"{title}: no loss scalars (expected {', '.join(RAW_TAGS)} or loss/cluster_XX)")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    if raw_tag:
        steps, values = zip(*scalars[raw_tag])
        top.plot(steps, values, color="0.6", lw=0.8, label=f"raw training loss of each step ({raw_tag})")
    cmap = plt.get_cmap("viridis", max(len(clusters), 1))
    for i, (k, tag) in enumerate(clusters):
        steps, values = zip(*scalars[tag])
        top.plot(steps, values, color=cmap(i), lw=1.4, label=f"cluster {k:02d}, EMA")
    top.set_ylabel("training loss")
    top.set_title(f"{title}\nraw loss jumps with the drawn timesteps; a cluster's EMA still moves with the drawn images and noise",
                  fontsize=10)
    top.legend(fontsize=7, title="cluster 00 = lowest timesteps\n(least noise)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    if "loss/normalized" in scalars:
        steps, values = zip(*scalars["loss/normalized"])
        bottom.plot(steps, values, color="C3", lw=1.6, label="loss/normalized:\nmean over clusters of\nEMA / mean of its first losses")
        bottom.axhline(1.0, color="0.7", lw=0.8, ls="--", label="1 = each cluster's first losses\n(its EMA starts at the first\nloss, not at their mean,\nso the curve starts near 1)")
        bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    bottom.set_ylabel("loss/normalized")
    bottom.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def add_parser(sub) -> None:
    p = sub.add_parser("plot", help="per-cluster loss plots (PNG) from runs' TensorBoard logs",
                       description="Draw one PNG per run found in LOGDIR or up to two folder levels below it.")
    p.add_argument("logdir", help="a kohya --logging_dir, a OneTrainer workspace or workspace/tensorboard folder, or one run's folder")
    where = p.add_mutually_exclusive_group()
    where.add_argument("-o", "--out", default="loli-plots", help="folder for the PNGs, one per run (default: loli-plots in the current folder)")
    where.add_argument("--next-to-runs", action="store_true", help="write loli_clusters.png into each run's own folder instead")
    p.set_defaults(func=run)


def run(args) -> int:
    require("tensorboard", "matplotlib", extra="plot")
    logdir = Path(args.logdir).expanduser()
    if not logdir.is_dir():
        raise LoliConfigError(f"{logdir}: no such folder")
    out_dir = Path(args.out)
    if not args.next_to_runs and out_dir.exists() and not out_dir.is_dir():
        raise LoliConfigError(f"--out {out_dir} is a file; give a folder for the PNGs")
    runs = find_runs(logdir)
    if not runs:
        raise LoliConfigError(f"{logdir}: no TensorBoard event files in it or up to {DEPTH} folder levels below; "
                              "give a kohya --logging_dir, a OneTrainer workspace/tensorboard folder or one run's folder")
    scalars = {run_dir: read_scalars(run_dir) for run_dir in runs}
    drawable = [r for r in runs if has_loss(scalars[r])]
    if not drawable:
        raise LoliConfigError(f"{logdir}: {len(runs)} run(s) found, none with loss scalars ({', '.join(RAW_TAGS)} or loss/cluster_XX)")
    for run_dir in runs:
        if run_dir not in drawable:
            print(f"{run_dir}: skipped, no loss scalars")
            continue
        name = run_name(run_dir, logdir)
        if args.next_to_runs:
            out = run_dir / "loli_clusters.png"
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            out = out_dir / f"{name}.png"
        plot_run(scalars[run_dir], out, name)
        print(f"{run_dir}: {out}")
    return 0
