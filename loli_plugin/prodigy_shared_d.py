"""``ProdigySharedD``: Prodigy whose step-size estimate is one for all clusters inside LoliClustered.

Prodigy (Mishchenko & Defazio) estimates the distance to the solution, ``d``, from two running sums over
the whole run: ``d_numerator`` (in its param group) and ``s`` (per parameter, with ``p0``, the starting
weights). Inside LoliClustered with plain ``inner="Prodigy"`` every group value and every state entry is
banked, so each cluster estimates its own d from a tenth of the steps, starting again from ``d0 = 1e-6``:
``bench quality`` measured per-cluster d's that end 5-60x below plain Prodigy's after 400 steps, and
LoRAs that barely learn (docs/bench/README.md).

Here ``d`` and its sums are shared (``loli_shared_group_keys``, ``loli_shared_state``): every step adds to
the one estimate, as in plain Prodigy, while the Adam moments (``exp_avg``, ``exp_avg_sq``) and the step
count behind their bias correction (``k``) stay per cluster. With one cluster it is Prodigy, bit for bit.

The only code of its own: a cluster's first step finds the shared ``s`` and ``p0`` already there (LoliClustered
links them in) but not its own moments, and Prodigy's initialisation, which runs when ``step`` is missing,
would replace all of them; so this class creates the missing entries first, with Prodigy's values.
"""

from __future__ import annotations

import torch
from prodigyopt import Prodigy


class ProdigySharedD(Prodigy):
    loli_shared_state = ("s", "p0")
    loli_shared_group_keys = ("d", "d_max", "d_numerator", "d_denom", "d_hat")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, slice_p = group["betas"][0], group["slice_p"]
            for p in group["params"]:
                state = self.state[p]
                if p.grad is None or "step" in state:
                    continue
                # Prodigy's own first-step values (prodigyopt/prodigy.py, Prodigy.step, "State initialization"),
                # keeping s and p0 where LoliClustered linked the shared ones in
                state["step"] = 0
                if "s" not in state:
                    state["s"] = torch.zeros_like(p.data.flatten()[::slice_p]).detach()
                if "p0" not in state:
                    state["p0"] = (
                        p.flatten()[::slice_p].detach().clone()
                        if p.any()
                        else torch.tensor(0, device=p.device, dtype=p.dtype)
                    )
                if beta1 > 0:
                    state["exp_avg"] = torch.zeros_like(p.data).detach()
                state["exp_avg_sq"] = torch.zeros_like(p.data).detach()
        return super().step(closure)
