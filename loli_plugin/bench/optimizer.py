"""``loli-plugin bench optimizer``: step time and state memory (measured, never asserted in tests).

    loli-plugin bench optimizer [--params 10e6] [--clusters 10] [--inner AdamW] [--impl foreach|forloop|fused]

Step time of LoliClustered(inner, K) against the inner optimizer alone on a parameter set shaped
like a LoRA (pairs of rank-r down/up matrices over SDXL-like widths), measured interleaved in one
process (A, B, A, B, ...) so drift affects both alike; reports the median ratio. The state memory
columns are the inner alone, LoliClustered(inner, K) and LoliClustered(AdamWClusteredSecondMoment, K),
whose shared first moment makes it (1 + K) / 2K of full AdamW banks.
"""

from __future__ import annotations

import statistics
import time

import torch

from ..clustered import LoliClustered
from ..options import DEFAULT_CLUSTERS
from .machine import machine_line

SDXL_WIDTHS = (320, 640, 1280, 2048, 2560)


def lora_like_params(total: float, rank: int = 16, device: str = "cpu", seed: int = 0) -> list[torch.nn.Parameter]:
    """Down (rank x in) and up (out x rank) matrices until ``total`` parameters, widths cycling SDXL's."""
    g = torch.Generator().manual_seed(seed)
    params, n, i = [], 0, 0
    while n < total:
        width_in = SDXL_WIDTHS[i % len(SDXL_WIDTHS)]
        width_out = SDXL_WIDTHS[(i * 3 + 1) % len(SDXL_WIDTHS)]
        params.append(torch.nn.Parameter(torch.randn(rank, width_in, generator=g).to(device) * 0.01))
        params.append(torch.nn.Parameter(torch.zeros(width_out, rank, device=device)))
        n += rank * (width_in + width_out)
        i += 1
    return params


def state_bytes(opt: torch.optim.Optimizer) -> int:
    banks = [opt.bank(k) for k in range(opt.clusters)] if isinstance(opt, LoliClustered) else [opt.state]
    # by identity: a shared entry (AdamWClusteredSecondMoment's first moment) is in every bank once
    tensors = {id(v): v for bank in banks for st in bank.values() for v in st.values() if isinstance(v, torch.Tensor)}
    return sum(v.numel() * v.element_size() for v in tensors.values())


def clustered_second_moment_state_bytes(args, grads) -> int:
    """State memory of LoliClustered(AdamWClusteredSecondMoment) at the same K, after every bank has stepped."""
    params = lora_like_params(args.params, rank=args.rank, device=args.device)
    opt = LoliClustered(params, inner="AdamWClusteredSecondMoment", clusters=args.clusters, schedule="round_robin",
                        offload=args.offload, lr=1e-4, weight_decay=0.01, foreach=args.impl != "forloop")
    for p, g in zip(params, grads):
        p.grad = g
    for _ in range(args.clusters):
        opt.step()
    return state_bytes(opt)


def bench_optimizer(args) -> dict:
    device = args.device
    impl = {"foreach": dict(foreach=True), "forloop": dict(foreach=False), "fused": dict(fused=True)}[args.impl]
    kwargs = dict(lr=1e-4, weight_decay=0.01, **impl)
    p_ref = lora_like_params(args.params, rank=args.rank, device=device)
    p_ours = lora_like_params(args.params, rank=args.rank, device=device)
    ref = getattr(torch.optim, args.inner)(p_ref, **kwargs)
    ours = LoliClustered(p_ours, inner=args.inner, clusters=args.clusters, offload=args.offload, **kwargs)
    grads = [torch.randn_like(p) * 1e-3 for p in p_ref]
    for p, q, g in zip(p_ref, p_ours, grads):
        p.grad, q.grad = g, g.clone()

    def timed(opt):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(max(args.warmup, args.clusters)):  # every bank allocated before timing
        timed(ref)
        timed(ours)
    ratios, t_ref, t_ours = [], [], []
    for _ in range(args.steps):
        a, b = timed(ref), timed(ours)
        t_ref.append(a)
        t_ours.append(b)
        ratios.append(b / a)
    n_params = sum(p.numel() for p in p_ref)
    result = {
        "params": n_params,
        "inner": f"{args.inner} ({args.impl})",
        "clusters": args.clusters,
        "steps": args.steps,
        "median_step_ms_inner": 1e3 * statistics.median(t_ref),
        "median_step_ms_loli": 1e3 * statistics.median(t_ours),
        "median_ratio": statistics.median(ratios),
        "state_mb_inner": state_bytes(ref) / 2**20,
        "state_mb_loli": state_bytes(ours) / 2**20,
        "state_mb_csm": clustered_second_moment_state_bytes(args, grads) / 2**20,
        "resident_banks": len(ours._offloader.resident & {k for k in range(args.clusters) if ours.bank_steps[k]})
        if ours._offloader is not None else args.clusters,
    }
    print(f"# machine: {machine_line()}")
    print(f"# {n_params / 1e6:.1f}M parameters in {len(p_ref)} LoRA-shaped tensors (rank {args.rank}), device {device}")
    print("| inner | K | offload | steps | inner ms/step | LoliClustered ms/step | median ratio | state MB inner | state MB Loli "
          "| state MB Loli(AdamWClusteredSecondMoment) | banks on device |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {result['inner']} | {args.clusters} | {args.offload or '-'} | {args.steps} | {result['median_step_ms_inner']:.2f} | "
        f"{result['median_step_ms_loli']:.2f} | {result['median_ratio']:.3f} | {result['state_mb_inner']:.0f} | "
        f"{result['state_mb_loli']:.0f} | {result['state_mb_csm']:.0f} | {result['resident_banks']} |"
    )
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("optimizer", help="step time and state memory of LoliClustered vs its inner optimizer")
    p.add_argument("--params", type=float, default=10e6, help="number of parameters (default 10e6)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--clusters", type=int, default=DEFAULT_CLUSTERS)
    p.add_argument("--inner", default="AdamW", help="a torch.optim name")
    p.add_argument("--impl", choices=["foreach", "forloop", "fused"], default="foreach")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--offload", choices=["cpu"], default=None, help="park inactive banks in CPU memory")
    p.set_defaults(func=bench_optimizer)
