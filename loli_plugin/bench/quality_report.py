"""Tables, the default rule's verdict and the plot of ``bench quality``, from its JSONL rows.

A *cell* is one (objective, lr, batch, horizon). Within a cell every variant has one value per seed,
and a seed is a paired comparison (same initial LoRA, images and noise as AdamW's run of that seed),
so each variant is reported as its mean over seeds +- their standard deviation and as the per-seed
*paired* change against AdamW: its mean and its [min, max] over seeds (relative for the losses and
the Fréchet distance, in percentage points for the share of 9s).

The rule that picks the default (see RULE) is evaluated here, cell by cell, on the Fréchet distance
of the samples; the loss metrics are shown beside it.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from .metrics import BANDS, FEATURE_NOTE

REFERENCE = "AdamW"
# key: (label, lower is better, change is relative (else absolute, in percentage points))
METRICS = {
    "fd": ("FD", True, True),
    "share9": ("share 9", False, False),
    "mean": ("mean MSE", True, True),
    "geomean": ("geo-mean MSE", True, True),
}
RULE_METRIC = "fd"
# % within which the plot's y axis is linear (logarithmic beyond): the FD moves by tens of %, the losses by a few
LINEAR = {"fd": 100, "share9": 100, "mean": 10, "geomean": 10}
TICKS = (-100, -75, -50, -25, -10, -5, -2, 0, 2, 5, 10, 25, 50, 75, 100, 200, 500, 1000)
RULE_GAIN = -0.03  # at least 3 % lower FD in the small-batch cells
RULE_SMALL_BATCH = 2
RULE = (
    f"**The rule.** A configuration may be the default only if, on the samples' Fréchet distance (FD), "
    f"(1) it is not worse than AdamW beyond the seed spread in any cell, where *worse beyond the seed spread* means "
    f"that its best seed is worse than AdamW's worst seed in that cell (the seed ranges do not overlap), and "
    f"(2) in every cell with batch <= {RULE_SMALL_BATCH} its paired change against AdamW, averaged over seeds, is at "
    f"least {-100 * RULE_GAIN:.0f} % lower FD. The share of samples classified as 9 and the held-out losses are "
    f"shown beside it, with the same *worse beyond the seed spread* count."
)


def cells(rows: list[dict]) -> dict:
    """{(objective, lr, batch, horizon): {variant: {seed: metrics}}}."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        for horizon, metrics in row["horizons"].items():
            out[row["objective"], float(row["lr"]), row["batch"], int(horizon)][row["variant"]][row["seed"]] = metrics
    return out


def compare(variant: dict, reference: dict, metric: str) -> dict | None:
    """Mean, spread and paired change of ``metric`` for one variant against the reference in one cell;
    None without a seed both have."""
    seeds = sorted(set(variant) & set(reference))
    if not seeds:
        return None
    _, lower_better, relative = METRICS[metric]
    v = [variant[s][metric] for s in seeds]
    r = [reference[s][metric] for s in seeds]
    changes = [(a / b - 1) if relative else (a - b) for a, b in zip(v, r)]
    worse = min(v) > max(r) if lower_better else max(v) < min(r)
    return {
        "n": len(seeds),
        "mean": statistics.fmean(v),
        "sd": statistics.stdev(v) if len(v) > 1 else 0.0,
        "change": statistics.fmean(changes),
        "change_min": min(changes),
        "change_max": max(changes),
        "worse": worse,
    }


def verdict(table: dict, variants: list[str]) -> list[dict]:
    """Per variant: how it fares under the rule, over every cell where it and AdamW both have runs;
    sorted with the configurations closest to passing first."""
    result = []
    for name in variants:
        if name == REFERENCE:
            continue
        per_metric = {m: [] for m in METRICS}
        small = []
        for cell, by_variant in sorted(table.items()):
            for m in METRICS:
                c = compare(by_variant.get(name, {}), by_variant.get(REFERENCE, {}), m)
                if c is not None:
                    per_metric[m].append((cell, c))
                    if m == RULE_METRIC and cell[2] <= RULE_SMALL_BATCH:
                        small.append((cell, c))
        fd = per_metric[RULE_METRIC]
        worse = [cell for cell, c in fd if c["worse"]]
        missed = [cell for cell, c in small if c["change"] > RULE_GAIN]
        result.append(
            {
                "variant": name,
                "cells": len(fd),
                "small_cells": len(small),
                "worse": worse,
                "missed_gain": missed,
                "passes": bool(fd) and not worse and not missed,
                "metrics": {
                    m: {
                        "worse": sum(c["worse"] for _, c in cs),
                        "median": statistics.median(c["change"] for _, c in cs) if cs else math.nan,
                        "min": min((c["change"] for _, c in cs), default=math.nan),
                        "max": max((c["change"] for _, c in cs), default=math.nan),
                    }
                    for m, cs in per_metric.items()
                },
            }
        )
    result.sort(key=lambda v: (len(v["worse"]) + len(v["missed_gain"]), v["metrics"][RULE_METRIC]["median"]))
    return result


def _pct(x: float, relative: bool = True) -> str:
    return f"{100 * x:+.1f} %" if relative else f"{100 * x:+.1f} pp"


def _cell_name(cell) -> str:
    objective, lr, batch, horizon = cell
    return f"{objective} lr {lr:g} b{batch} {horizon} steps"


def verdict_lines(table: dict, variants: list[str]) -> list[str]:
    rows = verdict(table, variants)
    lines = [
        RULE,
        "",
        "| variant | passes | FD: cells worse beyond spread | FD: small-batch cells >= 3 % better | FD change, median "
        "[min, max] over cells | share 9: cells worse | mean MSE: cells worse, median change | geo-mean MSE: cells "
        "worse, median change |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in rows:
        m = v["metrics"]
        lines.append(
            f"| {v['variant']} | {'**yes**' if v['passes'] else 'no'} | {len(v['worse'])} of {v['cells']} | "
            f"{v['small_cells'] - len(v['missed_gain'])} of {v['small_cells']} | {_pct(m['fd']['median'])} "
            f"[{_pct(m['fd']['min'])}, {_pct(m['fd']['max'])}] | {m['share9']['worse']} | "
            f"{m['mean']['worse']}, {_pct(m['mean']['median'])} | "
            f"{m['geomean']['worse']}, {_pct(m['geomean']['median'])} |"
        )
    passing = [v["variant"] for v in rows if v["passes"]]
    lines.append("")
    if passing:
        lines.append(f"**Verdict:** passes the rule: {', '.join(passing)}.")
    elif rows:
        best = rows[0]
        lines.append(
            f"**Verdict:** no configuration passes the rule. Closest (fewest failed conditions): {best['variant']}, "
            f"worse beyond the seed spread in {len(best['worse'])} cell(s)"
            + (f" ({'; '.join(_cell_name(c) for c in best['worse'])})" if best["worse"] else "")
            + f", and short of -3 % in {len(best['missed_gain'])} of {best['small_cells']} small-batch cell(s)."
        )
    return lines


def overview_lines(table: dict, variants: list[str], objective: str, metric: str) -> list[str]:
    """One row per variant, one column per cell: the paired change against AdamW (mean over seeds);
    a trailing '!' marks a cell where it is worse beyond the seed spread."""
    label, _, relative = METRICS[metric]
    keys = sorted(k for k in table if k[0] == objective)
    head = " | ".join(f"lr {lr:g} b{b} {h}" for _, lr, b, h in keys)
    lines = [f"| {label} vs AdamW | {head} |", "|---" * (len(keys) + 1) + "|"]
    for name in variants:
        if name == REFERENCE:
            continue
        cells_ = []
        for key in keys:
            c = compare(table[key].get(name, {}), table[key].get(REFERENCE, {}), metric)
            cells_.append(
                "–" if c is None else _pct(c["change"], relative).replace(" ", "") + ("!" if c["worse"] else "")
            )
        lines.append(f"| {name} | {' | '.join(cells_)} |")
    return lines


def _fmt(metric: str, x: float) -> str:
    return f"{x:.2f}" if metric in ("fd", "share9") else f"{x:.4f}"


def cell_lines(table: dict, key, variants: list[str], seeds: int) -> list[str]:
    by_variant = table[key]
    reference = by_variant.get(REFERENCE, {})
    head = " | ".join(f"{METRICS[m][0]} | vs AdamW" for m in METRICS)
    lines = [f"### {_cell_name(key)}", "", f"| variant | seeds | {head} |", "|---|---|" + "---|---|" * len(METRICS)]
    for name in variants:
        if name not in by_variant:
            continue
        parts = []
        for m in METRICS:
            c = compare(by_variant[name], reference, m)
            if c is None:
                parts.append("– | –")
                continue
            change = (
                "–"
                if name == REFERENCE
                else (
                    f"{_pct(c['change'], METRICS[m][2])} [{_pct(c['change_min'], METRICS[m][2])}, "
                    f"{_pct(c['change_max'], METRICS[m][2])}]" + (" **worse**" if c["worse"] else "")
                )
            )
            parts.append(f"{_fmt(m, c['mean'])} ± {_fmt(m, c['sd'])} | {change}")
        n = len(by_variant[name])
        lines.append(f"| {name} | {n}{'' if n == seeds else ' (incomplete)'} | {' | '.join(parts)} |")
    return lines + [""]


def band_lines(table: dict, key, variants: list[str]) -> list[str]:
    """AdamW's held-out MSE per noise band, and every variant's paired change per band."""
    by_variant = table[key]
    reference = by_variant.get(REFERENCE, {})
    lines = [
        f"### {_cell_name(key)}",
        "",
        "| variant | " + " | ".join(f"band {i}" for i in range(BANDS)) + " |",
        "|---|" + "---|" * BANDS,
    ]
    for name in variants:
        seeds = sorted(set(by_variant.get(name, {})) & set(reference))
        if not seeds:
            continue
        cells_ = []
        for i in range(BANDS):
            if name == REFERENCE:
                cells_.append(f"{statistics.fmean(reference[s]['bands'][i] for s in seeds):.4f}")
            else:
                cells_.append(
                    _pct(
                        statistics.fmean(by_variant[name][s]["bands"][i] / reference[s]["bands"][i] - 1 for s in seeds)
                    )
                )
        lines.append(f"| {name} | {' | '.join(cells_)} |")
    return lines + [""]


def reference_lines(references: dict) -> list[str]:
    lines = ["| objective | images | FD | share 9 | mean MSE | geo-mean MSE |", "|---|---|---|---|---|---|"]
    for objective, refs in references.items():
        for what, r in refs.items():
            losses = f"{r['mean']:.4f} | {r['geomean']:.4f}" if "mean" in r else "– | –"
            lines.append(f"| {objective} | {what} | {r['fd']:.2f} | {r['share9']:.2f} | {losses} |")
    return lines


def write(rows: list[dict], settings: dict, references: dict, out: Path, command: str, machine: str) -> list[Path]:
    """Write quality.md, quality-bands.md and quality.png into ``out``; returns their paths."""
    from .classifier import accuracy

    table = cells(rows)
    variants = [v for v in settings["variants"] if any(v in by_variant for by_variant in table.values())]
    seeds = len(settings["seeds"])
    planned = (
        len(settings["objectives"]) * len(settings["lr"]) * len(settings["batch"]) * seeds * len(settings["variants"])
    )
    run_hours = sum(r["seconds"] for r in rows) / 3600
    run_time = f"{run_hours:.1f} h" if run_hours >= 1 else f"{60 * run_hours:.1f} min"
    head = [
        "# loli-plugin quality benchmark",
        "",
        f"machine: {machine}",
        "",
        f"command: `{command}`",
        "",
        f"{len(rows)} of {planned} runs"
        + ("" if len(rows) >= planned else " (**incomplete**: cells with fewer seeds say so)")
        + f"; {run_time} of one CPU thread in total (sum over runs)."
        + (
            f" The LR is constant, so the results at {', '.join(map(str, settings['horizons'][:-1]))} steps "
            f"are checkpoints of the {settings['horizons'][-1]}-step runs, identical to separate runs of that length."
            if len(settings["horizons"]) > 1
            else ""
        ),
        "",
        "A rank-8 LoRA on digit 9 of a tiny UNet pre-trained on scikit-learn's digits 0-8. Metrics (held-out digit-9 "
        "images, fixed randomness): **FD**, the Fréchet distance between "
        f"{settings['samples']} samples generated from fixed noise ({settings['sample_steps']} steps: "
        "DDIM for eps, Euler for flow) and the real held-out 9s, on a digits classifier's features "
        f"({FEATURE_NOTE}; test accuracy {accuracy():.3f}); **share 9**, the share of those samples "
        "the classifier labels 9; **mean MSE** and **geo-mean MSE**, the arithmetic and geometric mean of the "
        f"held-out MSE over {BANDS} noise bands with fixed noise. Lower is better except for share 9.",
        "",
        "Each cell: mean over seeds ± standard deviation; *vs AdamW* = the per-seed paired change against AdamW (same "
        "initial LoRA, images and noise), mean [min, max] over seeds; **worse** / `!` = worse beyond the seed spread "
        "(its best seed worse than AdamW's worst).",
        "",
        "## References",
        "",
        *reference_lines(references),
        "",
        "## The default rule",
        "",
        *verdict_lines(table, variants),
        "",
    ]
    body = []
    for objective in settings["objectives"]:
        body += [f"## {objective}: overview", ""]
        for metric in METRICS:
            body += overview_lines(table, variants, objective, metric) + [""]
        body += [f"## {objective}: every cell", ""]
        for key in sorted(k for k in table if k[0] == objective):
            body += cell_lines(table, key, variants, seeds)
    bands = [
        "# Held-out MSE per noise band",
        "",
        f"command: `{command}`",
        "",
        f"Band 0 is the lowest noise, band {BANDS - 1} the highest. AdamW's row: its held-out MSE (mean over seeds); "
        "other rows: the paired change against AdamW per band (mean over seeds).",
        "",
    ]
    for key in sorted(table):
        bands += band_lines(table, key, variants)
    paths = [out / "quality.md", out / "quality-bands.md", out / "quality.png", out / "quality-loss.png"]
    paths[0].write_text("\n".join(head + body))
    paths[1].write_text("\n".join(bands))
    plot(table, settings, variants, paths[2], [RULE_METRIC])
    plot(table, settings, variants, paths[3], ["mean", "geomean"])
    return paths


def plot(table: dict, settings: dict, variants: list[str], path: Path, metrics: list[str]) -> None:
    """One panel per objective and metric, stacked: each variant's paired change against AdamW per cell
    (mean over seeds), with bars from the worst to the best seed. The y axis is linear within the
    metric's LINEAR % and logarithmic beyond, so a diverging variant (+200 %) does not flatten the rest."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(m, o) for m in metrics for o in settings["objectives"]]
    others = [v for v in variants if v != REFERENCE]
    fig, axes = plt.subplots(len(panels), 1, figsize=(16, 4.2 * len(panels)), squeeze=False)
    for ax, (metric, objective) in zip(axes[:, 0], panels):
        keys = sorted(k for k in table if k[0] == objective)
        width = 0.8 / max(1, len(others))
        for i, name in enumerate(others):
            xs, ys, lo, hi = [], [], [], []
            for j, key in enumerate(keys):
                c = compare(table[key].get(name, {}), table[key].get(REFERENCE, {}), metric)
                if c is not None:
                    xs.append(j + i * width)
                    ys.append(100 * c["change"])
                    lo.append(100 * (c["change"] - c["change_min"]))
                    hi.append(100 * (c["change_max"] - c["change"]))
            ax.bar(xs, ys, width, yerr=[lo, hi], label=name, error_kw={"elinewidth": 0.6, "capsize": 1})
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_yscale("symlog", linthresh=LINEAR[metric], linscale=2)
        low, high = ax.get_ylim()
        ticks = [t for t in TICKS if low <= t <= high and (t == 0 or abs(t) >= LINEAR[metric] / 8)]
        ax.set_yticks(ticks, [f"{t:+g}" if t else "0" for t in ticks], fontsize=7)
        ax.grid(axis="y", color="0.9", lw=0.6)
        ax.set_xticks(
            [j + 0.4 - width / 2 for j in range(len(keys))],
            [f"lr {lr:g}, b{b}\n{h} steps" for _, lr, b, h in keys],
            fontsize=7,
        )
        ax.set_ylabel(
            f"{METRICS[metric][0]} vs AdamW (%)\nlower is better; log beyond +-{LINEAR[metric]} %", fontsize=8
        )
        ax.set_title(
            f"{objective}: {METRICS[metric][0]}, paired change vs AdamW, mean over seeds (bars: worst to best seed)",
            fontsize=9,
        )
        if others:
            ax.legend(fontsize=6, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
