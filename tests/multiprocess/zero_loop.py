"""Run under ``python -m torch.distributed.run --nproc_per_node 2`` (gloo on CPU, ``DS_ACCELERATOR=cpu``):
LoliClustered as the basic optimizer of DeepSpeed ZeRO through accelerate's DeepSpeed plugin (the way
sd-scripts' ``--deepspeed`` builds it: ``Accelerator(deepspeed_plugin=...)``, ``accelerator.prepare``,
``accelerator.backward``; accelerate's ``DeepSpeedOptimizerWrapper.step`` is a no-op and the engine steps
inside ``backward`` at the end of each gradient-accumulation window), with one-cluster timestep draws and
the Loli loss. Optionally the same training under plain torch DDP in the same processes, for comparison.

``zero_loop.py OUT --stage S [--steps N] [--from-step N] [--load DIR] [--save DIR] [--ddp] [--fp16] [--offload]
[--clusters K] [--bind] [--sub-group-size N]`` writes rank 0's JSON verdict to OUT:

* every micro-batch, all ranks check (all_gather) that they draw from the same cluster;
* at the end, each rank's banks are gathered into full-length tensors (ZeRO keeps 1/N of each on a rank);
  with ``--ddp`` they are compared with the DDP run's banks, and the weights with the DDP weights;
* per-rank optimizer-state bytes (every tensor of every bank) for ZeRO and DDP;
* ``--fp16``: DeepSpeed's dynamic loss scale starts at 2**24 (the first steps overflow and are skipped)
  and rank 1 alone gets an infinite loss in one later window: DeepSpeed skips those steps on every rank,
  and the schedule must not advance on them.

Data depend only on (rank, micro-batch index), so a run resumed from ``--load`` sees what an uninterrupted
one saw.
"""

from __future__ import annotations

import argparse
import json
import os

import torch

# see ddp_loop.py: imported before any process group exists, so its default arguments hold none
import torch.distributed.nn  # noqa: F401

ACCUM, BATCH, LRS = 2, 4, (1e-2, 5e-3)
INF_WINDOW = 5  # --fp16: the window in which rank 1's loss is infinite


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--stage", type=int, default=1)
    p.add_argument("--steps", type=int, default=8, help="optimizer steps (windows) to run, from --from-step")
    p.add_argument("--from-step", dest="start", type=int, default=0)
    p.add_argument("--load")
    p.add_argument("--save")
    p.add_argument("--ddp", action="store_true")
    p.add_argument("--fp16", action="store_true")
    p.add_argument("--offload", action="store_true")
    p.add_argument("--clusters", type=int, default=3)
    p.add_argument("--sub-group-size", type=int, default=0)
    p.add_argument("--bind", action="store_true", help="loli_plugin.deepspeed.bind(engine) after prepare")
    return p.parse_args()


def no_shm_kernel() -> None:
    """DeepSpeed's CPU accelerator compiles a shared-memory all-reduce kernel (g++, minutes on 2 cores) the
    first time a process group starts; gloo does everything here without it."""
    import importlib

    # by its sys.modules name: the attribute deepspeed.comm.torch is the torch package (a star import)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def allow_fp16_on_this_cpu() -> None:
    """DeepSpeed's CPU accelerator accepts fp16 only where oneDNN has fp16 kernels (AVX512-FP16/AMX); torch's
    own CPU fp16 kernels are slower but correct, and this tiny model needs nothing else."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    accelerator.is_fp16_supported = lambda: True


def build_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(9, 64), torch.nn.SiLU(), torch.nn.Linear(64, 8))


def build_optimizer(model, clusters):
    from loli_plugin import LoliClustered

    # two groups with their own LR, like sd-scripts' U-Net / text-encoder split: ZeRO-1/2 step them one by one
    groups = [{"params": model[0].parameters(), "lr": LRS[0]}, {"params": model[2].parameters(), "lr": LRS[1]}]
    return LoliClustered(groups, inner="AdamW", clusters=clusters, weight_decay=0.01)


def micro_batch(rank: int, micro: int, k: int, clusters: int, dtype=torch.float32):
    from loli_plugin.sampling import LogitNormal

    g = torch.Generator().manual_seed(10_000 * rank + micro)
    x0 = 3 * torch.randn(BATCH, 8, generator=g)  # large targets: the gradient norm is often above the clip of 1
    t = LogitNormal().sample_cluster(BATCH, k, clusters, generator=g)
    noise = torch.randn(BATCH, 8, generator=g)
    xt = (1 - t[:, None]) * x0 + t[:, None] * noise
    return torch.cat([xt, t[:, None]], dim=1).to(dtype), (noise - x0).to(dtype)


def loss_of(model, x, target):
    from loli_plugin import loli_loss

    return loli_loss(model(x).float(), target.float()).mean()


def ds_config(args) -> dict:
    zero = {"stage": args.stage}
    if args.sub_group_size:
        zero["sub_group_size"] = args.sub_group_size  # ZeRO-3: split each param group into several flat sub-groups
    if args.offload:
        # keep LoliClustered: accelerate would otherwise swap in DeepSpeedCPUAdam (map_pytorch_optim_to_deepspeed)
        zero["offload_optimizer"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": BATCH,
        "gradient_accumulation_steps": ACCUM,
        "gradient_clipping": 1.0,
        "zero_optimization": zero,
        "zero_force_ds_cpu_optimizer": False,
    }
    if args.fp16:
        config["fp16"] = {"enabled": True, "initial_scale_power": 20, "loss_scale_window": 1000, "hysteresis": 1}
    return config


def _all_gather(local: torch.Tensor, world: int) -> list[torch.Tensor]:
    parts = [torch.empty_like(local) for _ in range(world)]
    torch.distributed.all_gather(parts, local.contiguous())
    return parts


def gathered_banks(engine, opt, world) -> list[torch.Tensor]:
    """Per (bank, param group, key): exp_avg / exp_avg_sq of the group's weights, in order, gathered over the
    ranks. ZeRO-1/2: each rank's flat partition of the group; they concatenate to the (padded) flat group.
    ZeRO-3: each rank's flat sub-group holds its piece of each of its weights; the weights are put back
    together, and the sub-groups of a param group joined."""
    out = []
    zero3 = hasattr(engine.optimizer, "fp32_partitioned_groups_flat")
    for k in range(opt.clusters):
        if not zero3:
            for group in opt.param_groups:
                for p in group["params"]:
                    state = opt.bank(k).get(p, {})
                    for key in ("exp_avg", "exp_avg_sq"):
                        local = state[key].detach().float().flatten() if key in state else torch.zeros(p.numel())
                        out.append(torch.cat(_all_gather(local, world)))
            continue
        zero = engine.optimizer
        per_group: dict[int, dict[str, list[torch.Tensor]]] = {}
        for sub, (flat, weights) in enumerate(zip(zero.fp32_partitioned_groups_flat, zero.fp16_groups)):
            state = opt.bank(k).get(flat, {})
            for key in ("exp_avg", "exp_avg_sq"):
                local = state[key].detach().float() if key in state else torch.zeros(flat.numel())
                parts, offset = _all_gather(local, world), 0
                pieces = per_group.setdefault(zero.sub_group_to_group_id[sub], {}).setdefault(key, [])
                for w in weights:
                    n = w.partition_numel()
                    pieces.append(torch.cat([part[offset : offset + n] for part in parts])[: w.ds_numel])
                    offset += n
        for group in sorted(per_group):
            out += [torch.cat(per_group[group][key]) for key in ("exp_avg", "exp_avg_sq")]
    return out


def full_weights(engine) -> list[torch.Tensor]:
    params = list(engine.module.parameters())
    if not hasattr(params[0], "ds_id"):
        return [p.detach().float().clone() for p in params]
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):  # ZeRO-3 keeps only a piece of each weight on a rank
        return [p.detach().float().clone() for p in params]


def bank_bytes(opt) -> int:
    return sum(
        v.numel() * v.element_size()
        for k in range(opt.clusters)
        for st in opt.bank(k).values()
        for v in st.values()
        if torch.is_tensor(v)
    )


def run_zero(args, rank, world):
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=ds_config(args))
    accelerator = Accelerator(deepspeed_plugin=plugin, gradient_accumulation_steps=ACCUM)
    model = build_model()
    opt = build_optimizer(model, args.clusters)
    engine, wrapped = accelerator.prepare(model, opt)
    assert engine.basic_optimizer is opt, f"DeepSpeed steps {type(engine.basic_optimizer).__name__}, not LoliClustered"
    if args.bind:
        from loli_plugin.deepspeed import bind

        bind(engine)
    if args.load:
        accelerator.load_state(args.load)
    dtype = torch.float16 if args.fp16 else torch.float32
    mismatches, clusters, windows = 0, [], []
    for micro in range(ACCUM * args.start, ACCUM * (args.start + args.steps)):
        with accelerator.accumulate(engine):
            k = opt.current_cluster
            everyone = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
            torch.distributed.all_gather(everyone, torch.tensor([k]))
            mismatches += int(any(int(e) != k for e in everyone))
            clusters.append(k)
            x, target = micro_batch(rank, micro, k, args.clusters, dtype)
            loss = loss_of(engine, x, target)
            if args.fp16 and rank == 1 and micro // ACCUM == INF_WINDOW:
                loss = loss * float("inf")  # this rank alone overflows
            accelerator.backward(loss)
            wrapped.step()  # accelerate's DeepSpeedOptimizerWrapper: a no-op, the engine stepped in backward
            wrapped.zero_grad()
            if micro % ACCUM == ACCUM - 1:
                windows.append({"cluster": k, "skipped": bool(wrapped.step_was_skipped)})
    if args.save:
        accelerator.save_state(args.save)
    flat = full_weights(engine)
    # the basic optimizer's flat partitions (ZeRO-3 shows them to it only while stepping)
    flats = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None) or [
        p for g in opt.param_groups for p in g["params"]
    ]
    partition = [p.numel() for p in flats]
    full = sum(getattr(p, "ds_numel", p.numel()) for p in engine.module.parameters())
    return {
        "engine": engine,
        "opt": opt,
        "params": flat,
        "banks": gathered_banks(engine, opt, world),
        "mismatches": mismatches,
        "clusters": clusters,
        "windows": windows,
        "bank_steps": opt.bank_steps,
        "schedule_step": opt.schedule.step,
        "global_steps": engine.global_steps,
        "skipped_steps": engine.skipped_steps,
        "partition_numel": partition,
        "full_numel": full,
        "bank_bytes": bank_bytes(opt),
        "optimizer_class": type(engine.optimizer).__name__,
    }


def run_ddp(args, rank, world):
    model = build_model()
    opt = build_optimizer(model, args.clusters)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    clipped = 0
    for step in range(args.start, args.start + args.steps):
        k = opt.current_cluster
        for j in range(ACCUM):
            micro = ACCUM * step + j
            x, target = micro_batch(rank, micro, k, args.clusters)
            ctx = ddp.no_sync() if j < ACCUM - 1 else torch.enable_grad()
            with ctx:
                (loss_of(ddp, x, target) / ACCUM).backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        clipped += int(norm > 1.0)
        opt.step()
        opt.zero_grad()
    banks = []
    for k in range(opt.clusters):
        for group in opt.param_groups:
            flat = {}
            for key in ("exp_avg", "exp_avg_sq"):
                flat[key] = torch.cat(
                    [
                        opt.bank(k)[p][key].flatten() if p in opt.bank(k) else torch.zeros(p.numel())
                        for p in group["params"]
                    ]
                )
            banks += [flat["exp_avg"], flat["exp_avg_sq"]]
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "banks": banks,
        "clipped": clipped,
        "bank_bytes": bank_bytes(opt),
        "bank_steps": opt.bank_steps,
    }


def compare(zero, ddp) -> dict:
    """ZeRO vs DDP: the largest absolute difference of the weights and of the gathered banks, each also
    relative to the largest magnitude of the tensor it was found in."""
    out = {}
    # ZeRO's gathered bank tensors are padded flat groups: the first numel elements are DDP's
    for name in ("params", "banks"):
        worst_abs, worst_rel = 0.0, 0.0
        for z, d in zip(zero[name], ddp[name]):
            diff = float((z.flatten()[: d.numel()] - d.flatten()).abs().max())
            worst_abs = max(worst_abs, diff)
            worst_rel = max(worst_rel, diff / max(float(d.abs().max()), 1e-30))
        out[f"{name}_max_abs"], out[f"{name}_max_rel"] = worst_abs, worst_rel
    return out


def main():
    args = parse()
    no_shm_kernel()
    if args.fp16:
        allow_fp16_on_this_cpu()
    zero = run_zero(args, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    result = {k: v for k, v in zero.items() if k not in ("engine", "opt", "params", "banks")}
    result["world"] = world
    sizes = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
    torch.distributed.all_gather(sizes, torch.tensor([zero["bank_bytes"]]))
    result["bank_bytes_per_rank"] = [int(s) for s in sizes]
    # the schedule's position and every bank's step count, as each rank has them
    mine = torch.tensor([zero["schedule_step"], *zero["bank_steps"]])
    everyone = [torch.zeros_like(mine) for _ in range(world)]
    torch.distributed.all_gather(everyone, mine)
    result["steps_per_rank"] = [e.tolist() for e in everyone]
    if args.ddp:
        ddp = run_ddp(args, rank, world)
        result["ddp"] = {"clipped": ddp["clipped"], "bank_bytes": ddp["bank_bytes"], "bank_steps": ddp["bank_steps"]}
        result["zero_vs_ddp"] = compare(zero, ddp)
    if rank == 0:
        torch.save({"params": zero["params"], "banks": zero["banks"]}, args.out + ".pt")
        with open(args.out, "w") as f:
            json.dump(result, f)


main()
torch.distributed.barrier()
torch.distributed.destroy_process_group()
