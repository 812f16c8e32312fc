"""The validation in real OneTrainer ``scripts/train.py`` runs (the tiny SD 1.5 LoRA of test_onetrainer_e2e.py,
CPU): four training images and a VALIDATION concept of two other images. OneTrainer validates at the start of
each epoch (``validate_after: 1 EPOCH``); the plugin measures the same batches inside that validation, at each
cluster's midpoint, and once more at the end of training.

Runs of the same config, each started with torch's global generator seeded (OneTrainer has no seed option, and
torch seeds that generator at random, so its LoRA initialisation would differ between runs): LOLI_CLUSTERED
with the validation (twice), with ``loli_validation: off``, ADAMW with
``loli_validation: on`` at the same K (the A/B recipe), and a continuation of the repeated run from its last
backup. They show the ``val/`` tags and the record in TensorBoard, bit-identical values in the
repeated run, the same training with and without the validation, held-out values that differ from the probe's,
``loli-plugin compare`` on AdamW against LoliClustered (and refusing the run without validation; its refusal
of another held-out set on real logs: test_musubi_validation_e2e.py), and curves that go on after a resume."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..assets_support import write_images
from ..trainer_support import validation_lines
from .test_onetrainer_e2e import assets, last_backup, train, write_config  # noqa: F401 - assets: the fixture

K = 4
EPOCHS = 2  # 4 images, batch 1, 2 accumulation steps: 2 updates (4 micro-steps) per epoch
VAL_TAGS = {f"val/cluster_{k:02d}" for k in range(K)} | {"val/mean", "val/normalized"}


def held_out_images(folder: Path) -> Path:
    """Two captioned 64x64 images the training never sees."""
    write_images(folder, 2, seed=7, name="held-out thing")
    return folder


def tensorboard(root: Path, newest: bool = True) -> dict:
    """The scalars and the loli/validation record of the run's (newest) TensorBoard folder."""
    from loli_plugin.compare import read_record
    from loli_plugin.plot import read_scalars

    folders = sorted((root / "workspace" / "tensorboard").iterdir())
    folder = folders[-1] if newest else folders[0]
    return {**read_scalars(folder), "record": read_record(folder)}


def lora_tensors(root: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the run's final LoRA (OneTrainer's INTERNAL output folder)."""
    tensors = {}
    for path in sorted((root / "out").rglob("*")):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors.update({f"{path.name}:{k}": v for k, v in load_file(path).items()})
        elif path.suffix == ".pt":
            loaded = torch.load(path, weights_only=True)
            if isinstance(loaded, dict):
                tensors.update({f"{path.name}:{k}": v for k, v in loaded.items() if isinstance(v, torch.Tensor)})
    assert tensors, list((root / "out").rglob("*"))
    return tensors


@pytest.fixture(scope="module")
def runs(assets, tmp_path_factory):  # noqa: F811 - the fixture imported above
    model, data = assets
    held = held_out_images(tmp_path_factory.mktemp("held") / "held_out")
    concepts = [
        {"name": "thing", "path": str(data), "seed": 0},
        {"name": "held_out", "path": str(held), "seed": 1, "type": "VALIDATION"},
    ]
    adamw = {
        "optimizer": "ADAMW",
        "fused": False,
        "foreach": False,
        "stochastic_rounding": False,
    }
    variants = {
        "loli": {},
        "again": {},
        "off": {"loli_validation": "off"},
        "adamw": {"optimizer": adamw, "loli_validation": "on", "loli_probe": "on", "loli_probe_clusters": K},
    }
    roots = {}
    for name, changes in variants.items():
        root = tmp_path_factory.mktemp(name)
        config = write_config(
            root / "config.json", root, model, data, EPOCHS, False, concepts=concepts, loli_probe_every=2, **changes
        )
        train(config, root / "train.log", seeded=True)  # runs compared step for step
        roots[name] = root
    cpu = {name: float((root / "train.cpu").read_text()) for name, root in roots.items()}
    print("\nscripts/train.py CPU s per run: " + ", ".join(f"{k} {v:.0f}" for k, v in cpu.items()))
    print(f"the plugin's validation (3 passes): {cpu['loli'] - cpu['off']:.1f} s CPU in the whole run")
    print("\n".join(validation_lines(roots["loli"])))
    return roots, model, data, concepts


def test_val_tags_and_the_record_reach_tensorboard(runs):
    roots = runs[0]
    logs = tensorboard(roots["loli"])
    print("TensorBoard scalar tags:", sorted(t for t in logs if t != "record"))
    assert VAL_TAGS <= set(logs), sorted(logs)
    # OneTrainer's validation at the start of each epoch (after its first micro-step: steps 0 and 4), the
    # plugin's own last pass at the end of training (step 8)
    assert [s for s, _ in logs["val/mean"]] == [0, 4, 8] and logs["val/normalized"][0][1] == 1.0
    assert [s for s, _ in logs["loss/validation_step/held_out"]] == [0, 4]  # OneTrainer's own, alongside
    record = logs["record"]
    assert (
        record["clusters"] == K
        and record["samples"] == 2
        and "OneTrainer: timestep_distribution" in (record["distribution"])
    )
    lows, mids, highs = zip(*record["timesteps"])
    assert list(mids) == sorted(mids) and all(lo < m < hi for lo, m, hi in record["timesteps"])
    assert lows[0] <= 1 and highs[-1] >= 998  # the default distribution covers OneTrainer's 1000 timesteps


def test_a_repeated_run_gives_bit_identical_values(runs):
    roots = runs[0]
    first, again = tensorboard(roots["loli"]), tensorboard(roots["again"])
    for tag in VAL_TAGS:
        assert first[tag] == again[tag], tag
    assert first["record"] == again["record"]


def test_the_training_is_the_same_with_and_without_the_validation(runs):
    roots = runs[0]
    with_val, without = tensorboard(roots["loli"]), tensorboard(roots["off"])
    assert not VAL_TAGS & set(without) and without["record"] is None
    assert with_val["loss/train_step"] == without["loss/train_step"]
    assert with_val["loss/validation_step/held_out"] == without["loss/validation_step/held_out"]
    a, b = lora_tensors(roots["loli"]), lora_tensors(roots["off"])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_values_differ_from_the_probe_on_training_images(runs):
    logs = tensorboard(runs[0]["loli"])
    probe_steps = dict(logs["probe/mean"])
    shared = [s for s, _ in logs["val/mean"] if s in probe_steps] or [logs["val/mean"][-1][0]]
    step = shared[-1]
    for k in range(K):
        val = dict(logs[f"val/cluster_{k:02d}"])[step]
        probe = dict(logs[f"probe/cluster_{k:02d}"]).get(step, logs[f"probe/cluster_{k:02d}"][-1][1])
        assert val != probe


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "loli_plugin.cli", "compare", *args], capture_output=True, text=True)


def test_compare_adamw_against_loli_clustered(runs, tmp_path):
    roots = runs[0]
    png = tmp_path / "ab.png"
    done = compare(
        str(roots["adamw"] / "workspace"), str(roots["loli"] / "workspace"), "--names", "AdamW", "Loli", "-o", str(png)
    )
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    assert "AdamW final" in done.stdout and "Δ final" in done.stdout and png.stat().st_size > 20_000
    # the same timesteps and held-out set whatever the optimizer: the records agree
    assert tensorboard(roots["adamw"])["record"] == tensorboard(roots["loli"])["record"]
    # a workspace whose run did not validate is refused in one line, naming it
    refused = compare(str(roots["loli"] / "workspace"), str(roots["off"] / "workspace"))
    print(refused.stderr)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "no val/cluster_KK" in refused.stderr


def test_continuing_from_the_last_backup_continues_the_curves(runs):
    roots, model, data, concepts = runs
    root = roots["again"]
    end = last_backup(root / "workspace")
    (root / "earlier_backups").mkdir(exist_ok=True)  # OneTrainer continues from the backup that sorts last
    for backup in (root / "workspace" / "backup").iterdir():
        if backup != end:
            shutil.move(str(backup), str(root / "earlier_backups" / backup.name))
    saved = torch.load(end / "optimizer" / "optimizer.pt", weights_only=True)["loli_validation"]
    before = tensorboard(root)
    config = write_config(
        root / "config2.json", root, model, data, EPOCHS + 1, True, concepts=concepts, loli_probe_every=2
    )
    train(config, root / "train2.log", seeded=True)
    after = tensorboard(root, newest=True)
    assert saved["reference"] == pytest.approx([before[f"val/cluster_{k:02d}"][0][1] for k in range(K)], rel=1e-6)
    # the continued run validates at the start of its epoch (step 8, its first micro-step: no update yet, so the
    # weights of the backup) and at its end (step 12); its step 8 is the first run's last pass, measured again
    assert [s for s, _ in after["val/mean"]] == [8, 12]
    assert after["val/mean"][0] == (8, pytest.approx(before["val/mean"][-1][1], rel=1e-6))
    assert all(v != 1.0 for _, v in after["val/normalized"])  # against the first run's first pass
