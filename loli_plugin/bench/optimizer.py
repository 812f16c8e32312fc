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

from ..cli_args import add_clusters_option, nonnegative_int, positive_float, positive_int, torch_device
from ..clustered import LoliClustered
from ..errors import LoliConfigError
from ..inner import resolve_inner
from ..plugins import inner_specs
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
    opt = LoliClustered(
        params,
        inner="AdamWClusteredSecondMoment",
        clusters=args.clusters,
        schedule="round_robin",
        offload=args.offload,
        lr=1e-4,
        weight_decay=0.01,
        foreach=args.impl != "forloop",
    )
    for p, g in zip(params, grads):
        p.grad = g
    for _ in range(args.clusters):
        opt.step()
    return state_bytes(opt)


IMPLS = {"foreach": dict(foreach=True), "forloop": dict(foreach=False), "fused": dict(fused=True)}


def torch_optimizers() -> list[str]:
    return sorted(
        n
        for n, c in vars(torch.optim).items()
        if isinstance(c, type) and issubclass(c, torch.optim.Optimizer) and c is not torch.optim.Optimizer
    )


def check_inner(args, kwargs: dict) -> None:
    """Build the inner optimizer as the benchmark will, on one tiny parameter on the device, and step
    it once: a name torch.optim lacks, an option the optimizer does not take (weight_decay, fused, ...)
    or one LoliClustered refuses fails here, before any work, as a LoliConfigError."""
    cls = getattr(torch.optim, args.inner, None)
    if args.inner not in torch_optimizers():
        raise LoliConfigError(
            f"--inner {args.inner}: not a torch.optim optimizer; use one of {', '.join(torch_optimizers())}"
        )
    resolve_inner(args.inner, inner_specs())  # raises for an optimizer LoliClustered refuses
    p = torch.nn.Parameter(torch.zeros(2, device=args.device))
    p.grad = torch.zeros_like(p)
    try:
        cls([p], **kwargs).step()
    except (TypeError, ValueError, RuntimeError) as exc:
        raise LoliConfigError(
            f"--inner {args.inner} with --impl {args.impl} on {args.device} does not work: {exc}"
        ) from None


def bench_optimizer(args) -> dict:
    device = args.device
    kwargs = dict(lr=1e-4, weight_decay=0.01, **IMPLS[args.impl])
    check_inner(args, kwargs)
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
        if ours._offloader is not None
        else args.clusters,
    }
    print(f"# machine: {machine_line()}")
    print(f"# {n_params / 1e6:.1f}M parameters in {len(p_ref)} LoRA-shaped tensors (rank {args.rank}), device {device}")
    print(
        "| inner | K | offload | steps | inner ms/step | LoliClustered ms/step | median ratio | state MB inner "
        "| state MB Loli | state MB Loli(AdamWClusteredSecondMoment) | banks on device |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {result['inner']} | {args.clusters} | {args.offload or '-'} | {args.steps} "
        f"| {result['median_step_ms_inner']:.2f} | "
        f"{result['median_step_ms_loli']:.2f} | {result['median_ratio']:.3f} | {result['state_mb_inner']:.0f} | "
        f"{result['state_mb_loli']:.0f} | {result['state_mb_csm']:.0f} | {result['resident_banks']} |"
    )
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("optimizer", help="step time and state memory of LoliClustered vs its inner optimizer")
    p.add_argument("--params", type=positive_float, default=10e6, help="number of parameters (default 10e6)")
    p.add_argument("--rank", type=positive_int, default=16, help="LoRA rank of the parameter shapes (default 16)")
    add_clusters_option(p)
    p.add_argument("--inner", default="AdamW", help="the inner optimizer: a torch.optim class name (default AdamW)")
    p.add_argument(
        "--impl", choices=list(IMPLS), default="foreach", help="the inner optimizer's implementation (default foreach)"
    )
    p.add_argument("--steps", type=positive_int, default=60, help="timed steps of each optimizer (default 60)")
    p.add_argument(
        "--warmup", type=nonnegative_int, default=5, help="untimed steps first (default 5; at least one per cluster)"
    )
    p.add_argument(
        "--device",
        type=torch_device,
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu or cuda[:N] (default cuda when available)",
    )
    p.add_argument("--offload", choices=["cpu"], default=None, help="park inactive banks in CPU memory")
    p.set_defaults(func=bench_optimizer)
