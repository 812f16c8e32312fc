"""One real ``train_network.py`` run (SD1.x LoRA, random full-size model, 64x64 px, CPU) with
``--optimizer_type LoliClustered --loss_type loli``, then a ``--resume`` from its saved state."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..trainer_support import logged_scalars as scalars
from ..trainer_support import run_logged
from .conftest import KOHYA_DIR

HERE = Path(__file__).parent
K = 4


@pytest.fixture(scope="session")
def sd1_assets(kohya):
    """Random SD1 checkpoint, tokenizer and images; cached per sd-scripts commit (about 40 s to build)."""
    commit = (
        (KOHYA_DIR / ".exported-commit").read_text().strip()[:8]
        if (KOHYA_DIR / ".exported-commit").exists()
        else "checkout"
    )
    out = Path(os.environ.get("LOLI_TEST_ASSETS", "~/.cache/loli-plugin/test-assets")).expanduser() / f"sd1-{commit}"
    print(f"building SD1 test assets in {out} (cached)", file=sys.stderr)
    subprocess.run(
        [sys.executable, str(HERE / "sd1_assets.py"), str(out)], cwd=KOHYA_DIR, check=True, capture_output=True
    )
    return out


def train(assets: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        "train_network.py",
        "--pretrained_model_name_or_path",
        str(assets / "sd1-random.safetensors"),
        "--tokenizer_cache_dir",
        str(assets / "tokenizers"),
        "--train_data_dir",
        str(assets / "data"),
        "--caption_extension",
        ".txt",
        "--resolution",
        "64,64",
        "--output_dir",
        str(out / "out"),
        "--output_name",
        "lora",
        "--logging_dir",
        str(out / "logs"),
        "--log_with",
        "tensorboard",
        "--network_module",
        "networks.lora",
        "--network_dim",
        "4",
        "--network_train_unet_only",
        "--max_train_steps",
        "4",
        "--train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "2",
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "inner=AdamW",
        f"clusters={K}",
        "--loss_type",
        "loli",
        "--learning_rate",
        "1e-4",
        "--seed",
        "0",
        "--max_data_loader_n_workers",
        "0",
        "--cache_latents",
        "--loli_probe_every",
        "2",
        "--loli_probe_samples",
        "1",  # the progress probe: before step 1, after steps 2 and 4
        *extra,
    ]
    return run_logged(cmd, KOHYA_DIR, out)


@pytest.fixture(scope="module")
def straight_run(sd1_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = train(sd1_assets, out, "--save_state", "--save_every_n_steps", "2")
    return out, proc


def test_train_network_runs_with_the_plugin(straight_run):
    out, proc = straight_run
    text = proc.stdout + proc.stderr
    assert "use loli_plugin.LoliClustered" in text and "loli-plugin active" in text
    logs = scalars(out / "logs")
    cluster_tags = sorted(t for t in logs if t.startswith("loss/cluster_"))
    assert len(cluster_tags) >= 2, logs.keys()
    # 4 optimizer steps with K=4 and the shuffle schedule: each cluster once, 2 micro-batches each
    trained = sorted({int(v) for _, v in logs["loli/cluster"]})
    assert trained == list(range(K))
    # the state kohya saved holds the banks, the schedule and the monitor, and loads with weights_only
    sd = torch.load(out / "out" / "lora-step00000004-state" / "optimizer.bin", weights_only=True)
    assert sd["loli"]["clusters"] == K and sd["loli"]["inner"] == "AdamW" and sd["loli"]["schedule"]["step"] == 4
    assert sd["loli"]["bank_steps"] == [1] * K and sd["loli_monitor"]["step"] == 8  # 8 micro-batch losses


def test_resume_continues_the_schedule_and_the_banks(straight_run, sd1_assets, tmp_path):
    out, _ = straight_run
    train(sd1_assets, tmp_path, "--resume", str(out / "out" / "lora-step00000002-state"))
    straight, resumed = scalars(out / "logs"), scalars(tmp_path / "logs")
    # the resumed run trains the same clusters at steps 3 and 4 as the uninterrupted one
    clusters_after = lambda logs: [v for s, v in logs["loli/cluster"]][-4:]  # noqa: E731
    assert clusters_after(resumed) == clusters_after(straight)
    # per-cluster history from before the save is still there
    first_two = {int(v) for s, v in straight["loli/cluster"][:4]}
    for k in first_two:
        assert f"loss/cluster_{k:02d}" in resumed and resumed[f"loss/cluster_{k:02d}"][0][0] == 0
    # the probe's reference and kept sample came back with the state: the resumed run probes after step 4
    # against the same first values (no new start at 1.0)
    saved = torch.load(out / "out" / "lora-step00000002-state" / "optimizer.bin", weights_only=True)["loli_probe"]
    assert saved["reference"] == pytest.approx([straight[f"probe/cluster_{k:02d}"][0][1] for k in range(K)], rel=1e-6)
    assert resumed["probe/normalized"] and all(v != 1.0 for _, v in resumed["probe/normalized"])


PROBE_TAGS = {f"probe/cluster_{k:02d}" for k in range(K)} | {"probe/mean", "probe/normalized"}


def test_the_progress_probe_reaches_tensorboard(straight_run):
    out, proc = straight_run
    logs = scalars(out / "logs")
    assert PROBE_TAGS <= set(logs), sorted(logs)
    # the reference (before any step, logged with sd-scripts' first step log) then after steps 2 and 4
    normalized = [v for _, v in logs["probe/normalized"]]
    assert len(normalized) == 3 and normalized[0] == 1.0 and normalized[1] != 1.0
    state = torch.load(out / "out" / "lora-step00000004-state" / "optimizer.bin", weights_only=True)["loli_probe"]
    assert state["clusters"] == K and state["steps"] == 4 and state["last"] == 4 and len(state["batches"]) == 1
