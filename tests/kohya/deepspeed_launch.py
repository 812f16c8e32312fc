"""``deepspeed_launch.py OUT_DIR SCRIPT ARGS...``: run an sd-scripts script (unchanged, as ``__main__``) in this
rank's process, as ``python SCRIPT ARGS...`` would, and write what this rank's LoliClustered did to
``OUT_DIR/rank<R>.json``. Started by ``torch.distributed.run`` for the ``--deepspeed`` tests on CPU.

Two things differ from a plain start, neither in sd-scripts: DeepSpeed's CPU accelerator does not compile its
shared-memory all-reduce kernel (minutes of g++ on a 2-core machine; gloo carries every collective here), and
an observer (the ``loli_optimizer_created`` hook any plugin may implement) records, on this rank: the cluster
of every training draw, whether the optimizer was in the middle of a step then, the cluster of every
completed optimizer step, the bank step counts and how many weights each bank holds here."""

from __future__ import annotations

import importlib
import json
import os
import runpy
import sys

import torch

out_dir, script, *args = sys.argv[1:]
importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # see the docstring

from loli_plugin import get_plugin_manager, hookimpl  # noqa: E402

record: dict = {"draws": [], "steps": []}
kept: list = []


class Observer:
    @hookimpl
    def loli_optimizer_created(self, optimizer):
        kept.append(optimizer)
        optimizer.register_step_complete_hook(
            lambda opt: record["steps"].append(opt.schedule.cluster_at(opt.schedule.step - 1))
        )
        from loli_plugin.adapters.kohya import ADAPTER

        run = ADAPTER.run  # the adapter activated the run before observers hear of the optimizer
        take = run.take_cluster

        def take_cluster():
            k = take()
            record["draws"].append([k, optimizer.mid_step])
            return k

        run.take_cluster = take_cluster


get_plugin_manager().register(Observer())
sys.argv = [script, *args]
sys.path[0] = os.path.dirname(os.path.abspath(script))  # as `python SCRIPT` has it
runpy.run_path(script, run_name="__main__")

opt = kept[-1]
record.update(
    rank=int(os.environ.get("RANK", 0)),
    world=int(os.environ.get("WORLD_SIZE", 1)),
    bank_steps=opt.bank_steps,
    schedule_step=opt.schedule.step,
    groups=len(opt.param_groups),
    # exp_avg of every bank on this rank, in weights (ZeRO: this rank's partition of each param group)
    bank_weights=[
        sum(s["exp_avg"].numel() for s in opt.bank(k).values() if "exp_avg" in s) for k in range(opt.clusters)
    ],
)
with open(os.path.join(out_dir, f"rank{record['rank']}.json"), "w") as f:
    json.dump(record, f)
if torch.distributed.is_initialized():
    torch.distributed.barrier()
