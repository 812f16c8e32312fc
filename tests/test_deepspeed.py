"""LoliClustered as DeepSpeed ZeRO's basic optimizer, 2 gloo ranks on CPU, through accelerate's DeepSpeed plugin
(as sd-scripts' ``--deepspeed`` builds it). ``multiprocess/zero_loop.py`` is the training loop; each test launches
it with ``torch.distributed.run`` and reads rank 0's verdict. ZeRO-1/2 need nothing but LoliClustered; ZeRO-3
needs ``loli_plugin.deepspeed.bind(engine)``.

Tolerances: ZeRO and DDP reduce gradients in a different order (ZeRO averages flat buckets, DDP its own
buckets), so their weights and banks agree to float32 rounding, not bit for bit; measured on this machine
(DeepSpeed 0.19.8, torch 2.13 CPU), 8 optimizer steps: weights 1.5e-7 and banks 3.5e-7 of each tensor's
largest magnitude. The tests allow 1e-5. A resumed run equals the uninterrupted one bit for bit.
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

pytest.importorskip(
    "deepspeed",
    reason="DeepSpeed is not installed: pip install 'loli-plugin[deepspeed]' (or DS_BUILD_OPS=0 pip install deepspeed)",
)

LOOP = Path(__file__).parent / "multiprocess" / "zero_loop.py"
TOLERANCE = 1e-5  # relative to each tensor's largest magnitude; measured 1.5e-7 (weights), 3.5e-7 (banks)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_loop(out: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(_free_port()), str(LOOP), str(out), *args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=out.parent, env=env)


def launch(out: Path, *args: str) -> dict:
    proc = run_loop(out, *args)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    result["tensors"] = torch.load(str(out) + ".pt", weights_only=True)
    return result


@pytest.fixture(scope="module")
def zero_and_ddp(tmp_path_factory):
    """ZeRO-1 and ZeRO-2 runs of 8 optimizer steps, each followed by the same training under plain DDP."""
    runs = {}
    for stage in (1, 2):
        folder = tmp_path_factory.mktemp(f"zero{stage}")
        runs[stage] = launch(folder / "result.json", "--stage", str(stage), "--ddp", "--steps", "8")
    return runs


def _same_schedule_everywhere(result, steps):
    assert result["world"] == 2 and result["mismatches"] == 0  # every micro-batch: one cluster on all ranks
    first, *others = result["steps_per_rank"]
    assert all(o == first for o in others)  # schedule position and per-bank step counts, rank by rank
    assert first[0] == result["schedule_step"] == steps and sum(first[1:]) == steps
    clusters = result["clusters"]
    assert all(clusters[i] == clusters[i + 1] for i in range(0, len(clusters), 2))  # both micro-batches of a window


@pytest.mark.parametrize("stage", [1, 2])
def test_zero_equals_ddp_and_keeps_one_cluster_per_step_on_every_rank(zero_and_ddp, stage):
    result = zero_and_ddp[stage]
    assert result["optimizer_class"] == "DeepSpeedZeroOptimizer"
    _same_schedule_everywhere(result, 8)
    # ZeRO steps the two param groups one at a time: still one optimizer step each, as under DDP
    assert result["global_steps"] == 8 and result["skipped_steps"] == 0
    assert result["bank_steps"] == result["ddp"]["bank_steps"]
    assert result["ddp"]["clipped"] > 0  # clipping at 1.0 was active, so DeepSpeed's clipping is compared too
    diff = result["zero_vs_ddp"]
    print(f"ZeRO-{stage} vs DDP, 8 steps, largest relative difference: {diff}")
    assert diff["params_max_rel"] < TOLERANCE and diff["banks_max_rel"] < TOLERANCE, diff


@pytest.mark.parametrize("stage", [1, 2])
def test_each_rank_keeps_its_share_of_every_bank(zero_and_ddp, stage):
    """ZeRO hands each rank a flat partition of each group; LoliClustered banks only that partition."""
    result = zero_and_ddp[stage]
    full, parts = result["full_numel"], result["partition_numel"]
    assert len(parts) == 2 and 2 * sum(parts) >= full and sum(parts) <= full // 2 + 8  # half, up to alignment padding
    # every bank (K=3, all stepped): AdamW's exp_avg and exp_avg_sq (fp32) of each flat partition, and its step
    assert result["bank_bytes_per_rank"] == [3 * (2 * 4 * sum(parts) + 4 * len(parts))] * 2
    assert result["ddp"]["bank_bytes"] == 3 * (2 * 4 * full + 4 * 4)  # DDP: the whole model's, four tensors


def test_zero3_bound_steps_every_sub_group_on_one_bank_and_equals_ddp(tmp_path):
    """ZeRO-3 steps the basic optimizer once per parameter sub-group (here 4: sub_group_size=100), with nothing
    to tell the last one; loli_plugin.deepspeed.bind(engine) makes all of them one step."""
    result = launch(tmp_path / "zero3.json", "--stage", "3", "--bind", "--sub-group-size", "100", "--ddp")
    assert result["optimizer_class"] == "DeepSpeedZeroOptimizer_Stage3"
    assert len(result["partition_numel"]) == 4  # four flat sub-groups per rank, so four calls per step
    _same_schedule_everywhere(result, 8)
    assert result["bank_steps"] == result["ddp"]["bank_steps"]
    diff = result["zero_vs_ddp"]
    assert diff["params_max_rel"] < TOLERANCE and diff["banks_max_rel"] < TOLERANCE, diff


def test_zero3_unbound_is_refused_at_its_first_call(tmp_path):
    out = tmp_path / "unbound.json"
    proc = run_loop(out, "--stage", "3", "--steps", "1")
    assert proc.returncode != 0 and not out.exists()
    assert "without loli_plugin.deepspeed.bind(engine)" in proc.stdout + proc.stderr


def test_resume_through_deepspeed_checkpoints_with_optimizer_offload(zero_and_ddp, tmp_path):
    """accelerate's save_state/load_state write and read DeepSpeed's checkpoint: each rank's partition of
    every bank, the schedule, the step counts. Half a run, saved, then resumed in new processes, equals the
    uninterrupted ZeRO-2 run bit for bit; the halves run with ZeRO-Offload (the banks step on the host,
    LoliClustered kept: zero_force_ds_cpu_optimizer=false), which changes no arithmetic."""
    checkpoint = tmp_path / "checkpoint"
    launch(tmp_path / "first.json", "--stage", "2", "--steps", "4", "--offload", "--save", str(checkpoint))
    assert sorted(p.name for p in (checkpoint / "pytorch_model").glob("zero_pp_rank_*_optim_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    resumed = launch(
        tmp_path / "resumed.json",
        "--stage",
        "2",
        "--from-step",
        "4",
        "--steps",
        "4",
        "--offload",
        "--load",
        str(checkpoint),
    )
    straight = zero_and_ddp[2]
    _same_schedule_everywhere(resumed, 8)
    assert resumed["bank_steps"] == straight["bank_steps"] and resumed["global_steps"] == 8
    assert resumed["clusters"] == straight["clusters"][8:]
    for name in ("params", "banks"):
        assert all(torch.equal(a, b) for a, b in zip(straight["tensors"][name], resumed["tensors"][name])), name


def test_a_step_deepspeed_skips_does_not_advance_the_schedule_on_any_rank(tmp_path):
    """fp16 with a loss scale of 2**20: the first steps overflow and DeepSpeed skips them; in window 5 rank 1
    alone gets an infinite loss, and DeepSpeed skips that step on both ranks. No bank steps on a skipped
    step, the schedule stays, and the next window draws from the same cluster again."""
    result = launch(tmp_path / "fp16.json", "--stage", "2", "--fp16", "--steps", "10")
    windows = result["windows"]
    skipped = [w["skipped"] for w in windows]
    assert skipped[5] and sum(skipped) == result["skipped_steps"] >= 2, windows
    _same_schedule_everywhere(result, 10 - result["skipped_steps"])
    assert result["global_steps"] == 10
    for before, after in zip(windows, windows[1:]):
        if before["skipped"]:
            assert after["cluster"] == before["cluster"]
