"""A real `accelerate launch --num_processes 2` run (gloo on CPU) with LoliClustered and the cluster
sampler: same cluster on every rank at every step, averaged gradients, identical banks; the validation
logs the mean over ranks."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.parametrize("accum", [1, 2])
def test_two_processes_agree_on_clusters_params_and_banks(tmp_path, accum):
    out = tmp_path / "result.json"
    # `--multi_gpu` selects accelerate's torchrun launcher (`--cpu` would start one process); with no GPU
    # the script's Accelerator(cpu=True) forms a gloo process group on the CPU
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--multi_gpu",
        "--main_process_port",
        str(29500 + 7 * accum + os.getpid() % 500),
        str(HERE / "multiprocess" / "ddp_loop.py"),
        str(out),
        str(accum),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    result = json.loads(out.read_text())
    assert result["world"] == 2 and result["mismatches"] == 0
    # the validation: each rank measured its own held-out samples; every rank logs the mean over ranks
    assert result["validation"] == {"mean_over_ranks": True, "same_on_every_rank": True, "ranks_differ": True}
    assert result["same_params"] and result["same_banks"]  # DDP averaged the gradients; banks evolved identically
    assert sum(result["bank_steps"]) == 12 and set(result["bank_steps"]) <= {
        2,
        3,
    }  # shuffle: each cluster once per 5 steps
    # all micro-batches of one optimizer step drew from the same cluster
    assert all(len(set(result["clusters"][i : i + accum])) == 1 for i in range(0, len(result["clusters"]), accum))


def test_resume_in_a_new_process_equals_an_uninterrupted_run(tmp_path):
    script = str(HERE / "multiprocess" / "resume_loop.py")
    state = str(tmp_path / "state")

    def run(out, start, stop, *extra):
        proc = subprocess.run(
            [sys.executable, script, str(tmp_path / out), state, str(start), str(stop), *extra],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        return __import__("torch").load(tmp_path / out, weights_only=True)

    straight = run("straight.pt", 0, 10)
    run("first_half.pt", 0, 5, "--save")
    resumed = run("resumed.pt", 5, 10)
    import torch

    assert all(torch.equal(a, b) for a, b in zip(straight["params"], resumed["params"]))
    assert (
        straight["bank_steps"] == resumed["bank_steps"] and straight["schedule_step"] == resumed["schedule_step"] == 10
    )
    assert straight["lr"] == resumed["lr"]
