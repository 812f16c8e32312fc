"""How long the missing runs of a ``bench quality`` command will take, and which of them fit a time budget.

The estimate comes from the runs already finished in the same results file: each missing run costs the
median CPU time (``cpu_seconds``, one thread) of the finished runs most like it: same backbone,
objective, batch and variant, else the same without the variant, else the same backbone and
objective, else the same backbone, else any. CPU time is what a run costs on a core of its own; on
a machine that other jobs share, wall time is longer, and the plan prints by how much it was for the
finished runs. With ``--workers N`` the wall time on idle cores is the CPU time over N.

``--max-hours`` takes the missing runs in the profile's order (phase by phase, digit by digit) in whole
cells (every variant and seed of one digit, backbone, objective, batch and lr), as many as fit, so that a
profile too long for one sitting is finished over several: each command appends its runs and the next
one skips them.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

from ..errors import LoliConfigError


def _levels(backbone: str, objective: str, batch: int, variant: str) -> list[tuple]:
    """The keys a run is matched on, most specific first."""
    return [(backbone, objective, batch, variant), (backbone, objective, batch), (backbone, objective), (backbone,), ()]


class CostModel:
    """Median CPU seconds per run, from finished rows, at each level of ``_levels``."""

    def __init__(self, rows: list[dict]):
        samples: dict[tuple, list[float]] = defaultdict(list)
        timed = [r for r in rows if "cpu_seconds" in r]
        for r in timed:
            for key in _levels(r.get("backbone", "unet"), r["objective"], r["batch"], r["variant"]):
                samples[key].append(r["cpu_seconds"])
        self.medians = {k: statistics.median(v) for k, v in samples.items()}
        self.timed = len(timed)
        self.wall = sum(r["seconds"] for r in timed)
        self.cpu = sum(r["cpu_seconds"] for r in timed)
        ratios = [r["seconds"] / r["cpu_seconds"] for r in timed if r["cpu_seconds"] > 0]
        self.ratio_range = (min(ratios), max(ratios)) if ratios else None

    def seconds(self, job: dict) -> float | None:
        """The job's estimated CPU seconds; None when no finished run has a measured CPU time."""
        for key in _levels(job["backbone_name"], job["objective_name"], job["batch"], job["variant_name"]):
            if key in self.medians:
                return self.medians[key]
        return None


def cell_of(job: dict) -> tuple:
    return (job["digit"], job["backbone_name"], job["objective_name"], float(job["lr"]), job["batch"])


def whole_cells(todo: list[dict]) -> list[list[dict]]:
    """``todo`` cut into runs of consecutive jobs of one cell (the plan keeps a cell's jobs together)."""
    groups: list[list[dict]] = []
    for job in todo:
        if groups and cell_of(groups[-1][-1]) == cell_of(job):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def within(todo: list[dict], model: CostModel, hours: float, workers: int) -> list[dict]:
    """The first whole cells of ``todo`` whose estimated wall time on ``workers`` idle cores fits ``hours``."""
    if model.timed == 0:
        raise LoliConfigError(
            "--max-hours: no finished run in the results file has a measured CPU time to estimate from; "
            "run one cell without --max-hours first (or give --reuse a results file that has some)"
        )
    budget, used, taken = hours * 3600 * workers, 0.0, []
    for cell in whole_cells(todo):
        cost = sum(model.seconds(j) for j in cell)
        if used + cost > budget:
            break
        used += cost
        taken += cell
    return taken


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.0f} min"


def bases_to_make(todo: list[dict]) -> list[tuple]:
    """(backbone, objective, digit) of the base models the missing runs need that are neither shipped nor cached."""
    from . import base

    needed = sorted({(j["backbone_name"], j["objective_name"], j["digit"]) for j in todo})
    return [n for n in needed if not base.cached(n[1], n[0], n[2]).is_file()]


def plan_lines(todo: list[dict], model: CostModel, workers: int, missing: int | None = None) -> list[str]:
    """The runs ``todo`` cell by cell in the order they run, and how long they take: the estimate and where it
    comes from. ``missing``: how many runs are missing in all, when ``todo`` is a part of them."""
    if not todo:
        return ["nothing missing"]
    if model.timed == 0:
        return [f"{len(todo)} runs to run; no finished run with a measured CPU time to estimate their cost from"]
    lines = [
        "| cell (in the order they run) | runs | CPU time (estimate) | "
        f"done after, with --workers {workers} on idle cores |",
        "|---|---|---|---|",
    ]
    total = 0.0
    for cell in whole_cells(todo):
        d, b, o, lr, batch = cell_of(cell[0])
        cost = sum(model.seconds(j) for j in cell)
        total += cost
        lines.append(
            f"| digit {d} {b} {o} lr {lr:g} batch {batch} | {len(cell)} | {_hours(cost)} | {_hours(total / workers)} |"
        )
    lines += [
        "",
        f"{len(todo)} runs"
        + ("" if missing in (None, len(todo)) else f" (of the {missing} missing)")
        + f": {_hours(total)} of CPU time, about {_hours(total / workers)} with "
        f"--workers {workers} on idle cores (each run's cost: the median CPU time of the {model.timed} finished "
        "runs most like it in the results file).",
        f"On the machine that ran those {model.timed}, their wall time was {model.wall / model.cpu:.1f} x their CPU "
        f"time ({model.ratio_range[0]:.1f} x to {model.ratio_range[1]:.1f} x per run; 1 x would be an idle core): "
        f"at that load, about {_hours(total / workers * model.wall / model.cpu)}.",
    ]
    missing = bases_to_make(todo)
    if missing:
        lines.append(
            f"Not in the estimate: {len(missing)} base model(s) to pre-train first (made once and cached): "
            + ", ".join(f"{b} {o} without {d}" for b, o, d in missing)
            + "."
        )
    return lines
