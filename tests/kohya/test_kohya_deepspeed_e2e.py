"""The real ``train_network.py --deepspeed`` with ``--optimizer_type LoliClustered`` on CPU (DS_ACCELERATOR=cpu,
gloo): two ranks under ZeRO-2 (each rank banks its half of the LoRA; LoRA+ gives two param groups, which ZeRO
steps one at a time), and one rank through sd-scripts' own ``--save_state`` / ``--resume`` (DeepSpeed's
checkpoint). Same SD1.x test model and options as test_kohya_train_network_e2e.py.

Why the resume runs on one rank: sd-scripts' NetworkTrainer.train (train_network.py and every LoRA script)
calls ``accelerator.save_state`` on the main process only, while DeepSpeed's ``save_checkpoint`` must run on
every rank (sd-scripts issue #1247; its fix reached fine_tune.py and the full fine-tune scripts, not
NetworkTrainer). loli-plugin refuses that combination before training (test_kohya_options.py); the two-rank
resume through DeepSpeed's checkpoint is tested without sd-scripts in tests/test_deepspeed.py.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ..trainer_support import logged_scalars as scalars
from ..trainer_support import run_logged
from .conftest import KOHYA_DIR
from .test_kohya_train_network_e2e import K, train_args

pytest.importorskip("deepspeed", reason="DeepSpeed is not installed in this venv: DS_BUILD_OPS=0 pip install deepspeed")

LAUNCH = Path(__file__).parent / "deepspeed_launch.py"


def launch(assets: Path, out: Path, ranks: int, *extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks), "--master_port", str(port)]
    cmd += [str(LAUNCH), str(out), "train_network.py", *train_args(assets, out, "--deepspeed", *extra)]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    proc = run_logged(cmd, KOHYA_DIR, out, env=env)
    return proc, [json.loads((out / f"rank{r}.json").read_text()) for r in range(ranks)]


@pytest.fixture(scope="module")
def zero2(sd1_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("zero2")
    return (out, *launch(sd1_assets, out, 2, "--zero_stage", "2", "--network_args", "loraplus_unet_lr_ratio=4"))


def test_two_ranks_draw_one_cluster_per_step_and_each_banks_half_of_the_lora(zero2):
    out, proc, ranks = zero2
    assert (proc.stdout + proc.stderr).count("loli-plugin active") == 2  # one line per rank
    first, second = ranks
    assert first["groups"] == 2  # LoRA+: ZeRO steps the two groups one at a time, still one step
    # 4 optimizer steps, K=4 and the shuffle schedule: each cluster once, the same sequence on both ranks
    assert first["steps"] == second["steps"] and sorted(first["steps"]) == list(range(K))
    for rank in ranks:
        assert rank["schedule_step"] == 4 and rank["bank_steps"] == [1] * K
        # 2 micro-batches per step (gradient accumulation 2), both drawn from that step's cluster, never mid-step
        assert rank["draws"] == [[k, False] for k in rank["steps"] for _ in range(2)]
    from safetensors.torch import load_file

    lora = sum(t.numel() for t in load_file(out / "out" / "lora.safetensors").values())
    for k in range(K):  # ZeRO-2: a half of the flat LoRA on each rank (up to its alignment padding)
        assert first["bank_weights"][k] + second["bank_weights"][k] >= lora
        assert max(first["bank_weights"][k], second["bank_weights"][k]) <= lora // 2 + 16


def test_two_ranks_log_the_loli_loss_clusters_and_probe(zero2):
    out, _, ranks = zero2
    logs = scalars(out / "logs")
    assert sorted({int(v) for _, v in logs["loli/cluster"]}) == sorted(ranks[0]["steps"]) == list(range(K))
    assert len([t for t in logs if t.startswith("loss/cluster_")]) == K
    normalized = [v for _, v in logs["probe/normalized"]]  # the reference, then after steps 2 and 4
    assert len(normalized) == 3 and normalized[0] == 1.0 and normalized[1] != 1.0


@pytest.fixture(scope="module")
def one_rank_saved(sd1_assets, tmp_path_factory):
    out = tmp_path_factory.mktemp("saved")
    return (out, *launch(sd1_assets, out, 1, "--zero_stage", "2", "--save_state", "--save_every_n_steps", "2"))


def test_sd_scripts_save_state_writes_the_banks_into_deepspeeds_checkpoint(one_rank_saved):
    out, _, (rank,) = one_rank_saved
    saved = out / "out" / "lora-step00000002-state" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"
    zero = torch.load(saved, weights_only=False)["optimizer_state_dict"]  # DeepSpeed's own pickle
    banks = zero["base_optimizer_state"]
    assert banks["loli"]["clusters"] == K and banks["loli"]["schedule"]["step"] == 2
    assert sum(banks["loli"]["bank_steps"]) == 2 and banks["loli_probe"]["steps"] == 2
    assert rank["schedule_step"] == 4


def test_resume_through_deepspeeds_checkpoint_continues_every_bank_and_the_schedule(
    one_rank_saved, sd1_assets, tmp_path
):
    out, _, (straight,) = one_rank_saved
    state = out / "out" / "lora-step00000002-state"
    _, (resumed,) = launch(
        sd1_assets, tmp_path, 1, "--zero_stage", "2", "--resume", str(state), "--skip_until_initial_step"
    )
    assert resumed["bank_steps"] == straight["bank_steps"] and resumed["schedule_step"] == 4
    assert resumed["steps"] == straight["steps"][2:]  # steps 3 and 4 train the clusters they trained before
    from safetensors.torch import load_file

    a, b = load_file(out / "out" / "lora.safetensors"), load_file(tmp_path / "out" / "lora.safetensors")
    worst = max(float((a[key].float() - b[key].float()).abs().max()) for key in a)
    print(f"resumed vs uninterrupted LoRA, largest difference: {worst:.3g}")
    assert worst == 0.0
