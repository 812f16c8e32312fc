"""AdamW with ONE first moment over all steps and one second moment per timestep cluster.

Full banks (``LoliClustered(inner="AdamW")``) give every cluster its own first and second moment.
Two costs come with that: each cluster's momentum only moves once every K steps, so it averages over
a K-fold longer horizon, and every bank restarts its bias correction. What differs between noise
levels is mainly the gradient's *scale*, which is what Adam's second moment normalises. This
optimizer keeps the momentum shared and only the second moment per cluster:

    t   = steps this parameter has taken (all clusters),  t_k = steps of the current cluster
    p   <- p * (1 - lr * wd)                                     decoupled weight decay
    m   <- lerp(m, g, 1 - beta1)                                 shared by all clusters
    v_k <- beta2 * v_k + (1 - beta2) * g * g                     this cluster's own
    p   <- p - lr / (1 - beta1^t) * m / (sqrt(v_k) / sqrt(1 - beta2^t_k) + eps)

On its own, or inside ``LoliClustered(clusters=1)``, t == t_k and the ops are torch's AdamW ops
(non-capturable path) in torch's order, for both the for-loop and the foreach implementation, so
it is bit-identical to ``torch.optim.AdamW`` with the same ``foreach`` setting (tested).

``momentum="normalized"``: the update above divides a momentum of every cluster's RAW gradients by
the stepping cluster's own second moment, so on a small-gradient cluster's turn the step grows with
the ratio of the clusters' gradient scales (3.7 x lr at a 10x ratio, 34 x at 100x, measured in
docs/bench/README.md). The normalized variant averages gradients that are already divided by their
own cluster's second moment, so every term of the momentum is on Adam's unit scale whatever the
cluster:

    v_k <- beta2 * v_k + (1 - beta2) * g * g
    m   <- lerp(m, g / (sqrt(v_k) / sqrt(1 - beta2^t_k) + eps), 1 - beta1)
    p   <- p - lr / (1 - beta1^t) * m

Same state, same memory. It is NOT AdamW at K=1: AdamW divides the whole momentum by TODAY's second
moment, this divides each gradient by the second moment of ITS step. The first step is the same
(g / (|g| + eps)); afterwards they drift apart as the second moment changes (measured in
docs/bench/README.md). A checkpoint saved with one ``momentum`` cannot be resumed with the other,
because the shared moment holds different quantities; ``load_state_dict`` refuses it.

How it fits LoliClustered: the class lists its shared per-parameter entries in
``loli_shared_state``. LoliClustered keeps ONE tensor per parameter for each of them, referenced
from every cluster bank, and banks only the rest (``step``, ``exp_avg_sq``); it saves them once,
and ``offload="cpu"`` parks only the per-cluster part. State memory per parameter element is
(1 + K) moments instead of 2K.
"""

from __future__ import annotations

from itertools import chain

import torch

from .errors import LoliConfigError, LoliStateError

SHARED_STEP = "shared_step"  # the global step count t (the first moment's bias correction)
MOMENTUM_KINDS = ("raw", "normalized")  # what the shared first moment averages; see the module docstring


class AdamWClusteredSecondMoment(torch.optim.Optimizer):
    """AdamW whose second moment (and its step count) is per timestep cluster when banked by
    LoliClustered; see the module docstring. Arguments as ``torch.optim.AdamW``; ``amsgrad``,
    ``fused`` and ``capturable`` are not implemented. ``momentum``: ``"raw"`` (default; AdamW at K=1)
    or ``"normalized"`` (a momentum of per-cluster-normalised gradients; bounded steps, not AdamW)."""

    # Per-parameter state entries that are one quantity for all clusters (LoliClustered shares
    # them across banks and banks the rest).
    loli_shared_state = ("exp_avg", SHARED_STEP)
    # Indices of ``betas`` whose average is shared, so it steps every global step: beta_horizon
    # must not rescale them (only beta2, whose average a cluster updates once every ~K steps).
    loli_shared_betas = (0,)

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        momentum: str = "raw",
    ):
        name = type(self).__name__
        for option, value, fix in (
            ("amsgrad", amsgrad, "amsgrad=False"),
            ("fused", fused, "fused=None (or foreach=True)"),
            ("capturable", capturable, "capturable=False"),
        ):
            if value:
                raise LoliConfigError(
                    f"{name} does not implement {option}={value!r}; set {fix}, or use inner='AdamW' for it"
                )
        if isinstance(lr, torch.Tensor) or not lr >= 0.0:
            raise LoliConfigError(f"{name}: lr must be a number >= 0, got {lr!r}")
        if not eps >= 0.0:
            raise LoliConfigError(f"{name}: eps must be >= 0, got {eps!r}")
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= float(b) < 1.0 for b in betas)):
            raise LoliConfigError(
                f"{name}: betas must be two numbers in [0, 1), e.g. betas=(0.9, 0.999); got {betas!r}"
            )
        if not weight_decay >= 0.0:
            raise LoliConfigError(f"{name}: weight_decay must be >= 0, got {weight_decay!r}")
        if not (isinstance(momentum, str) and momentum in MOMENTUM_KINDS):
            raise LoliConfigError(
                f"{name}: momentum must be 'raw' (AdamW's momentum of raw gradients) or 'normalized' "
                f"(a momentum of per-cluster-normalised gradients), got {momentum!r}; its averaging "
                "rate is betas[0]"
            )
        defaults = dict(
            lr=lr,
            betas=tuple(float(b) for b in betas),
            eps=eps,
            weight_decay=weight_decay,
            maximize=maximize,
            foreach=foreach,
            momentum=momentum,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, shared_steps, steps = [], [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse or torch.is_complex(p):
                    raise RuntimeError(f"{type(self).__name__} supports dense real parameters and gradients only")
                state = self.state[p]
                # Entry by entry, not "if the state is empty": inside LoliClustered a cluster's first
                # step finds the shared entries already there and creates only its own.
                if SHARED_STEP not in state:
                    state[SHARED_STEP] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if "step" not in state:
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                shared_steps.append(state[SHARED_STEP])
                steps.append(state["step"])
            if not params:
                continue
            foreach = group["foreach"]
            if foreach is None:  # torch's default: foreach where its kernels exist, the for-loop on CPU
                foreach = all(p.device.type in ("cuda", "xpu") for p in params)
            update = _multi_tensor if foreach else _single_tensor
            beta1, beta2 = group["betas"]
            update(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                shared_steps,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                maximize=group["maximize"],
                normalized=group["momentum"] == "normalized",
            )
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = {
            **state_dict,
            "param_groups": [
                self._check_momentum(saved, group)
                for saved, group in zip(state_dict["param_groups"], self.param_groups)
            ]
            + state_dict["param_groups"][len(self.param_groups) :],
        }  # torch reports a group-count mismatch
        # torch keeps only the entry called "step" as saved and casts every other tensor to the
        # parameter's dtype; the global step count must stay float32 (in bf16, 257 reads as 256).
        counts, state = {}, {}
        for idx, entry in state_dict["state"].items():
            if isinstance(entry, dict) and SHARED_STEP in entry:
                entry = dict(entry)
                counts[idx] = entry.pop(SHARED_STEP)
            state[idx] = entry
        super().load_state_dict({**state_dict, "state": state})
        saved_ids = chain.from_iterable(g["params"] for g in state_dict["param_groups"])
        params = chain.from_iterable(g["params"] for g in self.param_groups)
        for idx, p in zip(saved_ids, params):
            if idx in counts:
                self.state[p][SHARED_STEP] = torch.as_tensor(counts[idx]).to(
                    device="cpu", dtype=torch.float32, copy=True
                )

    @staticmethod
    def _check_momentum(saved: dict, group: dict) -> dict:
        """torch replaces each group by the saved one, so a saved ``momentum`` would silently win over the
        one asked for; the shared moment's meaning depends on it, so a mismatch is refused instead.
        States saved before the option existed hold raw momentum."""
        kind = saved.get("momentum", "raw")
        if kind != group["momentum"]:
            raise LoliStateError(
                f"the saved optimizer state was made with momentum={kind!r} "
                f"but this optimizer uses momentum={group['momentum']!r}; "
                f"its shared first moment holds {'raw' if kind == 'raw' else 'per-cluster-normalised'} gradients, "
                f"so it cannot continue as the other kind: set momentum={kind!r} to resume it, "
                "or start without resuming the optimizer state"
            )
        return {**saved, "momentum": kind}


def _single_tensor(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    shared_steps,
    steps,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    maximize,
    normalized,
):
    """torch's ``_single_tensor_adam`` (decoupled weight decay, non-capturable), op for op, with the
    first moment's bias correction taken from the shared step count. ``normalized``: each gradient is
    divided by its own cluster's bias-corrected second moment (updated with it first) before it enters
    the shared momentum, and the step is the bias-corrected momentum itself."""
    for param, grad, exp_avg, exp_avg_sq, shared_step, step in zip(
        params, grads, exp_avgs, exp_avg_sqs, shared_steps, steps
    ):
        grad = grad if not maximize else -grad
        shared_step += 1
        step += 1
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        if normalized:
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (exp_avg_sq.sqrt() / (1 - beta2 ** step.item()) ** 0.5).add_(eps)
            exp_avg.lerp_(grad / denom, 1 - beta1)
            param.add_(exp_avg, alpha=-lr / (1 - beta1 ** shared_step.item()))
            continue
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1 ** shared_step.item()
        bias_correction2 = 1 - beta2 ** step.item()
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)


def _by_device_and_dtype(params, *others) -> list[list[list]]:
    """The lists regrouped per (device, dtype) of the parameters, like torch's foreach optimizers: one
    foreach kernel call per group."""
    groups: dict[tuple, list[list]] = {}
    for tensors in zip(params, *others):
        lists = groups.setdefault((tensors[0].device, tensors[0].dtype), [[] for _ in tensors])
        for lst, t in zip(lists, tensors):
            lst.append(t)
    return list(groups.values())


def _multi_tensor(
    params,
    grads,
    exp_avgs,
    exp_avg_sqs,
    shared_steps,
    steps,
    *,
    lr,
    beta1,
    beta2,
    eps,
    weight_decay,
    maximize,
    normalized,
):
    """torch's ``_multi_tensor_adam`` (decoupled weight decay, non-capturable), op for op, per
    (device, dtype) group like torch's, with the first moment's bias correction from the shared count;
    ``normalized`` as in ``_single_tensor``."""
    for d_params, d_grads, d_exp_avgs, d_exp_avg_sqs, d_shared_steps, d_steps in _by_device_and_dtype(
        params, grads, exp_avgs, exp_avg_sqs, shared_steps, steps
    ):
        if maximize:
            d_grads = torch._foreach_neg(d_grads)
        for counts in (d_shared_steps, d_steps):
            if counts[0].is_cpu:  # torch's fast path for CPU step counts: one wrapped 1, not one per tensor
                torch._foreach_add_(counts, torch.tensor(1.0, device="cpu"), alpha=1.0)
            else:
                torch._foreach_add_(counts, 1)
        if weight_decay != 0:
            torch._foreach_mul_(d_params, 1 - lr * weight_decay)
        if normalized:
            torch._foreach_mul_(d_exp_avg_sqs, beta2)
            torch._foreach_addcmul_(d_exp_avg_sqs, d_grads, d_grads, 1 - beta2)
            denom = torch._foreach_sqrt(d_exp_avg_sqs)
            torch._foreach_div_(denom, [(1 - beta2 ** t.item()) ** 0.5 for t in d_steps])
            torch._foreach_add_(denom, eps)
            torch._foreach_lerp_(d_exp_avgs, torch._foreach_div(d_grads, denom), 1 - beta1)
            del d_grads, denom
            torch._foreach_add_(
                d_params, torch._foreach_mul(d_exp_avgs, [-lr / (1 - beta1 ** t.item()) for t in d_shared_steps])
            )
            continue
        torch._foreach_lerp_(d_exp_avgs, d_grads, 1 - beta1)
        torch._foreach_mul_(d_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(d_exp_avg_sqs, d_grads, d_grads, 1 - beta2)
        del d_grads
        step_size = [(lr / (1 - beta1 ** t.item())) * -1 for t in d_shared_steps]
        bias_correction2_sqrt = [(1 - beta2 ** t.item()) ** 0.5 for t in d_steps]
        denom = torch._foreach_sqrt(d_exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(d_params, d_exp_avgs, denom, step_size)
