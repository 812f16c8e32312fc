"""``loli-plugin bench quality``: a tiny profile end to end (tables, plots, resume), the paired seeds
and checkpoints it relies on, the baselines as users run them (Min-SNR weighting, AdamW8bit's 8-bit
states, Prodigy's d per cluster), the grid a profile plans, and the default rule's arithmetic on
made-up runs (per held-out digit and scorer, against AdamW and against the best baseline)."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn")
pytest.importorskip("peft")
pytest.importorskip("matplotlib")

from loli_plugin.bench import quality, quality_grid, quality_report  # noqa: E402
from loli_plugin.cli import main  # noqa: E402

TINY = [
    "--backbones",
    "unet",
    "--objectives",
    "eps",
    "--digits",
    "9",
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
        "**Verdict against AdamW:**",
        "**Verdict against the best baseline of every cell:**",
        "| 9 | UNet eps | base model |",
        "| 9 | UNet eps | real images |",
    ):
        assert text in md
    cells_md = (tmp_path / "quality-cells.md").read_text()
    for text in (
        "### digit 9 UNet eps lr 0.003 b2 2 steps",
        "### digit 9 UNet eps lr 0.003 b2 3 steps",
        "| Loli CSM K=10 normalized | 2 |",
    ):
        assert text in cells_md
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
        "digit": 9,
        "backbone": "unet",
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
        backbones=["unet"],
        objectives=["eps"],
        digits=[9],
        grids=[dict(batch=[2], variants=["AdamW"])],
        lr=[3e-3],
        seeds=[0],
        horizons=[2, 3],
        samples=4,
        sample_steps=2,
    )
    assert quality.load_rows(tmp_path / "quality.jsonl", settings) == []
    assert quality.load_rows(tmp_path / "quality.jsonl", {**settings, "samples": 8}) == [row]
    # a narrower command over a shared file reports only the runs it plans
    narrower = {**settings, "samples": 8, "grids": [dict(batch=[1], variants=["AdamW"])]}
    assert quality.load_rows(tmp_path / "quality.jsonl", narrower) == []
    # rows of the first format (no version) are kept in the file but not reused
    old = {**row, "eval": {k: v for k, v in row["eval"].items() if k != "version"}}
    (tmp_path / "quality.jsonl").write_text(json.dumps(old) + "\n")
    assert quality.load_rows(tmp_path / "quality.jsonl", {**settings, "samples": 8}) == []


@pytest.mark.parametrize("backbone", ["unet", "dit"])
def test_a_checkpoint_is_the_shorter_run_and_seeds_pair_the_data(backbone):
    common = dict(objective_name="flow", batch=1, lr=3e-3, samples=3, sample_steps=2, backbone_name=backbone)
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
    assert main(["bench", "quality", "--out", str(out), "--backbones", "dit", "--objectives", "eps"]) == 2
    assert "the dit backbone is trained with flow only" in capsys.readouterr().err
    assert main(["bench", "quality", "--out", str(out), "--digits", "10"]) == 2
    assert "must be a digit 0-9" in capsys.readouterr().err
    assert not out.exists()  # refused before any work


# ------------------------------------------------------------------------------------ the grid
def test_decide_plans_every_baseline_beside_its_counterpart_and_the_batch_sweep():
    settings = quality.settings_from(
        type("Args", (), {k: None for k in (*quality.SETTINGS, "batch", "variants")} | {"profile": "decide"})()
    )
    jobs = quality.planned(settings)
    keys = {quality.job_key(j) for j in jobs}
    assert len(keys) == len(jobs)
    setups = {(j["backbone_name"], j["objective_name"]) for j in jobs}
    assert setups == {("unet", "eps"), ("unet", "flow"), ("dit", "flow")}  # the transformer: flow only
    for base, counterpart in quality_grid.BASELINES.items():
        for j in jobs:
            if j["variant_name"] == base:  # the counterpart runs on the same digit, setup, batch and seed
                assert (
                    j["digit"],
                    j["backbone_name"],
                    j["objective_name"],
                    counterpart,
                    j["batch"],
                    j["lr"],
                    j["seed"],
                ) in keys
    min_snr = {j["objective_name"] for j in jobs if "Min-SNR" in j["variant_name"]}
    assert min_snr == {"eps"}  # sd-scripts' Min-SNR weighting is for epsilon (and v) prediction
    large = {j["variant_name"] for j in jobs if j["batch"] > 2}
    assert large == {"AdamW", quality_grid.RECOMMENDED, quality_grid.CANDIDATE}
    assert {j["digit"] for j in jobs} == {9, 3, 6} and {j["batch"] for j in jobs} == {1, 2, 4, 8}
    eight_bit = [i for i, j in enumerate(jobs) if "AdamW8bit" in j["variant_name"]]
    first = jobs[: eight_bit[0]]
    assert eight_bit == list(range(eight_bit[0], eight_bit[-1] + 1))  # the AdamW8bit pair in one phase, after
    assert {quality.job_key(j)[:3] for j in first} == {  # every digit's and setup's other runs
        (d, b, o) for d in (9, 3, 6) for b, o in setups
    }
    after = jobs[eight_bit[-1] + 1 :]
    assert {j["variant_name"] for j in after} == {quality_grid.CANDIDATE} and {j["batch"] for j in after} == {4, 8}
    assert all(j["digit"] == 9 for j in first[: len(first) // 3])  # digit by digit, 9 first


# ------------------------------------------------------------------- the plan: estimate and budget
def timed_row(digit, backbone, objective, variant, batch, seed, cpu, wall=None) -> dict:
    return {
        "digit": digit,
        "backbone": backbone,
        "objective": objective,
        "variant": variant,
        "batch": batch,
        "lr": 1e-3,
        "seed": seed,
        "eval": quality.eval_settings([2, 3], 4, 2),
        "horizons": {},
        "seconds": wall if wall is not None else cpu,
        "cpu_seconds": cpu,
    }


def plan_job(digit, backbone, objective, variant, batch, seed) -> dict:
    return dict(
        digit=digit,
        backbone_name=backbone,
        objective_name=objective,
        variant_name=variant,
        batch=batch,
        lr=1e-3,
        seed=seed,
    )


def test_a_missing_run_costs_what_the_finished_runs_most_like_it_cost():
    from loli_plugin.bench import quality_plan

    model = quality_plan.CostModel(
        [
            timed_row(9, "unet", "eps", "AdamW", 1, 0, 10.0, wall=40.0),
            timed_row(9, "unet", "eps", "AdamW", 1, 1, 30.0, wall=120.0),
            timed_row(9, "unet", "eps", "Prodigy", 1, 0, 50.0, wall=200.0),
            timed_row(9, "dit", "flow", "AdamW", 2, 0, 4.0, wall=16.0),
        ]
    )
    assert model.seconds(plan_job(3, "unet", "eps", "AdamW", 1, 2)) == 20.0  # same setup, batch, variant
    assert model.seconds(plan_job(3, "unet", "eps", "AdamW8bit", 1, 0)) == 30.0  # same setup and batch
    assert model.seconds(plan_job(3, "unet", "eps", "AdamW", 8, 0)) == 30.0  # same setup
    assert model.seconds(plan_job(3, "unet", "flow", "AdamW", 1, 0)) == 30.0  # same backbone
    assert model.seconds(plan_job(3, "dit", "flow", "AdamW", 8, 0)) == 4.0
    assert model.wall / model.cpu == 4.0
    untimed = {k: v for k, v in timed_row(9, "unet", "eps", "AdamW", 1, 0, 1.0).items() if k != "cpu_seconds"}
    assert quality_plan.CostModel([untimed]).seconds(plan_job(9, "unet", "eps", "AdamW", 1, 0)) is None


def test_max_hours_takes_whole_cells_in_order_while_they_fit():
    from loli_plugin.bench import quality_plan

    model = quality_plan.CostModel([timed_row(9, "unet", "eps", "AdamW", b, 0, 600.0 * b) for b in (1, 2)])
    cell = lambda batch, digit=9: [plan_job(digit, "unet", "eps", v, batch, s) for s in (0, 1) for v in ("AdamW", "X")]  # noqa: E731
    todo = cell(1) + cell(2) + cell(1, digit=3)  # 40, 80 and 40 minutes of CPU time
    assert quality_plan.within(todo, model, hours=1.0, workers=2) == cell(1) + cell(2)  # 120 min / 2 workers
    assert quality_plan.within(todo, model, hours=1.0, workers=1) == cell(1)  # the next cell does not fit: stop there
    assert quality_plan.within(todo, model, hours=0.5, workers=1) == []
    assert quality_plan.within(todo, model, hours=10, workers=1) == todo
    with pytest.raises(quality.LoliConfigError, match="--max-hours: no finished run"):
        quality_plan.within(todo, quality_plan.CostModel([]), hours=1.0, workers=1)


def test_plan_prints_the_missing_runs_and_their_time_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    finished = [timed_row(9, "unet", "eps", "AdamW", 2, 0, 30.0, wall=90.0)]
    (out / "quality.jsonl").write_text("".join(json.dumps(r) + "\n" for r in finished))
    before = (out / "quality.jsonl").read_text()
    tiny = [*TINY[: TINY.index("--batch")], "--batch", "1", "2", *TINY[TINY.index("--lr") :]]
    tiny[tiny.index("--lr") + 1] = "1e-3"
    assert main(["bench", "quality", "--out", str(out), *tiny, "--plan", "--workers", "2"]) == 0
    text = capsys.readouterr().out
    assert "8 runs of 3 steps; 1 already in" in text and "7 missing" in text
    assert "| digit 9 unet eps lr 0.001 batch 1 | 4 | 2 min | 1 min |" in text
    assert "| digit 9 unet eps lr 0.001 batch 2 | 3 | 2 min | 2 min |" in text
    assert "7 runs: 4 min of CPU time, about 2 min with --workers 2 on idle cores" in text
    assert "their wall time was 3.0 x their CPU time (3.0 x to 3.0 x per run" in text
    assert main(["bench", "quality", "--out", str(out), *tiny, "--plan", "--max-hours", "0.04"]) == 0
    text = capsys.readouterr().out
    assert "the first 4 of them" in text and "4 runs (of the 7 missing): 2 min" in text
    assert (out / "quality.jsonl").read_text() == before and sorted(p.name for p in out.iterdir()) == ["quality.jsonl"]
    # nothing to estimate from: --max-hours is refused before any work
    fresh = tmp_path / "fresh"
    assert main(["bench", "quality", "--out", str(fresh), *tiny, "--max-hours", "1"]) == 2
    assert "no finished run in the results file has a measured CPU time" in capsys.readouterr().err
    assert not fresh.exists()


def test_max_hours_runs_the_cells_that_fit_and_the_next_command_goes_on(tmp_path, capsys):
    metrics = {"fd": 5.0, "fd_cnn": 5.0, "share": 0.5, "mean": 0.1, "geomean": 0.01, "bands": [0.1] * 10}
    timed = timed_row(9, "unet", "eps", "AdamW", 2, 0, 30.0) | {"horizons": {"2": metrics, "3": metrics}}
    (tmp_path / "quality.jsonl").write_text(json.dumps(timed) + "\n")
    tiny = [*TINY[: TINY.index("--batch")], "--batch", "1", "2", *TINY[TINY.index("--lr") :]]
    tiny[tiny.index("--lr") + 1] = "1e-3"
    # 30 s per run by the estimate: the batch-1 cell (4 runs, 120 s) fits 144 s, the batch-2 cell does not
    assert main(["bench", "quality", "--out", str(tmp_path), *tiny, "--max-hours", "0.04"]) == 0
    assert "the first 4 of them" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "quality.jsonl").read_text().splitlines()]
    assert len(rows) == 5 and {r["batch"] for r in rows[1:]} == {1}
    assert "5 of 8 runs (**incomplete**" in (tmp_path / "quality.md").read_text()
    assert main(["bench", "quality", "--out", str(tmp_path), *tiny, "--max-hours", "0.04"]) == 0
    assert "5 already in" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "quality.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and {quality.run_key(r) for r in rows} == {quality.job_key(j) for j in planned_tiny(tiny)}
    assert "8 of 8 runs;" in (tmp_path / "quality.md").read_text()


def planned_tiny(argv) -> list[dict]:
    from loli_plugin.cli import build_parser

    return quality.planned(quality.settings_from(build_parser().parse_args(["bench", "quality", *argv])))


def test_min_snr_weight_is_the_trainers_formula():
    """min(SNR, 5) / SNR per sample, SNR = alpha_bar / (1 - alpha_bar), on the DDPM schedule."""
    from loli_plugin.bench.digits import Objective

    ac = Objective("eps").sched.alphas_cumprod.double()
    t = torch.tensor([0, 10, 100, 500, 999])
    w = quality.min_snr_weight(t, ac, 5.0)
    snr = [ac[i].item() / (1 - ac[i].item()) for i in t.tolist()]
    assert w.tolist() == pytest.approx([min(x, 5.0) / x for x in snr], rel=1e-6)
    assert w[-1] == 1.0 and w[0] < 0.01  # noisy steps keep their loss, the cleanest ones are cut to 5 / SNR


def test_min_snr_weighs_each_samples_mean_loss():
    from loli_plugin.bench.backbones import UNET

    obj = UNET.objective("eps")
    pred, target = torch.zeros(2, 1, 8, 8), torch.ones(2, 1, 8, 8)
    pred[1] = 2.0  # sample 1's MSE is 1 too, its L1 1
    t = torch.tensor([5, 900])
    w = quality.min_snr_weight(t, obj.sched.alphas_cumprod, 5.0)
    plain = quality.training_loss(pred, target, {"loss": "mse"}, UNET, obj, t)
    weighted = quality.training_loss(pred, target, {"loss": "mse", "weighting": "min_snr"}, UNET, obj, t)
    assert plain.item() == 1.0 and weighted.item() == pytest.approx(w.mean().item())


def test_adamw8bit_keeps_8bit_states_on_the_tiny_lora():
    pytest.importorskip("bitsandbytes")
    p = torch.nn.Parameter(torch.randn(8, 32))  # 256 elements: under bitsandbytes' default min_8bit_size
    opt = quality.make_optimizer(quality.VARIANTS["AdamW8bit"], [p], 1e-3, 0)
    p.grad = torch.randn_like(p)
    opt.step()
    assert opt.state[p]["state1"].dtype == torch.uint8


def test_prodigy_runs_as_users_run_it_and_its_d_is_reported_per_cluster():
    pytest.importorskip("prodigyopt")
    p = torch.nn.Parameter(torch.randn(64))
    plain = quality.make_optimizer(quality.VARIANTS["Prodigy"], [p], 1e-3, 0)
    assert plain.param_groups[0]["lr"] == 1.0 and plain.param_groups[0]["safeguard_warmup"]
    clustered = quality.make_optimizer(quality.VARIANTS["Loli Prodigy K=10 + loli loss"], [p], 1e-3, 0)
    g = torch.Generator().manual_seed(0)
    for _ in range(30):  # three visits of every cluster: each d moves on its own
        p.grad = 1 + torch.randn(64, generator=g)
        clustered.step()
    d = quality.group_values(clustered)["d"]
    assert len(d) == 10 and all(x is not None for x in d) and len(set(d)) > 1


# ---------------------------------------------------------------------------------------- the rule
def made_up(fd_by_variant: dict, batches=(1, 8), digits=(9,), cnn_scale=1.0) -> list[dict]:
    """Rows with the given FD per seed (the same in every cell; the CNN's FD scaled) and neutral other metrics."""
    rows = []
    for variant, fds in fd_by_variant.items():
        for digit in digits:
            for batch in batches:
                for seed, fd in enumerate(fds):
                    metrics = {
                        "fd": fd,
                        "fd_cnn": fd * cnn_scale,
                        "share": 0.9,
                        "mean": 0.1,
                        "geomean": 0.01,
                        "bands": [0.1] * 10,
                    }
                    rows.append(
                        {
                            "digit": digit,
                            "backbone": "unet",
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
    assert not result["small gain"]["passes"] and result["small gain"]["missed_gain"] == 2  # once per scorer
    assert not result["worse"]["passes"] and result["worse"]["worse"] == 4  # 2 cells x 2 scorers
    assert not result["noisy"]["worse"]
    assert [v["variant"] for v in quality_report.verdict(table, ["AdamW", "worse", "better"])][0] == "better"


def test_a_claim_must_hold_for_every_held_out_digit():
    rows = made_up({"AdamW": [10.0, 11.0, 12.0], "candidate": [9.0, 10.0, 11.5]}, digits=(9, 3))
    # on digit 3 the candidate is worse beyond the spread
    rows = [
        {**r, "horizons": {"200": {**r["horizons"]["200"], "fd": 13.0 + r["seed"]}}}
        if r["digit"] == 3 and r["variant"] == "candidate"
        else r
        for r in rows
    ]
    (v,) = quality_report.verdict(quality_report.cells(rows), ["AdamW", "candidate"])
    assert not v["passes"]
    assert v["checks"][9, "fd"]["passes"] and not v["checks"][3, "fd"]["passes"] and v["checks"][3, "fd_cnn"]["passes"]


def test_the_best_baseline_is_chosen_per_cell_and_the_rule_runs_against_it():
    table = quality_report.cells(
        made_up(
            {
                "AdamW": [10.0, 11.0, 12.0],
                "Prodigy": [7.0, 7.5, 8.0],  # the best baseline of every cell
                "Loli K=10 + loli loss": [9.0, 10.0, 11.0],  # beats AdamW, not Prodigy
            }
        )
    )
    (cell,) = [c for c in table if c[4] == 1]
    assert quality_report.best_baseline(table[cell]) == "Prodigy"
    (vs_adamw,) = [
        v for v in quality_report.verdict(table, ["AdamW", "Loli K=10 + loli loss"]) if v["variant"] != "Prodigy"
    ]
    assert vs_adamw["passes"]
    best = {v["variant"]: v for v in quality_report.verdict(table, ["Loli K=10 + loli loss"], quality_report.BEST)}
    assert not best["Loli K=10 + loli loss"]["passes"] and best["Loli K=10 + loli loss"]["worse"] == 4


def test_paired_change_is_per_seed():
    c = quality_report.compare({0: {"fd": 2.0}, 1: {"fd": 4.0}}, {0: {"fd": 1.0}, 1: {"fd": 8.0}}, "fd")
    assert c["change"] == pytest.approx((1.0 + -0.5) / 2) and c["change_min"] == -0.5 and c["change_max"] == 1.0
    share = quality_report.compare({0: {"share": 0.5}}, {0: {"share": 0.75}}, "share")
    assert share["change"] == pytest.approx(-0.25) and share["worse"]  # higher is better; one seed: no overlap


def test_crossover_table_reads_the_batch_sweep():
    small = made_up({"AdamW": [10.0, 11.0, 12.0], quality_grid.RECOMMENDED: [8.0, 9.0, 10.0]}, batches=(1, 2))
    large = made_up({"AdamW": [10.0, 11.0, 12.0], quality_grid.RECOMMENDED: [13.0, 14.0, 15.0]}, batches=(8,))
    lines = quality_report.crossover_summary(quality_report.cells(small + large), quality_grid.RECOMMENDED)
    by_batch = {line.split(" | ")[0].strip("| "): line for line in lines[2:]}
    assert set(by_batch) == {"1", "2", "8"}
    assert by_batch["1"].endswith("| 2 | 0 | 0 |")  # better on every seed, for both scorers
    assert by_batch["8"].endswith("| 0 | 2 | 2 |")  # worse on every seed, and beyond the spread, both scorers


def test_horizon_table_pairs_each_counterpart_with_its_baseline_per_training_length():
    rows = made_up({"AdamW": [10.0, 11.0, 12.0], quality_grid.RECOMMENDED: [13.0, 14.0, 15.0]}, batches=(1, 2))
    # the same runs seen at 400 steps, where the counterpart is better on every seed (a checkpoint each)
    for r in rows:
        fd = r["horizons"]["200"]["fd"] * (0.5 if r["variant"] == quality_grid.RECOMMENDED else 1.0)
        r["horizons"]["400"] = {**r["horizons"]["200"], "fd": fd, "fd_cnn": fd}
    lines = quality_report.horizon_lines(quality_report.cells(rows))
    assert "200 steps" in lines[0] and "400 steps" in lines[0]
    (row,) = [line for line in lines[2:] if line.startswith(f"| {quality_grid.RECOMMENDED} vs AdamW |")]
    short, long = row.split(" | ")[2:4]
    assert short == "+27.4 %, 0 / 4 / 4"  # 2 batches x 2 scorers, each worse beyond the seed spread
    assert long == "-36.3 %, 4 / 0 / 4 |"
    # a baseline without its counterpart's runs has no row; one horizon alone gives no table
    assert not any(line.startswith("| Loli Prodigy") for line in lines)
    assert quality_report.horizon_lines(quality_report.cells(made_up({"AdamW": [1.0]}))) == []


def test_coverage_counts_the_finished_runs_of_each_planned_cell():
    rows = made_up({"AdamW": [10.0, 11.0], "Loli K=10": [9.0, 9.5]}, batches=(1,))
    jobs = [
        plan_job(d, "unet", "eps", v, b, s)
        for d in (9, 3)
        for b in (1, 8)
        for v in ("AdamW", "Loli K=10", "Prodigy")
        for s in (0, 1)
    ]
    lines = quality_report.coverage_lines(rows, jobs)
    assert lines[0] == "| held-out digit | setup | batch 1 | batch 8 |"
    assert "| 9 | UNet eps | 4 of 6 (incomplete) | 0 of 6 (incomplete) |" in lines
    assert "| 3 | UNet eps | 0 of 6 (incomplete) | 0 of 6 (incomplete) |" in lines
    assert lines[-1] == "Planned but not run at all: Prodigy."


def test_gradients_command_writes_scale_and_direction_per_cluster(tmp_path, capsys):
    out = tmp_path / "gradients.md"
    argv = ["bench", "gradients", "--batch", "1", "2", "--draws", "2", "--full-draws", "4", "--cluster-draws", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    for name in ("UNet eps", "UNet flow", "DiT (Flux-style, packed tokens) flow"):
        assert f"### {name}, digit 9" in text
    scale_rows = [line for line in text.splitlines() if line.startswith("| gradient scale")]
    assert len(scale_rows) == 3 and all("1.00" in row for row in scale_rows)  # relative to the largest cluster
    assert text.count("| mixed batch: cosine with the full gradient |") == 3
