"""Run under `accelerate launch --num_processes 2 --multi_gpu` (gloo on CPU): a DDP training loop with
LoliClustered and one-cluster timestep sampling; every rank checks, every step, that all ranks are on
the same cluster, and at the end that parameters and every bank are identical across ranks. Writes
rank 0's verdict.

Teardown matters here. A gloo worker thread frees each finished collective's tensors; a tensor whose
Python object was already dropped is then owned by C++, and freeing it takes the GIL. If the main
thread has begun finalizing the interpreter by then, Python 3.11 ends the waiting thread with
pthread_exit inside a C++ destructor: "terminate called without an active exception", SIGABRT, after
a correct result (issue 11; the core dump shows ~AsyncBarrierWork -> ~AsyncAllgatherWork ->
decref_pyobject -> take_gil -> pthread_exit on a pt_gloo_runloop thread). A final barrier is one way
in: it holds a weak reference to the all_gather still in flight, which keeps that work's tensors until
the barrier's work is freed, on the worker thread, just as the script ends. destroy_process_group()
alone does not help: gloo has no shutdown, so the worker threads live as long as the group object.
The cure is to let the group really die before the interpreter does: its destructor joins the worker
threads (with the GIL released), so nothing is freed late. That needs every reference to it gone
first, hence the early import below and `run` keeping the training objects in its own scope;
`_check_torn_down` fails the run on every launch, not one in thirty, if a reference survives."""

import json
import os
import sys

import torch

# torch.distributed.nn.functional binds the live default group as the default `group=` argument of its
# functions when it is first imported; the first optimizer constructed imports it (via torch._dynamo).
# Imported now, before any group exists, those defaults are None and do not keep our group alive.
import torch.distributed.nn  # noqa: F401
from accelerate import Accelerator

from loli_plugin import LoliClustered, loli_loss
from loli_plugin.sampling import LogitNormal


def run(out_path: str, accum: int) -> None:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=accum)
    rank = accelerator.process_index
    torch.manual_seed(0)  # same initial weights on every rank
    model = torch.nn.Sequential(torch.nn.Linear(9, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8))
    opt = LoliClustered(model.parameters(), inner="AdamW", clusters=5, lr=1e-2)
    model, opt = accelerator.prepare(model, opt)
    inner = opt.optimizer  # accelerate's wrapper around LoliClustered
    g = torch.Generator().manual_seed(100 + rank)  # different data per rank, as in DDP
    dist = LogitNormal()
    mismatches, clusters_seen = 0, []
    for _ in range(12 * accum):
        with accelerator.accumulate(model):
            k = inner.current_cluster
            everyone = accelerator.gather(torch.tensor([k]))
            mismatches += int((everyone != k).any())
            clusters_seen.append(k)
            x0 = torch.randn(4, 8, generator=g)
            t = dist.sample_cluster(4, k, 5, generator=g)
            noise = torch.randn(4, 8, generator=g)
            xt = (1 - t[:, None]) * x0 + t[:, None] * noise
            pred = model(torch.cat([xt, t[:, None]], dim=1))
            loss = loli_loss(pred, noise - x0).mean()
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad()

    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    banks = torch.cat(
        [
            v.flatten()
            for k in range(5)
            for st in inner.bank(k).values()
            for key, v in sorted(st.items())
            if torch.is_tensor(v)
        ]
    )
    same_params = bool((accelerator.gather(flat[None]) == flat).all())
    same_banks = bool((accelerator.gather(banks[None]) == banks).all())
    validation = _validate(accelerator, model, rank)
    if accelerator.is_main_process:
        with open(out_path, "w") as f:
            json.dump(
                {
                    "world": accelerator.num_processes,
                    "mismatches": mismatches,
                    "same_params": same_params,
                    "same_banks": same_banks,
                    "bank_steps": inner.bank_steps,
                    "clusters": clusters_seen,
                    "validation": validation,
                },
                f,
            )


def _validate(accelerator, model, rank: int) -> dict:
    """loli_plugin.validation as the trainers run it on several ranks: every rank measures its own held-out
    batches (as many as the others), hands the mean over ranks in (accelerator.reduce), and logs it."""
    from loli_plugin.validation import Validation

    validation = Validation(3)
    held = torch.Generator().manual_seed(200 + rank)
    batches = [{"latents": torch.randn(2, 8, generator=held)} for _ in range(2)]
    own = []

    def evaluate(batch, k, position):
        t = torch.full((2, 1), (k + position) / 3)
        noise = torch.randn(2, 8)  # the global RNG, reseeded by the validation
        return ((model(torch.cat([(1 - t) * batch["latents"] + t * noise, t], dim=1)) - noise) ** 2).mean(dim=1)

    for batch in batches:
        own.append(validation.add(lambda k, p, seed, b=batch: evaluate(b, k, p), batch, 2))  # this rank alone
    validation.discard()
    for batch in batches:
        validation.add(
            lambda k, p, seed, b=batch: evaluate(b, k, p),
            batch,
            2,
            reduce=lambda values: accelerator.reduce(values, reduction="mean"),
        )
    logged = validation.finish(step=1)
    values = torch.tensor([logged[f"val/cluster_{k:02d}"] for k in range(3)])
    per_rank = accelerator.gather(torch.stack(own).mean(dim=0)[None])  # each rank's own mean
    return {
        "mean_over_ranks": bool(torch.allclose(values, per_rank.mean(dim=0), rtol=1e-5)),
        "same_on_every_rank": bool((accelerator.gather(values[None]) == values).all()),
        "ranks_differ": bool((per_rank[0] != per_rank[1]).any()),
    }


def _check_torn_down() -> None:
    """gloo names its threads (pt_gloo_runloop, gloo_tcp_loop in torch 2.13); any left means the group
    outlived destroy_process_group."""
    tasks = "/proc/self/task"
    if not os.path.isdir(tasks):  # not Linux: nothing to look at
        return
    names = []
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/comm") as f:
                names.append(f.read().strip())
        except FileNotFoundError:  # a thread that ended meanwhile
            pass
    left = sorted(n for n in names if n.startswith(("pt_gloo", "gloo")))
    if left:
        sys.exit(
            f"the gloo process group is still alive after destroy_process_group (threads {left}): "
            "something still references it, and its threads may abort the interpreter's exit"
        )


run(sys.argv[1], int(sys.argv[2]))
torch.distributed.destroy_process_group()
_check_torn_down()
