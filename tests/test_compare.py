"""``loli-plugin compare`` on event files written the way the trainers write them (a SummaryWriter, the
record as TensorBoard text): the table's numbers, the PNG, the refusals with a one-line reason. The same
command on real logs of two runs of each trainer: tests/<trainer>/ (the validation e2e tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loli_plugin.cli import main

K = 3
TIMESTEPS = [[0, 166, 332], [333, 499, 665], [666, 832, 999]]


def record(**changes) -> dict:
    base = {
        "format": 1,
        "clusters": K,
        "seed": 0,
        "timesteps": TIMESTEPS,
        "distribution": "uniform integers in [0, 1000)",
        "validation_set": "blake2b:0123456789abcdef",
        "samples": 4,
    }
    return {**base, **changes}


def write_run(
    folder: Path, curves: dict[str, list[float]], rec: dict | None, probe: bool = True, stamp: str = "20260101000000"
) -> Path:
    """A run folder as sd-scripts lays it out (logging_dir/<time>/network_train): validation every 10 steps."""
    from torch.utils.tensorboard import SummaryWriter

    run = folder / stamp / "network_train"
    writer = SummaryWriter(str(run))
    for i in range(len(next(iter(curves.values())))):
        step = 10 * (i + 1)
        writer.add_scalar("loss/current", 1.0 / step, step)
        for tag, values in curves.items():
            writer.add_scalar(tag, values[i], step)
            if probe:
                writer.add_scalar(tag.replace("val/", "probe/"), values[i] * 0.9, step)
        if rec is not None and i == 0:
            writer.add_text("loli/validation", json.dumps(rec), step)
    writer.close()
    return folder


def val_curves(scale: float) -> dict[str, list[float]]:
    curves = {f"val/cluster_{k:02d}": [(3 - k) * scale, (2.5 - k) * scale, (2.7 - k) * scale] for k in range(K)}
    curves["val/mean"] = [sum(c[i] for c in curves.values()) / K for i in range(3)]
    curves["val/normalized"] = [1.0, 0.9, 0.95]
    return curves


@pytest.fixture
def two_runs(tmp_path):
    a = write_run(tmp_path / "adamw", val_curves(1.0), record())
    b = write_run(tmp_path / "loli", val_curves(0.8), record(), probe=False)
    return a, b


def test_compare_prints_final_best_and_relative_difference_and_draws_one_png(two_runs, tmp_path, capsys):
    a, b = two_runs
    out = tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)
    assert "adamw: " in text and "3 validation passes, last at step 30" in text
    lines = {line.split()[0]: line.split() for line in text.splitlines() if line[:2] in ("00", "01", "02", "me")}
    # cluster 00: adamw final 2.7 best 2.5; loli final 2.16 (-20 %), best 2.0 (-20 %)
    assert lines["00"][1:3] == ["t", "0-332"] and "(mid" in lines["00"][3]
    assert lines["00"][-6:] == ["2.7", "2.5", "2.16", "-20.0%", "2", "-20.0%"]
    assert lines["mean"][-2:] == ["1.2", "-20.0%"]
    assert out.is_file() and out.stat().st_size > 20_000  # a real figure
    from PIL import Image

    width, height = Image.open(out).size
    assert width > 1000 and height > 500  # K + 2 panels on a grid


def test_names_label_the_runs(two_runs, tmp_path, capsys):
    a, b = two_runs
    assert main(["compare", str(a), str(b), "--names", "A", "B", "--out", str(tmp_path / "x.png")]) == 0
    assert "A final" in capsys.readouterr().out


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"clusters": 4, "timesteps": TIMESTEPS + [[999, 999, 999]]}, "has K=4 clusters, adamw K=3"),
        ({"validation_set": "blake2b:ffffffffffffffff"}, "was validated on another held-out set than adamw"),
        (
            {"timesteps": [[0, 166, 332], [333, 520, 665], [666, 832, 999]], "distribution": "shifted"},
            "draws other timesteps than adamw (cluster 01: t 333-665 (mid 499) vs t 333-665 (mid 520)",
        ),
    ],
    ids=["clusters", "validation-set", "timesteps"],
)
def test_incomparable_runs_are_refused_with_a_one_line_reason(tmp_path, capsys, change, reason):
    a = write_run(tmp_path / "adamw", val_curves(1.0), record())
    curves = val_curves(0.8)
    if change.get("clusters") == 4:
        curves["val/cluster_03"] = [0.1, 0.1, 0.1]
    b = write_run(tmp_path / "loli", curves, record(**change))
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("loli-plugin compare: error: runs not comparable: ")
    assert reason in err
    assert not (tmp_path / "x.png").exists()


def test_runs_without_validation_or_record_and_ambiguous_folders_are_refused(tmp_path, capsys):
    good = write_run(tmp_path / "good", val_curves(1.0), record())
    no_val = write_run(tmp_path / "noval", {"probe/cluster_00": [1.0, 1.0, 1.0]}, None)
    assert main(["compare", str(good), str(no_val)]) == 2
    assert "no val/cluster_KK scalars" in capsys.readouterr().err
    no_record = write_run(tmp_path / "norecord", val_curves(1.0), None)
    assert main(["compare", str(good), str(no_record)]) == 2
    assert "no loli/validation record" in capsys.readouterr().err
    write_run(tmp_path / "both", val_curves(1.0), record())
    write_run(tmp_path / "both", val_curves(1.0), record(), stamp="20260102000000")  # a second run, same logging_dir
    assert main(["compare", str(good), str(tmp_path / "both")]) == 2
    err = capsys.readouterr().err
    assert "holds 2 runs with validation (20260101000000/network_train, 20260102000000/network_train)" in err
    assert main(["compare", str(good)]) == 2
    assert "at least two runs" in capsys.readouterr().err
    assert main(["compare", str(good), str(good), "--out", str(tmp_path)]) == 2
    assert "give a .png file name" in capsys.readouterr().err
    assert main(["compare", str(good), str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
