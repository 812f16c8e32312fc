"""`python resume_loop.py OUT STATE_DIR START STOP [--save]`: train steps [START, STOP) of a fixed loop
with LoliClustered + cluster sampling + Loli loss under accelerate; load STATE_DIR first when START > 0,
save it at the end with --save; write the parameters to OUT. Each call is a fresh process."""

import sys

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed

from loli_plugin import LoliClustered, loli_loss
from loli_plugin.sampling import LogitNormal

out, state_dir, start, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
set_seed(0)
accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
model = torch.nn.Sequential(torch.nn.Linear(9, 32), torch.nn.SiLU(), torch.nn.Linear(32, 8))
opt = LoliClustered(model.parameters(), inner="AdamW", clusters=4, lr=1e-2, warm_start=False)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 5))
model, opt, sched = accelerator.prepare(model, opt, sched)
if start > 0:
    accelerator.load_state(state_dir)  # optimizer banks + schedule, LR scheduler, RNG states
dist = LogitNormal()
for micro in range(2 * start, 2 * stop):
    with accelerator.accumulate(model):
        g = torch.Generator().manual_seed(micro)  # the data of micro-batch i is a function of i
        k = opt.optimizer.current_cluster
        x0 = torch.randn(4, 8, generator=g)
        t = dist.sample_cluster(4, k, 4)  # global RNG: restored by load_state
        noise = torch.randn(4, 8, generator=g)
        xt = (1 - t[:, None]) * x0 + t[:, None] * noise
        loss = loli_loss(model(torch.cat([xt, t[:, None]], dim=1)), noise - x0).mean()
        accelerator.backward(loss)
        opt.step()
        sched.step()
        opt.zero_grad()
if "--save" in sys.argv:
    accelerator.save_state(state_dir)
torch.save(
    {
        "params": [p.detach() for p in model.parameters()],
        "bank_steps": opt.optimizer.bank_steps,
        "schedule_step": opt.optimizer.schedule.step,
        "lr": [g["lr"] for g in opt.param_groups],
    },
    out,
)
