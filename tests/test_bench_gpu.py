"""``loli-plugin bench gpu``: without CUDA it says so and exits 0; ``--device cpu --dry-run`` runs every
measurement's code with tiny sizes (so the script cannot rot while no GPU runs it); a failing
measurement is reported and the others still run. Nothing here checks a figure."""

from __future__ import annotations

import pytest
import torch

from loli_plugin.bench import gpu
from loli_plugin.cli import main

SECTIONS = [
    "## 1. Optimizer step time",
    "## 2. Device memory",
    "## 3. Offload during a real forward/backward",
    "## 4. Precision",
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so the command would measure")
def test_without_cuda_it_says_so_and_exits_0(capsys):
    assert main(["bench", "gpu"]) == 0
    assert "needs a CUDA GPU" in capsys.readouterr().out


def test_dry_run_on_cpu_runs_every_measurement(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("bitsandbytes")
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--device", "cpu", "--dry-run", "--clusters", "2", "--out", str(out)]) == 0
    text = out.read_text()
    assert "machine:" in text and "DRY RUN" in text
    for title in SECTIONS:
        assert title in text
    assert "failed" not in text
    assert text.count("AdamWClusteredSecondMoment") >= 4  # in the step-time, memory, offload and precision tables
    assert "banks on device" in text


def test_a_failing_measurement_is_reported_and_the_rest_still_runs(tmp_path, monkeypatch):
    def broken(ctx):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gpu, "MEASUREMENTS", [("1. broken", broken), ("2. fine", lambda ctx: "## 2. fine\n\nmeasured")])
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--device", "cpu", "--dry-run", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## 1. broken\n\nfailed: RuntimeError: CUDA error" in text
    assert "## 2. fine\n\nmeasured" in text


def test_sections_option_runs_only_those_and_refuses_bad_values(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(gpu, "MEASUREMENTS", [(f"{i}. m", (lambda ctx, i=i: f"## {i}. ran")) for i in range(1, 5)])
    out = tmp_path / "gpu.md"
    assert main(["bench", "gpu", "--device", "cpu", "--sections", "2,4", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## 2. ran" in text and "## 4. ran" in text and "## 1. ran" not in text and "## 3. ran" not in text
    assert main(["bench", "gpu", "--sections", "5"]) == 2  # one line on stderr, exit 2, like every CLI error
    assert "--sections '5': give numbers from 1 to 4" in capsys.readouterr().err
