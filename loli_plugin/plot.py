"""``loli-plugin plot LOGDIR``: the per-cluster picture of kohya or OneTrainer runs, from their
TensorBoard event files.

Which runs: a run is a folder holding ``events.out.tfevents*`` files, in LOGDIR itself or at most two
folder levels below it, the depth of the trainers' own layouts: kohya writes
``--logging_dir/<prefix><time>/network_train/``, OneTrainer ``workspace/tensorboard/<prefix><time>/``
(so LOGDIR may be the logging dir, a OneTrainer workspace or its tensorboard folder, or one run).
Deeper folders are not searched, and runs without loss scalars are skipped.

Where the PNGs go: one per run, into one output folder (``--out``, default ``loli-plots`` in the
current folder), named after the run's path below LOGDIR; next to each run only with
``--next-to-runs``. ``--out NAME.png`` writes that one file when LOGDIR holds one run (and refuses
with the count when it holds several).

Top panel: the raw step loss (what the trainer's loss curve shows) with the per-cluster loss EMAs
over it. Middle panel, when the run logged a progress probe (``loli_plugin.probe``): the probe per
cluster, the loss on fixed samples with fixed noise at each cluster's midpoint timestep. Bottom
panel: ``loss/normalized`` (mean over clusters of each cluster's EMA / the mean of its first losses)
and ``probe/normalized`` (mean over clusters of probe / first probe). The raw curve jumps with the
timesteps each step drew; the per-cluster EMAs remove that but still move with the samples and
noise each step drew; the probe curves move only with the weights. Needs
``pip install loli-plugin[plot]`` (tensorboard, matplotlib).
"""

from __future__ import annotations

import re
from pathlib import Path

from .cli_args import require
from .errors import LoliConfigError

RAW_TAGS = ("loss/current", "loss/train_step", "loss")  # kohya train_network, OneTrainer, kohya fine_tune
CLUSTER_TAG = re.compile(r"^loss/cluster_(\d+)$")
PROBE_PREFIX = "probe"  # loli_plugin.probe.ProgressProbe's tags
PROBE_TAG = re.compile(rf"^{PROBE_PREFIX}/cluster_(\d+)$")
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


def cluster_tags(scalars: dict, pattern: re.Pattern) -> list[tuple[int, str]]:
    return sorted((int(m.group(1)), t) for t in scalars if (m := pattern.match(t)))


def plot_run(scalars: dict, out: Path, title: str) -> Path:
    """Training loss (raw and per-cluster EMA) on top; the progress probe per cluster under it when
    the run logged one; both normalized views at the bottom. Cluster k has one colour throughout."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not has_loss(scalars):
        raise LoliConfigError(f"{title}: no loss scalars (expected {', '.join(RAW_TAGS)} or loss/cluster_XX)")
    raw_tag = next((t for t in RAW_TAGS if t in scalars), None)
    clusters, probes = cluster_tags(scalars, CLUSTER_TAG), cluster_tags(scalars, PROBE_TAG)
    colour = plt.get_cmap("viridis", max(len(clusters), len(probes), 1))
    rows = [3, 3, 2] if probes else [3, 2]
    fig, axes = plt.subplots(
        len(rows), 1, figsize=(12, 3 * len(rows) + 1.5), sharex=True, gridspec_kw={"height_ratios": rows}
    )
    top, bottom = axes[0], axes[-1]
    fig.suptitle(title, fontsize=12)

    if raw_tag:
        top.plot(*zip(*scalars[raw_tag]), color="0.6", lw=0.8, label=f"raw training loss\nof each step ({raw_tag})")
    for k, tag in clusters:
        top.plot(*zip(*scalars[tag]), color=colour(k), lw=1.4, label=f"cluster {k:02d}, EMA")
    top.set_ylabel("training loss")
    top.set_title(
        "training loss: the raw loss jumps with the drawn timesteps; a cluster's EMA still moves with "
        "the drawn samples and noise",
        fontsize=9,
    )
    _legend_right(top, "cluster 00 = lowest timesteps\n(least noise)")

    if probes:
        middle = axes[1]
        for k, tag in probes:
            middle.plot(*zip(*scalars[tag]), color=colour(k), lw=1.6, marker=".", ms=3, label=f"cluster {k:02d}")
        middle.set_ylabel("probe loss")
        middle.set_title(
            "progress probe (probe/cluster_KK): the same loss on fixed samples with fixed noise at each "
            "cluster's midpoint timestep: only the weights change",
            fontsize=9,
        )
        _legend_right(middle, "probe at the midpoint\nof cluster")

    if "loss/normalized" in scalars:
        bottom.plot(
            *zip(*scalars["loss/normalized"]),
            color="C3",
            lw=1.2,
            label=(
                "loss/normalized: mean over\nclusters of EMA / mean of\nits first training losses\n"
                "(starts near 1: an EMA\nstarts at the first loss)"
            ),
        )
    if f"{PROBE_PREFIX}/normalized" in scalars:
        bottom.plot(
            *zip(*scalars[f"{PROBE_PREFIX}/normalized"]),
            color="C0",
            lw=1.8,
            marker=".",
            ms=3,
            label="probe/normalized: mean over\nclusters of probe / first probe\n(1 at the first probe)",
        )
    bottom.axhline(1.0, color="0.7", lw=0.8, ls="--")
    bottom.set_ylabel("relative to start")
    bottom.set_title("each cluster relative to its own start, averaged over clusters (below 1 = progress)", fontsize=9)
    if bottom.get_legend_handles_labels()[0]:
        _legend_right(bottom)
    bottom.set_xlabel("optimizer step")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _legend_right(axes, title: str | None = None) -> None:
    """A small legend outside the plot, to its right (the lines stay visible)."""
    axes.legend(fontsize=7, title=title, title_fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))


def add_parser(sub) -> None:
    p = sub.add_parser(
        "plot",
        help="per-cluster loss plots (PNG) from runs' TensorBoard logs",
        description="Draw one PNG per run found in LOGDIR or up to two folder levels below it.",
    )
    p.add_argument(
        "logdir",
        help="a trainer's TensorBoard folder (its --logging_dir, or its workspace or workspace/tensorboard), "
        "or one run's folder",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "-o",
        "--out",
        default="loli-plots",
        help="folder for the PNGs, one per run (default: loli-plots in the current folder); a name ending in .png: "
        "that file, for a LOGDIR with one run",
    )
    where.add_argument(
        "--next-to-runs", action="store_true", help="write loli_clusters.png into each run's own folder instead"
    )
    p.set_defaults(func=run)


def run(args) -> int:
    require("tensorboard", "matplotlib", extra="plot")
    logdir = Path(args.logdir).expanduser()
    if not logdir.is_dir():
        raise LoliConfigError(f"{logdir}: no such folder")
    out_dir = Path(args.out)
    one_file = not args.next_to_runs and out_dir.suffix.lower() == ".png"  # --out x.png: that file, one run
    if not args.next_to_runs and not one_file and out_dir.exists() and not out_dir.is_dir():
        raise LoliConfigError(f"--out {out_dir} is a file; give a folder for the PNGs")
    if one_file and out_dir.is_dir():
        raise LoliConfigError(f"--out {out_dir} is a folder; name a .png file or give a folder without .png")
    runs = find_runs(logdir)
    if not runs:
        raise LoliConfigError(
            f"{logdir}: no TensorBoard event files in it or up to {DEPTH} folder levels below; "
            "give the trainer's --logging_dir or workspace/tensorboard folder, or one run's folder"
        )
    scalars = {run_dir: read_scalars(run_dir) for run_dir in runs}
    drawable = [r for r in runs if has_loss(scalars[r])]
    if not drawable:
        raise LoliConfigError(
            f"{logdir}: {len(runs)} run(s) found, none with loss scalars ({', '.join(RAW_TAGS)} or loss/cluster_XX)"
        )
    if one_file and len(drawable) > 1:
        raise LoliConfigError(
            f"--out {out_dir} names one PNG, but {logdir} holds {len(drawable)} runs with loss scalars; give a folder "
            "(one PNG per run) or one run's folder as LOGDIR"
        )
    for run_dir in runs:
        if run_dir not in drawable:
            print(f"{run_dir}: skipped, no loss scalars")
            continue
        name = run_name(run_dir, logdir)
        if one_file:
            out_dir.parent.mkdir(parents=True, exist_ok=True)
            out = out_dir
        elif args.next_to_runs:
            out = run_dir / "loli_clusters.png"
        else:
            out_dir.mkdir(parents=True, exist_ok=True)
            out = out_dir / f"{name}.png"
        plot_run(scalars[run_dir], out, name)
        print(f"{run_dir}: {out}")
    return 0
