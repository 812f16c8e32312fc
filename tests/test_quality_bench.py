"""``loli-plugin bench quality``: a tiny profile end to end (tables, plot, resume), the paired seeds
and checkpoints it relies on, and the default rule's arithmetic on made-up runs."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from loli_plugin.bench import quality, quality_report  # noqa: E402
from loli_plugin.cli import main  # noqa: E402

TINY = [
    "--objectives",
    "eps",
    "--batch",
    "2",
    "--lr",
    "3e-3",
    "--seeds",
    "0",
    "1",
    "--horizons",
    "2",
    "3",
    "--samples",
    "4",
    "--sample-steps",
    "2",
    "--variants",
    "AdamW",
    "Loli CSM K=10 normalized",
]


def test_tiny_profile_writes_its_tables_and_a_restart_skips_finished_runs(tmp_path, capsys):
    assert main(["bench", "quality", "--out", str(tmp_path), *TINY]) == 0
    lines = (tmp_path / "quality.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert len(rows) == 4 and {r["variant"] for r in rows} == {"AdamW", "Loli CSM K=10 normalized"}
    assert all(set(r["horizons"]) == {"2", "3"} and len(r["horizons"]["3"]["bands"]) == 10 for r in rows)
    md = (tmp_path / "quality.md").read_text()
    for text in (
        "## The default rule",
        "**Verdict:**",
        "### eps lr 0.003 b2 2 steps",
        "### eps lr 0.003 b2 3 steps",
        "| eps | base model |",
        "| eps | real 9s |",
        "| Loli CSM K=10 normalized | 2 |",
    ):
        assert text in md
    assert "band 9" in (tmp_path / "quality-bands.md").read_text()
    assert (tmp_path / "quality.png").stat().st_size > 10_000 and (
        tmp_path / "quality-loss.png"
    ).stat().st_size > 10_000

    # interrupted after one run, mid-write: the broken line is skipped, only the missing runs run again
    (tmp_path / "quality.jsonl").write_text(lines[0] + "\n" + lines[1][:40])
    capsys.readouterr()
    assert main(["bench", "quality", "--out", str(tmp_path), *TINY]) == 0
    out = capsys.readouterr().out
    assert "1 already in" in out and "3 to run" in out and "unreadable line skipped" in out
    again = [json.loads(line) for line in (tmp_path / "quality.jsonl").read_text().splitlines()[2:]]
    assert {quality.run_key(r) for r in again} == {quality.run_key(r) for r in rows[1:]}
    # runs are deterministic: the redone runs give the same numbers
    by_key = {quality.run_key(r): r["horizons"] for r in rows}
    assert all(r["horizons"] == by_key[quality.run_key(r)] for r in again)


def test_other_evaluation_settings_do_not_reuse_rows(tmp_path, capsys):
    row = {
        "objective": "eps",
        "variant": "AdamW",
        "batch": 2,
        "lr": 3e-3,
        "seed": 0,
        "seconds": 1.0,
        "eval": quality.eval_settings([2, 3], 8, 2),
        "horizons": {},
    }
    (tmp_path / "quality.jsonl").write_text(json.dumps(row) + "\n")
    settings = dict(
        objectives=["eps"],
        variants=["AdamW"],
        batch=[2],
        lr=[3e-3],
        seeds=[0],
        horizons=[2, 3],
        samples=4,
        sample_steps=2,
    )
    assert quality.load_rows(tmp_path / "quality.jsonl", settings) == []
    assert quality.load_rows(tmp_path / "quality.jsonl", {**settings, "samples": 8}) == [row]
    # a narrower command over a shared file reports only the runs it plans
    assert quality.load_rows(tmp_path / "quality.jsonl", {**settings, "samples": 8, "batch": [1]}) == []


def test_a_checkpoint_is_the_shorter_run_and_seeds_pair_the_data():
    common = dict(objective_name="flow", batch=1, lr=3e-3, samples=3, sample_steps=2)
    long = quality.fit(variant_name="AdamW", seed=0, horizons=[2, 4], **common)
    short = quality.fit(variant_name="AdamW", seed=0, horizons=[2], **common)
    assert long["horizons"]["2"] == short["horizons"]["2"]
    other_seed = quality.fit(variant_name="AdamW", seed=1, horizons=[2], **common)
    assert other_seed["horizons"]["2"] != short["horizons"]["2"]


def test_adamw_must_be_among_the_variants_and_samples_need_a_covariance(tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["bench", "quality", "--out", str(out), "--variants", "Loli K=10"]) == 2
    assert "--variants must include AdamW" in capsys.readouterr().err
    assert main(["bench", "quality", "--out", str(out), "--samples", "1"]) == 2
    assert "at least 2 samples" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


# ---------------------------------------------------------------------------------------- the rule
def made_up(fd_by_variant: dict, batches=(1, 8)) -> list[dict]:
    """Rows with the given FD per seed (the same in every cell) and neutral other metrics."""
    rows = []
    for variant, fds in fd_by_variant.items():
        for batch in batches:
            for seed, fd in enumerate(fds):
                metrics = {"fd": fd, "share9": 0.9, "mean": 0.1, "geomean": 0.01, "bands": [0.1] * 10}
                rows.append(
                    {
                        "objective": "eps",
                        "variant": variant,
                        "batch": batch,
                        "lr": 1e-3,
                        "seed": seed,
                        "horizons": {"200": metrics},
                    }
                )
    return rows


def test_rule_passes_a_clear_gain_and_flags_a_loss_beyond_the_seed_spread():
    table = quality_report.cells(
        made_up(
            {
                "AdamW": [10.0, 11.0, 12.0],
                "better": [9.0, 10.0, 11.5],  # -6 % on average: passes
                "small gain": [9.9, 10.9, 11.8],  # -1.3 %: misses the 3 % in the batch-1 cell
                "worse": [12.5, 13.0, 14.0],  # best seed worse than AdamW's worst: worse beyond the spread
                "noisy": [9.0, 11.0, 13.0],  # overlapping ranges: not worse beyond the spread
            }
        )
    )
    result = {
        v["variant"]: v for v in quality_report.verdict(table, ["AdamW", "better", "small gain", "worse", "noisy"])
    }
    assert result["better"]["passes"] and not result["better"]["worse"]
    assert not result["small gain"]["passes"] and len(result["small gain"]["missed_gain"]) == 1
    assert not result["worse"]["passes"] and len(result["worse"]["worse"]) == 2
    assert not result["noisy"]["worse"]
    assert [v["variant"] for v in quality_report.verdict(table, ["AdamW", "worse", "better"])][0] == "better"


def test_paired_change_is_per_seed():
    c = quality_report.compare({0: {"fd": 2.0}, 1: {"fd": 4.0}}, {0: {"fd": 1.0}, 1: {"fd": 8.0}}, "fd")
    assert c["change"] == pytest.approx((1.0 + -0.5) / 2) and c["change_min"] == -0.5 and c["change_max"] == 1.0
    share = quality_report.compare({0: {"share9": 0.5}}, {0: {"share9": 0.75}}, "share9")
    assert share["change"] == pytest.approx(-0.25) and share["worse"]  # higher is better; one seed: no overlap
