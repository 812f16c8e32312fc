"""One real ``scripts/train.py`` run of OneTrainer (SD 1.5 LoRA, tiny random model, 64x64 px, CPU,
float32) with ``optimizer.optimizer = LOLI_CLUSTERED`` and ``cos_strength``, then a second run that
continues from its last backup. Run with ``-s`` to see the TensorBoard scalars the runs wrote.

What is checked end to end, in the trainer's own process and files:
* the plugin registered the optimizer and the config fields before the JSON config was read, and
  ``create_optimizer`` built LoliClustered (its start-up line);
* the TensorBoard event file OneTrainer writes holds ``loss/cluster_XX``, ``loss/normalized`` and
  ``loli/cluster`` next to OneTrainer's own ``loss/train_step``, once per optimizer update;
* OneTrainer's validation (deterministic timesteps, no-grad losses) runs alongside and stays out of the
  per-cluster history;
* the cluster of each update's timesteps (``loli/cluster``), the bank that was stepped (``bank_steps``) and
  the per-cluster loss history (``loli_monitor``) agree;
* OneTrainer's backup ``optimizer.pt`` loads with ``weights_only=True`` and carries the banks and the
  schedule; "continue from last backup" loads them and the schedule goes on where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from ..trainer_support import run_measured
from .conftest import MGDS_DIR, OT_DIR

HERE = Path(__file__).parent
K = 4
GA = 2  # gradient accumulation steps: 4 images, batch 1 -> 2 optimizer updates per epoch
EPOCHS, MORE_EPOCHS = 3, 5  # 6 updates, then 4 more after continuing from the last backup
STARTED = f"loli-plugin: LOLI_CLUSTERED(inner=ADAMW, clusters={K}"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """The tiny SD 1.5 diffusers folder (cached per version of its writer: ~10 s to build) and four captioned images."""
    writer = HERE / "tiny_sd15.py"
    version = hashlib.sha256(writer.read_bytes() + (HERE.parent / "assets_support.py").read_bytes()).hexdigest()[:8]
    cache = Path(os.environ.get("LOLI_TEST_ASSETS", "~/.cache/loli-plugin/test-assets")).expanduser()
    model = cache / f"tiny-sd15-{version}" / "model"
    data = tmp_path_factory.mktemp("data") / "thing"
    proc = subprocess.run(
        [sys.executable, str(writer), str(model), str(data)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return model, data


def write_config(
    path: Path, root: Path, model: Path, data: Path, epochs: int, continue_last_backup: bool, **changes
) -> Path:
    config = {
        "__version": 11,  # no migrations for a hand-written config
        "training_method": "LORA",
        "model_type": "STABLE_DIFFUSION_15",
        "base_model_name": str(model),
        "workspace_dir": str(root / "workspace"),
        "cache_dir": str(root / "cache"),
        "output_model_destination": str(root / "out"),
        "output_model_format": "INTERNAL",
        "offline_mode": True,
        # GenericTrainer.__init__ creates the SummaryWriter under workspace/tensorboard whatever this says;
        # `tensorboard: true` would only also start a tensorboard server subprocess
        "tensorboard": False,
        "train_device": "cpu",
        "temp_device": "cpu",
        "train_dtype": "FLOAT_32",
        "fallback_train_dtype": "FLOAT_32",
        "output_dtype": "FLOAT_32",
        "lora_weight_dtype": "FLOAT_32",
        "unet": {"weight_dtype": "FLOAT_32"},
        "text_encoder": {"weight_dtype": "FLOAT_32", "train": False},
        "vae": {"weight_dtype": "FLOAT_32"},
        "resolution": "64",
        "batch_size": 1,
        "gradient_accumulation_steps": GA,
        "epochs": epochs,
        "dataloader_threads": 1,
        "learning_rate": 1e-3,
        "learning_rate_warmup_steps": 0,
        "lora_rank": 4,
        "sample_after_unit": "NEVER",
        "save_every_unit": "NEVER",
        "backup_after": 4,
        "backup_after_unit": "STEP",
        "backup_before_save": True,  # mid-run backups and one at the end
        "continue_last_backup": continue_last_backup,
        "mse_strength": 0.4,
        "mae_strength": 0.4,
        "cos_strength": 0.2,
        # validation after every epoch: its deterministic draws and no-grad losses must stay out of the clusters
        "validation": True,
        "validate_after": 1,
        "validate_after_unit": "EPOCH",
        "concepts": [
            {"name": "thing", "path": str(data), "seed": 0},
            {"name": "held_out", "path": str(data), "seed": 1, "type": "VALIDATION"},
        ],
        "samples": [],
        "optimizer": {
            "optimizer": "LOLI_CLUSTERED",
            "loli_inner": "ADAMW",
            "loli_clusters": K,
            "loli_schedule": "shuffle",
            "fused": False,
            "foreach": False,
            "stochastic_rounding": False,
        },
        # the progress probe after every update, on the first training image
        "loli_probe": "auto",
        "loli_probe_every": 1,
        "loli_probe_samples": 1,
    }
    config.update(changes)
    path.write_text(json.dumps(config, indent=1))
    return path


#: scripts/train.py with torch's, numpy's and Python's global generators seeded first. OneTrainer has no seed
#: option and torch (2.13 and later) seeds its global generator at random when it starts, so OneTrainer's LoRA
#: initialisation differs from run to run; a test that compares two runs step for step starts them seeded.
SEEDED = (
    "import os, random, runpy, sys; import numpy, torch; "
    "torch.manual_seed(0); random.seed(0); numpy.random.seed(0); "
    "sys.path.insert(0, os.path.abspath('scripts')); sys.argv = ['scripts/train.py', *sys.argv[1:]]; "
    "runpy.run_path('scripts/train.py', run_name='__main__')"
)


def train(config: Path, log: Path, seeded: bool = False) -> str:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        PYTHONPATH=os.pathsep.join(
            [str(OT_DIR), str(MGDS_DIR / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])
        ),
    )
    script = ["-c", SEEDED] if seeded else ["scripts/train.py"]
    proc, wall, cpu = run_measured(
        [sys.executable, *script, "--config-path", str(config)],
        cwd=OT_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    log.write_text(text)
    log.with_suffix(".cpu").write_text(f"{cpu:.2f}")  # the CPU seconds of the run (the validation's cost)
    print(
        f"\n{config.name}: scripts/train.py exited {proc.returncode} after {wall:.1f} s, {cpu:.1f} s CPU (log: {log})"
    )
    assert proc.returncode == 0, text[-6000:]
    return text


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from loli_plugin.plot import read_scalars

    return read_scalars(run_dir)


def backup_step(backup: Path) -> int:
    """OneTrainer names a backup ``<timestamp>-backup-<global_step>-<epoch>-<epoch_step>``."""
    match = re.search(r"-backup-(\d+)-\d+-\d+$", backup.name)
    assert match, backup.name
    return int(match.group(1))


def last_backup(workspace: Path) -> Path:
    return max((workspace / "backup").iterdir(), key=backup_step)


def show(title: str, logs: dict, saved: dict) -> None:
    print(f"--- {title}: TensorBoard scalars (step, value)")
    for tag in sorted(t for t in logs if t.startswith(("loss/", "loli/"))):
        print(f"  {tag:29s} " + ", ".join(f"({s}, {v:.4f})" for s, v in logs[tag]))
    print(f"  optimizer.pt loli: {saved['loli']}")
    print(f"  optimizer.pt loli_monitor: {saved['loli_monitor']}")
    print(
        f"  param_group_mapping={saved['param_group_mapping']} "
        f"param_group_optimizer_mapping={saved['param_group_optimizer_mapping']}"
    )


def check_run(logs: dict, saved: dict, updates: int) -> list[int]:
    """Checks shared by both runs; returns the cluster of each of this run's updates."""
    cluster_tags = sorted(t for t in logs if t.startswith("loss/cluster_"))
    assert len(cluster_tags) >= 2 and set(cluster_tags) <= {f"loss/cluster_{k:02d}" for k in range(K)}, sorted(logs)
    assert "loli/cluster" in logs and "loss/train_step" in logs, sorted(logs)
    assert "loss/validation_step/held_out" in logs, sorted(logs)
    # one report per optimizer update, at OneTrainer's own step (the micro-step that ends the update)
    steps = [s for s, _ in logs["loss/train_step"]]
    assert len(steps) == updates and [s for s, _ in logs["loli/cluster"]] == steps
    assert all((s + 1) % GA == 0 for s in steps)
    assert all(torch.isfinite(torch.tensor([v for _, v in logs[t]])).all() for t in cluster_tags)
    assert saved["loli"]["clusters"] == K and saved["loli"]["inner"] == "ADAMW"
    assert saved["loli"]["schedule"]["strategy"] == "shuffle"
    assert saved["param_group_mapping"] == ["unet_lora"]
    assert saved["param_group_optimizer_mapping"] == ["LOLI_CLUSTERED"] * len(saved["param_group_mapping"])
    # every training micro-batch loss (and no validation loss) was filed under the cluster whose bank its
    # update stepped
    monitor = saved["loli_monitor"]
    assert monitor["count"] == [GA * n for n in saved["loli"]["bank_steps"]]
    assert monitor["step"] == GA * saved["loli"]["schedule"]["step"]
    # AdamW's own step counter in each bank is that bank's update count
    for per_cluster in saved["state"].values():
        for k, st in per_cluster.items():
            assert int(st["step"]) == saved["loli"]["bank_steps"][k]
    return [int(v) for _, v in logs["loli/cluster"]]


@pytest.fixture(scope="module")
def first_run(assets, tmp_path_factory):
    model, data = assets
    root = tmp_path_factory.mktemp("ot_run")
    text = train(write_config(root / "config.json", root, model, data, EPOCHS, False), root / "train.log")
    (tb,) = (root / "workspace" / "tensorboard").iterdir()
    backup = last_backup(root / "workspace")
    saved = torch.load(backup / "optimizer" / "optimizer.pt", weights_only=True)
    return root, text, scalars(tb), backup, saved


@pytest.fixture(scope="module")
def resumed_run(assets, first_run):
    model, data = assets
    root, end_backup = first_run[0], first_run[3]
    # OneTrainer continues from the backup whose folder name sorts last; the names start with a timestamp
    # in whole seconds and carry an unpadded step, so a periodic backup taken in the same second as the
    # final one would sort after it ("...-backup-8-..." > "...-backup-12-..."). Keep only the final one.
    (root / "earlier_backups").mkdir(exist_ok=True)
    for backup in (root / "workspace" / "backup").iterdir():
        if backup != end_backup:
            shutil.move(str(backup), str(root / "earlier_backups" / backup.name))
    before = set((root / "workspace" / "tensorboard").iterdir())
    text = train(write_config(root / "config2.json", root, model, data, MORE_EPOCHS, True), root / "train2.log")
    (tb,) = set((root / "workspace" / "tensorboard").iterdir()) - before
    backup = last_backup(root / "workspace")
    saved = torch.load(backup / "optimizer" / "optimizer.pt", weights_only=True)
    return text, scalars(tb), backup, saved


def test_train_py_runs_loli_clustered(first_run):
    root, text, logs, backup, saved = first_run
    show(f"first run ({EPOCHS} epochs), backup {backup.name}", logs, saved)
    assert STARTED in text
    assert "Could not set" not in text  # every plugin key of the JSON config was known
    updates = EPOCHS * 4 // GA
    clusters = check_run(logs, saved, updates)
    # shuffle: every cluster once in the first K updates
    assert sorted(clusters[:K]) == list(range(K))
    assert [Counter(clusters)[k] for k in range(K)] == saved["loli"]["bank_steps"]
    assert saved["loli"]["schedule"]["step"] == updates and sum(saved["loli"]["bank_steps"]) == updates
    assert {f"loss/cluster_{k:02d}" for k in range(K)} <= set(logs) and "loss/normalized" in logs
    # the mid-run backups (backup_after 4 steps, taken right after an update) and the one before saving
    # all carry the plugin's state as it was at their step
    backups = sorted((root / "workspace" / "backup").iterdir(), key=backup_step)
    assert [backup_step(b) for b in backups] == [4, 8, 12] and backups[-1] == backup
    for b in backups:
        state = torch.load(b / "optimizer" / "optimizer.pt", weights_only=True)
        updates_done = backup_step(b) // GA
        assert state["loli"]["clusters"] == K and state["loli"]["schedule"]["step"] == updates_done
        assert state["loli"]["bank_steps"] == [Counter(clusters[:updates_done])[k] for k in range(K)]


def test_continue_from_last_backup_continues_the_schedule(first_run, resumed_run):
    _, _, logs1, backup1, saved1 = first_run
    text, logs, backup, saved = resumed_run
    show(f"continued run ({MORE_EPOCHS} epochs), backup {backup.name}", logs, saved)
    assert f"Continuing training from backup '{backup1}'" in text
    assert STARTED in text and "starts fresh" not in text
    more = (MORE_EPOCHS - EPOCHS) * 4 // GA
    clusters = check_run(logs, saved, more)
    # the OneTrainer step counter went on, and so did the plugin's schedule, banks and loss history
    assert logs["loss/train_step"][0][0] > logs1["loss/train_step"][-1][0]
    step1, step2 = saved1["loli"]["schedule"]["step"], saved["loli"]["schedule"]["step"]
    banks1, banks2 = saved1["loli"]["bank_steps"], saved["loli"]["bank_steps"]
    print(
        f"  schedule step {step1} -> {step2}; bank_steps {banks1} -> {banks2}; "
        f"loss counts {saved1['loli_monitor']['count']} -> {saved['loli_monitor']['count']}; "
        f"clusters of the new updates {clusters}"
    )
    assert step2 == step1 + more
    assert [b - a for a, b in zip(banks1, banks2)] == [Counter(clusters)[k] for k in range(K)]
    # shuffle: updates 4..7 are one permutation of the clusters, split over the two runs
    first_clusters = [int(v) for _, v in logs1["loli/cluster"]]
    assert sorted((first_clusters + clusters)[K : 2 * K]) == list(range(K))
    # a bank no update of the continued run touched is saved again exactly as it was loaded
    untouched = [k for k in range(K) if banks1[k] == banks2[k]]
    for idx, per_cluster in saved["state"].items():
        for k in untouched:
            for key, value in per_cluster[k].items():
                assert torch.equal(value, saved1["state"][idx][k][key]), (idx, k, key)
    print(f"  banks carried over unchanged (bit for bit): {untouched}")
    # the per-cluster loss of clusters not yet drawn again is reported from the loaded history
    for k in range(K):
        tag = f"loss/cluster_{k:02d}"
        if k != clusters[0] and tag in logs1:
            assert logs[tag][0][1] == pytest.approx(logs1[tag][-1][1], rel=1e-6), tag


def test_lr_report_of_an_adaptive_inner_is_its_effective_lr(ot):
    """OneTrainer writes ``lr/<group>`` through ``Optimizer.maybe_adjust_lrs``: ``lr * d`` for PRODIGY. For
    LOLI_CLUSTERED(PRODIGY) it must be the same effective lr (the d of the cluster that steps next), not the
    raw lr of 1.0."""
    from modules.util.NamedParameterGroup import NamedParameterGroup, NamedParameterGroupCollection

    def build(name, inner):
        cfg = ot.TrainConfig.default_values()
        cfg.optimizer.optimizer = ot.Optimizer[name]
        cfg.optimizer.from_dict(
            {"loli_inner": inner, "loli_clusters": 2, "fused": False, "foreach": False, "stochastic_rounding": False}
        )
        cfg.learning_rate = 1.0
        coll = NamedParameterGroupCollection()
        coll.add_group(
            NamedParameterGroup(
                "unet", [torch.nn.Parameter(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)))], 1.0
            )
        )
        opt = ot.create.create_optimizer(coll, None, cfg)
        for s in range(3):
            for p in opt.param_groups[0]["params"]:
                p.grad = torch.sin(p.detach() * (s + 1))
            opt.step()
            opt.zero_grad()
        return cfg.optimizer.optimizer.maybe_adjust_lrs({"unet": 1.0}, opt), opt

    reported, opt = build("LOLI_CLUSTERED", "PRODIGY")
    assert reported["unet"] == pytest.approx(opt.param_groups[0]["d"]) and reported["unet"] < 1e-3
    # a non-adaptive inner reports the lr unchanged, as OneTrainer does for it
    assert build("LOLI_CLUSTERED", "ADAMW")[0] == {"unet": 1.0}


# ----------------------------------------------------------------------------- the progress probe
PROBE_TAGS = {f"probe/cluster_{k:02d}" for k in range(K)} | {"probe/mean", "probe/normalized"}


def probe_rows(logs: dict) -> list[tuple[int, list[float]]]:
    return [(step, [dict(logs[f"probe/cluster_{k:02d}"])[step] for k in range(K)]) for step, _ in logs["probe/mean"]]


def test_the_probe_reaches_tensorboard_and_moves_with_training(first_run):
    _, _, logs, _, saved = first_run
    assert PROBE_TAGS <= set(logs), sorted(logs)
    rows = probe_rows(logs)
    # after every update, at OneTrainer's own step; the first probe is the reference (OneTrainer has no
    # earlier point with the model and a batch: it comes after the first update)
    assert [s for s, _ in rows] == [s for s, _ in logs["loss/train_step"]]
    assert logs["probe/normalized"][0][1] == 1.0 and all(len(set(v)) == K for _, v in rows)
    assert rows[0][1] != rows[1][1]  # one optimizer step on the probe's sample changed it
    state = saved["loli_probe"]  # rides in the backup's optimizer.pt
    assert (
        state["clusters"] == K
        and state["reference"] == pytest.approx(rows[0][1], rel=1e-6)
        and len(state["batches"]) == 1
    )


def test_continuing_from_a_backup_continues_the_probe_curves(first_run, resumed_run):
    _, _, logs1, _, saved1 = first_run
    _, logs, _, saved = resumed_run
    assert PROBE_TAGS <= set(logs)
    # the reference and the kept sample came back with the backup: no new start at 1.0
    assert saved["loli_probe"]["reference"] == saved1["loli_probe"]["reference"]
    assert all(v != 1.0 for _, v in logs["probe/normalized"])
    assert torch.equal(
        saved["loli_probe"]["batches"][0]["latent_image"], saved1["loli_probe"]["batches"][0]["latent_image"]
    )


def test_two_probes_with_unchanged_weights_are_bit_identical(assets, tmp_path):
    model, data = assets
    train(
        write_config(tmp_path / "config.json", tmp_path, model, data, 2, False, learning_rate=0.0, validation=False),
        tmp_path / "train.log",
    )
    (tb,) = (tmp_path / "workspace" / "tensorboard").iterdir()
    rows = probe_rows(scalars(tb))
    assert len(rows) == 4 and all(values == rows[0][1] for _, values in rows)
