"""The validation in real ``train_network.py`` runs (SD1.x LoRA, random full-size model, 64x64 px, CPU): four
images split by sd-scripts' own ``--validation_split`` into two to train on and two held out; the plugin's
validation measures sd-scripts' validation batches inside its own validation loop, at each epoch's end.

Three runs of the same config: with LoliClustered and the validation (twice), and with ``--loli_validation
off``. They show the ``val/`` tags in TensorBoard with the comparability record, bit-identical values in the
repeated run, the same training (losses, LoRA weights, sd-scripts' own validation losses) with and without the
plugin's validation, values on the held-out images that differ from the probe's on the training images, and
``loli-plugin compare`` on the two runs' logs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from loli_plugin.compare import read_record

from ..trainer_support import cpu_seconds, logged_scalars, run_logged, validation_lines
from .conftest import KOHYA_DIR

K = 2
STEPS = 2  # two training images, batch 1: one epoch; sd-scripts validates at its end
VAL_TAGS = {f"val/cluster_{k:02d}" for k in range(K)} | {"val/mean", "val/normalized"}


def train(assets: Path, out: Path, *extra: str) -> float:
    """One train_network.py run; returns its CPU seconds."""
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
        "--validation_split",
        "0.5",
        "--validation_seed",
        "1",
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
        str(STEPS),
        "--train_batch_size",
        "1",
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "inner=AdamW",
        f"clusters={K}",
        "--learning_rate",
        "1e-3",
        "--seed",
        "0",
        "--max_data_loader_n_workers",
        "0",
        "--cache_latents",
        "--loli_probe_every",
        "1",
        *extra,
    ]
    # one intra-op thread: with two, the CPU backward of the full-size UNet sums its gradients in an order that
    # varies from run to run (two identical runs ended ~1e-7 apart in the LoRA weights, their losses equal),
    # which would hide what these runs compare bit for bit
    run_logged(cmd, KOHYA_DIR, out, env={"OMP_NUM_THREADS": "1"})
    return cpu_seconds(out)


def scalars(log_dir: Path) -> dict:
    """The run's TensorBoard scalars, and its comparability record under "record"."""
    (run_dir,) = log_dir.glob("*/network_train")
    return {**logged_scalars(log_dir), "record": read_record(run_dir)}


@pytest.fixture(scope="module")
def runs(sd1_assets, tmp_path_factory):  # sd1_assets: conftest.py
    out, cpu = {}, {}
    for name, extra in (("val", ()), ("again", ()), ("off", ("--loli_validation", "off"))):
        folder = tmp_path_factory.mktemp(name)
        cpu[name] = train(sd1_assets, folder, *extra)
        out[name] = folder
    print("\ntrain_network.py CPU s per run: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"the plugin's validation (1 pass, with the edges): {cpu['val'] - cpu['off']:.1f} s CPU in the whole run")
    print("\n".join(validation_lines(out["val"])))
    return out


def test_val_tags_and_the_record_reach_tensorboard(runs):
    logs = scalars(runs["val"] / "logs")
    print("TensorBoard scalar tags:", sorted(t for t in logs if t != "record"))
    assert VAL_TAGS <= set(logs), sorted(logs)
    # one pass, at the end of the epoch (= the end of training), at the optimizer step of sd-scripts' step logs
    assert [s for s, _ in logs["val/mean"]] == [STEPS] and logs["val/normalized"][0][1] == 1.0
    assert "loss/validation/epoch_average" in logs  # sd-scripts' own validation ran alongside
    record = logs["record"]
    assert record["clusters"] == K and record["samples"] == 2 and record["validation_set"].startswith("blake2b:")
    lows, mids, highs = zip(*record["timesteps"])
    # sd-scripts' SD sampler draws integers in [0, 1000): cluster 0 is [0, 500), cluster 1 [500, 1000)
    assert list(mids) == [250.0, 750.0] and lows[0] == 0.0 and highs[-1] == 999.0
    assert "sd-scripts" in record["distribution"]
    train_log = (runs["val"] / "train.log").read_text()
    assert "validation: 2 timesteps on each batch of sd-scripts' own validation passes" in train_log


def test_a_repeated_run_gives_bit_identical_values(runs):
    first, again = scalars(runs["val"] / "logs"), scalars(runs["again"] / "logs")
    for tag in VAL_TAGS:
        assert first[tag] == again[tag], tag  # exact floats
    assert first["record"] == again["record"]
    a, b = (load_file(runs[name] / "out" / "lora.safetensors") for name in ("val", "again"))
    assert all(a[key].equal(b[key]) for key in a)  # the runs are deterministic: the comparisons below mean something


def test_the_training_is_the_same_with_and_without_the_validation(runs):
    with_val, without = scalars(runs["val"] / "logs"), scalars(runs["off"] / "logs")
    assert not VAL_TAGS & set(without) and without["record"] is None
    assert with_val["loss/current"] == without["loss/current"]  # every step's loss, bit for bit
    # sd-scripts' own validation (its 4 fixed timesteps) measured the same: its RNG stream was left alone
    assert with_val["loss/validation/epoch_average"] == without["loss/validation/epoch_average"]
    a, b = (load_file(runs[name] / "out" / "lora.safetensors") for name in ("val", "off"))
    assert a.keys() == b.keys() and all(a[key].equal(b[key]) for key in a)
    assert with_val["probe/mean"] == without["probe/mean"]


def test_held_out_values_differ_from_the_probe_on_training_images(runs):
    logs = scalars(runs["val"] / "logs")
    step = logs["val/mean"][-1][0]
    for k in range(K):
        val, probe = dict(logs[f"val/cluster_{k:02d}"])[step], dict(logs[f"probe/cluster_{k:02d}"])[step]
        assert val != probe, (k, val, probe)


def test_compare_reads_the_two_runs(runs, tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "loli_plugin.cli",
            "compare",
            str(runs["val"] / "logs"),
            str(runs["again"] / "logs"),
            "--names",
            "first",
            "again",
            "--out",
            str(tmp_path / "compare.png"),
        ],
        capture_output=True,
        text=True,
    )
    print(proc.stdout, proc.stderr)
    assert proc.returncode == 0, proc.stderr
    assert "+0.0%" in proc.stdout and (tmp_path / "compare.png").stat().st_size > 20_000
    refused = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "compare", str(runs["val"] / "logs"), str(runs["off"] / "logs")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "no val/cluster_KK" in refused.stderr
