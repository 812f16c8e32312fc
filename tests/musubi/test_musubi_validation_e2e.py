"""The validation in real ``qwen_image_train_network.py`` runs (the one-block Qwen-Image of
test_musubi_train_network_e2e.py, CPU): ``--loli_validation_dataset_config`` names a second dataset config of
two held-out images, cached like the training set (qwen_assets.py writes both caches with musubi-tuner's own
dataset classes and cache writers, as its caching scripts do); the plugin measures them before the first step,
after every step (``--loli_validation_every 1``) and at the end.

Runs: LoliClustered with the option (twice), the same config without it, AdamW with it at the same K (the A/B
recipe), and AdamW validated on the training set's own config. They show the ``val/`` tags and the record,
bit-identical values in the repeated run, a run without the option unchanged (losses and LoRA weights),
held-out values that differ from values on the training images, and ``loli-plugin compare`` on AdamW against
LoliClustered, refusing the run validated on other images."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from loli_plugin.compare import read_record

from ..trainer_support import cpu_seconds, logged_scalars, run_logged, validation_lines
from .conftest import MUSUBI_DIR
from .test_musubi_train_network_e2e import qwen_assets  # noqa: F401 - the session fixture

K = 2
STEPS = 2
VAL_TAGS = {f"val/cluster_{k:02d}" for k in range(K)} | {"val/mean", "val/normalized"}


def train(assets: Path, out: Path, *extra: str, optimizer=("LoliClustered", "inner=AdamW", f"clusters={K}")) -> float:
    cmd = [
        sys.executable,
        "src/musubi_tuner/qwen_image_train_network.py",
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
        optimizer[0],
        "--optimizer_args",
        *optimizer[1:],
        "--learning_rate",
        "1e-3",
        "--max_train_steps",
        str(STEPS),
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
    run_logged(cmd, MUSUBI_DIR, out)
    return cpu_seconds(out)


def tensorboard(log_dir: Path) -> dict:
    """The run's TensorBoard scalars, and its comparability record under "record"."""
    (run_dir,) = log_dir.glob("*/network_train")
    return {**logged_scalars(log_dir), "record": read_record(run_dir)}


@pytest.fixture(scope="module")
def runs(qwen_assets, tmp_path_factory):  # noqa: F811 - the fixture imported above
    held_out = (
        "--loli_validation_dataset_config",
        str(qwen_assets / "val_dataset.toml"),
        "--loli_validation_every",
        "1",
    )
    adamw = ("AdamW",)
    variants = {
        "loli": dict(extra=held_out),
        "again": dict(extra=held_out),
        "plain": dict(extra=()),
        "adamw": dict(extra=(*held_out, "--loli_validation_clusters", str(K)), optimizer=adamw),
        "adamw_on_training_images": dict(
            extra=(
                "--loli_validation_dataset_config",
                str(qwen_assets / "dataset.toml"),
                "--loli_validation_every",
                "1",
                "--loli_validation_clusters",
                str(K),
            ),
            optimizer=adamw,
        ),
    }
    roots, cpu = {}, {}
    for name, variant in variants.items():
        root = tmp_path_factory.mktemp(name)
        cpu[name] = train(
            qwen_assets, root, *variant["extra"], **{k: v for k, v in variant.items() if k == "optimizer"}
        )
        roots[name] = root
    print("\nqwen_image_train_network.py CPU s per run: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"the plugin's validation ({STEPS + 1} passes): {cpu['loli'] - cpu['plain']:.1f} s CPU in the whole run")
    print("\n".join(validation_lines(roots["loli"])))
    return roots


def test_val_tags_and_the_record_reach_tensorboard(runs):
    logs = tensorboard(runs["loli"] / "logs")
    print("TensorBoard scalar tags:", sorted(t for t in logs if t != "record"))
    assert VAL_TAGS <= set(logs), sorted(logs)
    # before the first step (the reference), after each step; the end of training is step 2
    assert [s for s, _ in logs["val/mean"]] == [0, 1, 2] and logs["val/normalized"][0][1] == 1.0
    assert logs["val/mean"][0][1] != logs["val/mean"][-1][1]  # the LoRA learned something
    record = logs["record"]
    assert record["clusters"] == K and record["samples"] == 2 and "discrete_flow_shift=2.2" in record["distribution"]
    lows, mids, highs = zip(*record["timesteps"])
    # musubi-tuner's "shift" sampling: t * 1000 + 1 in (1, 1001), shifted towards high noise
    assert 1 <= lows[0] < mids[0] < highs[0] <= lows[1] + 1e-3 < mids[1] < highs[1] <= 1001
    assert mids[0] > 250  # the shift of 2.2 moves the lower cluster's midpoint above the unshifted 250
    text = (runs["loli"] / "train.log").read_text()
    assert "validation: 2 timesteps on" in text


def test_a_repeated_run_gives_bit_identical_values(runs):
    first, again = tensorboard(runs["loli"] / "logs"), tensorboard(runs["again"] / "logs")
    for tag in VAL_TAGS:
        assert first[tag] == again[tag], tag
    assert first["record"] == again["record"]


def test_a_run_without_the_option_is_unchanged(runs):
    with_val, plain = tensorboard(runs["loli"] / "logs"), tensorboard(runs["plain"] / "logs")
    assert not VAL_TAGS & set(plain) and plain["record"] is None
    assert with_val["loss/current"] == plain["loss/current"]  # every micro-batch's loss, bit for bit
    a, b = (load_file(runs[name] / "out" / "lora.safetensors") for name in ("loli", "plain"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_values_differ_from_values_on_the_training_images(runs):
    held, training = tensorboard(runs["adamw"] / "logs"), tensorboard(runs["adamw_on_training_images"] / "logs")
    assert held["loss/current"] == training["loss/current"]  # the same training
    for k in range(K):
        assert held[f"val/cluster_{k:02d}"] != training[f"val/cluster_{k:02d}"]
    assert held["record"]["validation_set"] != training["record"]["validation_set"]
    assert held["record"]["samples"] == 2 and training["record"]["samples"] == 4


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loli_plugin.cli", "compare", *args], capture_output=True, text=True)


def test_compare_adamw_against_loli_clustered_and_refuse_other_images(runs, tmp_path):
    png = tmp_path / "ab.png"
    done = compare(str(runs["adamw"] / "logs"), str(runs["loli"] / "logs"), "--names", "AdamW", "Loli", "-o", str(png))
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert "AdamW final" in done.stdout and png.stat().st_size > 20_000
    refused = compare(str(runs["loli"] / "logs"), str(runs["adamw_on_training_images"] / "logs"))
    print(refused.stderr)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "was validated on another held-out set" in refused.stderr
