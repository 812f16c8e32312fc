"""``loli-plugin compare RUN_A RUN_B [...]``: runs of the same setup side by side, per noise level.

Each RUN is a folder with a run's TensorBoard event files, in it or up to two levels below (a kohya
``--logging_dir``, a OneTrainer workspace or its ``tensorboard`` folder, a musubi-tuner
``--logging_dir``, or one run's own folder), that logged the plugin's validation (``val/cluster_KK``,
``loli_plugin.validation``). The first RUN is the baseline.

It draws one PNG: a small multiple per cluster (its noise range, in the trainer's own timestep units,
in the title), the runs overlaid; the validation curve solid, the progress probe (training samples)
dashed where the run logged one; then the mean over clusters and ``val/normalized``. It prints a table:
each cluster's final and best validation loss per run, and each run's relative difference to the
baseline.

Runs are comparable only when their validation measured the same thing: the same held-out set, the
same K and the same timesteps (the run's own distribution, shifts included). Each run logs a record of
these (TensorBoard text ``loli/validation``); ``compare`` refuses runs whose records differ, with the
reason in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .cli_args import require
from .errors import LoliConfigError
from .plot import DEPTH, find_runs, read_scalars

# loli_plugin.validation's names, repeated so that the command line does not import torch to start
PREFIX, RECORD_TAG = "val", "loli/validation"

VAL_TAG = re.compile(rf"^{PREFIX}/cluster_(\d+)$")
PROBE_TAG = re.compile(r"^probe/cluster_(\d+)$")
#: relative tolerance on the recorded timesteps (JSON floats written by the same code: equal in practice)
TIMESTEP_RTOL = 1e-6


class Run:
    """One run's validation (and probe) curves and its comparability record."""

    def __init__(self, label: str, folder: Path, scalars: dict, record: dict):
        self.label, self.folder, self.scalars, self.record = label, folder, scalars, record
        self.clusters = int(record["clusters"])

    def curve(self, tag: str) -> list[tuple[int, float]]:
        return self.scalars.get(tag, [])

    def val(self, k: int) -> list[tuple[int, float]]:
        return self.curve(f"{PREFIX}/cluster_{k:02d}")

    def probe(self, k: int) -> list[tuple[int, float]]:
        return self.curve(f"probe/cluster_{k:02d}")


def read_record(folder: Path) -> dict | None:
    """The last ``loli/validation`` text record in a run's event files (None if it has none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    ea = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 1})
    ea.Reload()
    tags = [t for t in ea.Tags().get("tensors", []) if t == RECORD_TAG or t.startswith(RECORD_TAG + "/")]
    for tag in tags:
        events = ea.Tensors(tag)
        if events:
            value = tensor_util.make_ndarray(events[-1].tensor_proto).reshape(-1)[0]
            return json.loads(value.decode() if isinstance(value, bytes) else str(value))
    return None


def load_run(path: Path, label: str) -> Run:
    if not path.is_dir():
        raise LoliConfigError(f"{path}: no such folder")
    found = find_runs(path)
    if not found:
        raise LoliConfigError(f"{path}: no TensorBoard event files in it or up to {DEPTH} folder levels below")
    with_val = []
    for folder in found:
        scalars = read_scalars(folder)
        if any(VAL_TAG.match(t) for t in scalars):
            with_val.append((folder, scalars))
    if not with_val:
        raise LoliConfigError(
            f"{path}: no {PREFIX}/cluster_KK scalars: the run did not log loli-plugin's validation (a held-out set "
            "and the validation turned on; each trainer's page in docs/ says how)"
        )
    if len(with_val) > 1:
        names = ", ".join(str(f.relative_to(path)) for f, _ in with_val)
        raise LoliConfigError(f"{path} holds {len(with_val)} runs with validation ({names}); give one of their folders")
    folder, scalars = with_val[0]
    record = read_record(folder)
    if record is None:
        raise LoliConfigError(
            f"{folder}: no {RECORD_TAG} record (logged by loli-plugin's validation since it records what makes runs "
            "comparable); rerun with this loli-plugin"
        )
    return Run(label, folder, scalars, record)


def _same_timesteps(a: list, b: list) -> bool:
    return all(abs(x - y) <= TIMESTEP_RTOL * max(abs(x), abs(y), 1.0) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def incomparable(base: Run, other: Run) -> str | None:
    """Why two runs' validation curves cannot be compared (one line), or None."""
    a, b = base.record, other.record
    if a["clusters"] != b["clusters"]:
        return f"{other.label} has K={b['clusters']} clusters, {base.label} K={a['clusters']}"
    if a["validation_set"] != b["validation_set"]:
        return (
            f"{other.label} was validated on another held-out set than {base.label} "
            f"({b['validation_set']}, {b['samples']} samples vs {a['validation_set']}, {a['samples']} samples)"
        )
    ta, tb = a.get("timesteps"), b.get("timesteps")
    if (ta is None) != (tb is None) or (ta is not None and not _same_timesteps(ta, tb)):
        where = next(
            (k for k, (x, y) in enumerate(zip(ta or [], tb or [])) if not _same_timesteps([x], [y])),
            None,
        )
        detail = (
            f"cluster {where:02d}: {_range(ta[where])} vs {_range(tb[where])}"
            if where is not None
            else "one run has no recorded timesteps"
        )
        return (
            f"{other.label} draws other timesteps than {base.label} ({detail}; "
            f"distribution {b.get('distribution') or '?'!r} vs {a.get('distribution') or '?'!r})"
        )
    return None


def _number(value: float) -> str:
    return str(int(round(value))) if abs(value - round(value)) < 1e-6 else f"{value:.4g}"


def _range(row) -> str:
    low, mid, high = row
    return f"t {_number(low)}-{_number(high)} (mid {_number(mid)})"


def _relative(value: float, base: float) -> str:
    if not base:
        return "n/a"
    change = round((value - base) / base * 100, 1)
    return f"{change + 0.0:+.1f}%"  # + 0.0: no "-0.0%"


def table(runs: list[Run]) -> str:
    """Each cluster's final and best validation loss per run; every run after the first also as its
    relative difference to the first."""
    base, clusters = runs[0], runs[0].clusters
    timesteps = base.record.get("timesteps")
    header = ["cluster", "timesteps"]
    for i, run in enumerate(runs):
        header += (
            [f"{run.label} final", f"{run.label} best"]
            if i == 0
            else [
                f"{run.label} final",
                "Δ final",
                f"{run.label} best",
                "Δ best",
            ]
        )
    rows = []
    tags = [
        (f"{k:02d}", f"{PREFIX}/cluster_{k:02d}", _range(timesteps[k]) if timesteps else "") for k in range(clusters)
    ]
    tags.append(("mean", f"{PREFIX}/mean", ""))
    for name, tag, where in tags:
        row = [name, where]
        base_curve = base.curve(tag)
        base_final, base_best = base_curve[-1][1], min(v for _, v in base_curve)
        for i, run in enumerate(runs):
            curve = run.curve(tag)
            final, best = curve[-1][1], min(v for _, v in curve)
            if i == 0:
                row += [f"{final:.5g}", f"{best:.5g}"]
            else:
                row += [f"{final:.5g}", _relative(final, base_final), f"{best:.5g}", _relative(best, base_best)]
        rows.append(row)
    widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(r, widths)))
        for r in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def draw(runs: list[Run], out: Path) -> Path:
    """One PNG: a panel per cluster (runs overlaid, validation solid, probe dashed), then the mean and
    val/normalized."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clusters = runs[0].clusters
    timesteps = runs[0].record.get("timesteps")
    panels = clusters + 2
    cols = min(panels, 4)
    rows = -(-panels // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows + 0.8), squeeze=False)
    axes = axes.reshape(-1)
    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(runs))]
    for k in range(panels):
        ax = axes[k]
        if k < clusters:
            title = f"cluster {k:02d}" + (f" · {_range(timesteps[k])}" if timesteps else "")
            curves = [(run.val(k), run.probe(k)) for run in runs]
        elif k == clusters:
            title = "mean over clusters"
            curves = [(run.curve(f"{PREFIX}/mean"), run.curve("probe/mean")) for run in runs]
        else:
            title = "normalized (each cluster / its first pass)"
            curves = [(run.curve(f"{PREFIX}/normalized"), run.curve("probe/normalized")) for run in runs]
            ax.axhline(1.0, color="0.7", lw=0.8, ls="--")
        for run, colour, (val, probe) in zip(runs, colours, curves):
            if val:
                ax.plot(*zip(*val), color=colour, lw=1.6, marker=".", ms=4, label=f"{run.label}: validation")
            if probe:
                ax.plot(*zip(*probe), color=colour, lw=1.0, ls="--", alpha=0.7, label=f"{run.label}: probe")
        ax.set_title(title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.ticklabel_format(axis="y", useOffset=False)
    for ax in axes[panels:]:
        ax.axis("off")
    handles, labels = axes[0].get_legend_handles_labels()
    height = fig.get_figheight()  # inches: the legend and the title take a fixed strip above the panels
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=min(len(labels), 4),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(
        "validation (held-out samples, solid) and progress probe (training samples, dashed) per cluster; "
        "x: optimizer step",
        fontsize=9,
        y=1 - 0.38 / height,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / height))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def labels_for(paths: list[Path]) -> list[str]:
    """Short names: each path's last part, with parent parts added until they differ."""
    parts = [p.resolve().parts for p in paths]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compare",
        help="validation per cluster of two or more runs side by side (PNG and table)",
        description="Compare the per-cluster validation of runs of the same setup (the first is the baseline).",
    )
    p.add_argument(
        "runs",
        nargs="+",
        metavar="RUN",
        help="a trainer's TensorBoard folder (its --logging_dir, or its workspace or workspace/tensorboard), "
        "or one run's folder",
    )
    p.add_argument("-o", "--out", default="loli-compare.png", help="the PNG to write (default: loli-compare.png)")
    p.add_argument("--names", nargs="+", metavar="NAME", help="a short name per run for the plot and the table")
    p.set_defaults(func=run)


def run(args) -> int:
    if len(args.runs) < 2:
        raise LoliConfigError("give at least two runs to compare")
    if args.names is not None and len(args.names) != len(args.runs):
        raise LoliConfigError(f"--names: {len(args.names)} names for {len(args.runs)} runs")
    out = Path(args.out)
    if out.is_dir() or out.suffix.lower() != ".png":
        raise LoliConfigError(f"--out {out}: give a .png file name")
    require("tensorboard", "matplotlib", extra="plot")
    paths = [Path(p).expanduser() for p in args.runs]
    runs = [load_run(p, name) for p, name in zip(paths, args.names or labels_for(paths))]
    for other in runs[1:]:
        reason = incomparable(runs[0], other)
        if reason is not None:
            raise LoliConfigError(f"runs not comparable: {reason}")
    for run in runs:
        steps = [s for s, _ in run.curve(f"{PREFIX}/mean")]
        print(f"{run.label}: {run.folder} ({len(steps)} validation passes, last at step {steps[-1]})")
    record = runs[0].record
    print(
        f"K={record['clusters']}, held-out set {record['validation_set']} ({record['samples']} samples), "
        f"timesteps: {record.get('distribution') or 'the run’s own distribution'}"
    )
    print(table(runs))
    print(f"plot: {draw(runs, out)}")
    return 0
