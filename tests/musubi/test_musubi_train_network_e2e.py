"""One real ``qwen_image_train_network.py`` run on CPU (Qwen-Image, one random full-width transformer
block loaded with ``--num_layers 1``, 64x64 px, cached random latents and text embeddings) with
``--optimizer_type LoliClustered --loss_type loli``, started as musubi-tuner's docs start it
(``src/musubi_tuner/qwen_image_train_network.py``, i.e. as ``__main__``), then a ``--resume`` from its
saved state through the top-level launcher ``qwen_image_train_network.py``.

The script pins the DiT to bfloat16 (its ``main()`` sets ``args.dit_dtype``). On a CPU without bf16
units the backward of a frozen bf16 linear is ~100x slower than its forward (8.9 s for one
3072x12288 input gradient on this project's machine, against 0.2 s forward), so the LoRA sits on the
block's last MLP layer only (``--network_args`` exclude/include patterns, musubi-tuner's own options):
the backward then stays inside that LoRA and a step takes about a second."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..trainer_support import logged_scalars as scalars
from ..trainer_support import run_logged
from .conftest import MUSUBI_DIR

HERE = Path(__file__).parent
K = 2


@pytest.fixture(scope="session")
def qwen_assets(musubi):
    """Random 1-block Qwen-Image DiT, images, dataset config and caches; cached per musubi-tuner commit."""
    exported = MUSUBI_DIR / ".exported-commit"
    commit = exported.read_text().strip()[:8] if exported.exists() else "checkout"
    out = (
        Path(os.environ.get("LOLI_TEST_ASSETS", "~/.cache/loli-plugin/test-assets")).expanduser()
        / f"musubi-qwen-image-{commit}"
    )
    print(f"building Qwen-Image test assets in {out} (cached)", file=sys.stderr)
    subprocess.run([sys.executable, str(HERE / "qwen_assets.py"), str(out)], check=True, capture_output=True)
    return out


def train(assets: Path, out: Path, script: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        script,
        "--dit",
        str(assets / "qwen_image_1layer.safetensors"),
        "--num_layers",
        "1",
        "--dataset_config",
        str(assets / "dataset.toml"),
        "--sdpa",
        "--mixed_precision",
        "bf16",
        "--timestep_sampling",
        "shift",
        "--weighting_scheme",
        "none",
        "--discrete_flow_shift",
        "2.2",
        "--network_module",
        "networks.lora_qwen_image",
        "--network_dim",
        "4",
        "--network_args",
        "exclude_patterns=[r'.*']",
        r"include_patterns=[r'.*img_mlp\.net\.2']",
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "inner=AdamW",
        f"clusters={K}",
        "--loss_type",
        "loli",
        "--learning_rate",
        "1e-4",
        "--gradient_accumulation_steps",
        "2",
        "--seed",
        "0",
        "--max_data_loader_n_workers",
        "0",
        "--output_dir",
        str(out / "out"),
        "--output_name",
        "lora",
        "--logging_dir",
        str(out / "logs"),
        "--log_with",
        "tensorboard",
        *extra,
    ]
    return run_logged(cmd, MUSUBI_DIR, out)


@pytest.fixture(scope="module")
def straight_run(qwen_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    proc = train(
        qwen_assets,
        out,
        "src/musubi_tuner/qwen_image_train_network.py",
        "--max_train_steps",
        "3",
        "--save_state",
        "--save_every_n_steps",
        "1",
    )
    return out, proc


def test_qwen_image_train_network_runs_with_the_plugin(straight_run):
    out, proc = straight_run
    text = proc.stdout + proc.stderr
    assert "use loli_plugin.LoliClustered" in text and "loli-plugin active" in text and "cosine along dim 1" in text
    logs = scalars(out / "logs")
    print("TensorBoard scalar tags:", sorted(logs))
    assert {
        "loss/current",
        "loss/average",
        "loss/cluster_00",
        "loss/cluster_01",
        "loss/normalized",
        "loli/cluster",
    } <= set(logs)
    # musubi logs every micro-batch: 3 optimizer steps x 2 micro-batches, one cluster per accumulation window
    per_micro_batch = [int(v) for _, v in logs["loli/cluster"]]
    assert len(per_micro_batch) == 6 and per_micro_batch[0::2] == per_micro_batch[1::2]
    assert sorted(set(per_micro_batch)) == list(range(K))
    # the state musubi saved holds the banks, the schedule and the monitor, and loads with weights_only
    sd = torch.load(out / "out" / "lora-step00000003-state" / "optimizer.bin", weights_only=True)
    assert sd["loli"]["clusters"] == K and sd["loli"]["inner"] == "AdamW" and sd["loli"]["schedule"]["step"] == 3
    assert sum(sd["loli"]["bank_steps"]) == 3 and sd["loli_monitor"]["step"] == 6  # 6 micro-batch losses


def test_resume_continues_the_schedule_and_the_banks(straight_run, qwen_assets, tmp_path):
    out, _ = straight_run
    train(
        qwen_assets,
        tmp_path,
        "qwen_image_train_network.py",
        "--max_train_steps",
        "2",
        "--resume",
        str(out / "out" / "lora-step00000001-state"),
    )
    straight, resumed = scalars(out / "logs"), scalars(tmp_path / "logs")
    # musubi's loop restarts its step count at 0 after a resume; LoliClustered's schedule goes on from step 1
    clusters = lambda logs: [int(v) for _, v in logs["loli/cluster"]]  # noqa: E731
    assert clusters(resumed) == clusters(straight)[2:]
    # the per-cluster history from before the save is there: the first cluster's EMA is logged from the start
    first = clusters(straight)[0]
    assert resumed[f"loss/cluster_{first:02d}"][0][0] == 0
