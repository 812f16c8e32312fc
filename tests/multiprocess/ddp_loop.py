"""Run under `accelerate launch --num_processes 2 --cpu`: a DDP training loop with LoliClustered and
one-cluster timestep sampling; every rank checks, every step, that all ranks are on the same cluster,
and at the end that parameters and every bank are identical across ranks. Writes rank 0's verdict."""

import json
import sys

import torch
from accelerate import Accelerator

from loli_plugin import LoliClustered, loli_loss
from loli_plugin.sampling import LogitNormal

out_path = sys.argv[1]
accum = int(sys.argv[2])
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
for step in range(12 * accum):
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
banks = torch.cat([v.flatten() for k in range(5) for st in inner.bank(k).values() for key, v in sorted(st.items()) if torch.is_tensor(v)])
same_params = bool((accelerator.gather(flat[None]) == flat).all())
same_banks = bool((accelerator.gather(banks[None]) == banks).all())
if accelerator.is_main_process:
    json.dump({"world": accelerator.num_processes, "mismatches": mismatches, "same_params": same_params, "same_banks": same_banks,
               "bank_steps": inner.bank_steps, "clusters": clusters_seen}, open(out_path, "w"))
accelerator.wait_for_everyone()
# tear the gloo group down before exit: a process leaving with its communication threads alive
# can abort ("terminate called without an active exception") and fail the launch
torch.distributed.destroy_process_group()
