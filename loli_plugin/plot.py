"""``loli-plugin plot LOGDIR``: the per-cluster picture of a kohya or OneTrainer run, from its
TensorBoard event files.

Top panel: the raw step loss (what the trainer's loss curve shows) with the per-cluster loss EMAs
over it; bottom panel: ``loss/normalized`` (mean over clusters of each cluster's EMA / the mean of its
first losses). The raw curve jumps with the timesteps each step drew; the per-cluster and
normalized curves remove that, but still move with the images and noise each step drew. Needs ``pip install loli-plugin[plot]`` (tensorboard, matplotlib).
"""

from __future__ import annotations

import re
from pathlib import Path

RAW_TAGS = ("loss/current", "loss/train_step", "loss")  # kohya train_network, OneTrainer, kohya fine_tune
CLUSTER_TAG = re.compile(r"^loss/cluster_(\d+)$")


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise SystemExit("loli-plugin plot needs tensorboard: pip install 'loli-plugin[plot]'") from exc
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def find_runs(logdir: Path) -> list[Path]:
    return sorted({p.parent for p in logdir.rglob("events.out.tfevents*")})


def plot_run(scalars: dict, out: Path, title: str) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover
        raise SystemExit("loli-plugin plot needs matplotlib: pip install 'loli-plugin[plot]'") from exc
    raw_tag = next((t for t in RAW_TAGS if t in scalars), None)
    clusters = sorted((int(m.group(1)), t) for t in scalars if (m := CLUSTER_TAG.match(t)))
    if raw_tag is None and not clusters:
        raise SystemExit(f"{title}: no loss scalars found (expected {', '.join(RAW_TAGS)} or loss/cluster_XX)")
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
    p = sub.add_parser("plot", help="per-cluster loss plot (PNG) from a run's TensorBoard logs")
    p.add_argument("logdir", help="a kohya --logging_dir or OneTrainer workspace/tensorboard folder")
    p.add_argument("-o", "--out", default=None, help="PNG path (default: LOGDIR/loli_clusters.png; one per run)")
    p.set_defaults(func=run)


def run(args) -> int:
    logdir = Path(args.logdir).expanduser()
    runs = find_runs(logdir)
    if not runs:
        print(f"{logdir}: no TensorBoard event files found")
        return 1
    for i, run_dir in enumerate(runs):
        out = Path(args.out) if args.out and len(runs) == 1 else (logdir / f"loli_clusters{'' if len(runs) == 1 else f'_{i}'}.png")
        if args.out and len(runs) > 1:
            out = Path(args.out).with_name(f"{Path(args.out).stem}_{i}.png")
        scalars = read_scalars(run_dir)
        plot_run(scalars, out, run_dir.relative_to(logdir).as_posix() if run_dir != logdir else logdir.name)
        print(f"{run_dir}: {out}")
    return 0
