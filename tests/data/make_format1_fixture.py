"""How tests/data/format1_adamw_k3.pt was made: run with a loli-plugin that writes state format 1 (it was
commit f19ae30, before shared state existed):  python tests/data/make_format1_fixture.py OUT.pt

A LoliClustered(AdamW, K=3) checkpoint after 5 steps, plus the parameters after 5 more steps of the same
uninterrupted run; tests/test_clustered.py checks that today's code resumes it to the same parameters."""

import copy
import sys

import torch

from loli_plugin import LoliClustered


def grads(step, params):
    g = torch.Generator().manual_seed(500 + step)
    return [torch.randn(p.shape, generator=g) for p in params]


g = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(4, 3, generator=g)), torch.nn.Parameter(torch.randn(3, generator=g))]
opt = LoliClustered(params, inner="AdamW", clusters=3, schedule="shuffle", seed=0, lr=1e-2, weight_decay=0.01)
for s in range(5):
    for p, gr in zip(params, grads(s, params)):
        p.grad = gr
    opt.step()
# a deep copy: state_dict() refers to the live state tensors, which the next steps change in place
saved = copy.deepcopy({"optimizer": opt.state_dict(), "params": [p.detach() for p in params]})
for s in range(5, 10):
    for p, gr in zip(params, grads(s, params)):
        p.grad = gr
    opt.step()
saved["params_after_10"] = [p.detach().clone() for p in params]
torch.save(saved, sys.argv[1])
