"""``loli-plugin bench gpu``: the GPU figures, in one run of a few minutes on one CUDA GPU.

    loli-plugin bench gpu [--out docs/bench/gpu.md] [--params 20e6] [--clusters 10]
    loli-plugin bench gpu --device cpu --dry-run     # the same code with tiny sizes on CPU (the tests run it)
    loli-plugin bench gpu --device cpu --sections 1,2 --params 10e6   # step time and memory columns on a CPU

1. Optimizer step time against AdamW alone, on LoRA-shaped parameters: LoliClustered around AdamW
   (fused and foreach) and AdamW8bit, and AdamWClusteredSecondMoment (alone and banked).
2. Peak device memory (``torch.cuda.max_memory_allocated``) with and without ``offload="cpu"``,
   during training and during a resume, with the number of banks on the device.
3. Offload with prefetch overlapping a real forward/backward: a LoRA (peft, rank 32 on the attention
   and feed-forward projections) on a diffusers ``UNet2DConditionModel`` with SD1.5's architecture,
   random init (nothing downloaded), bf16 autocast; whole training steps with and without offload,
   and offload with a synchronize after each step (copies not overlapped) for comparison.
4. Precision: fp16 autocast with GradScaler, and bf16 parameters, against an fp32 reference run from
   the same init and batches, with the tolerance stated in the table.

Each measurement that fails is reported in its section and the others still run. Without CUDA the
command says so and exits 0. Benchmarks measure and print; nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import io
import logging
import math
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from ..cli_args import add_clusters_option, positive_float, positive_int
from ..clustered import LoliClustered
from ..inner import resolve_inner
from ..plugins import inner_specs
from .machine import machine_line
from .optimizer import lora_like_params, state_bytes


def _inner_class(name: str):
    """The optimizer class an ``inner=`` name stands for (built-ins and plugins')."""
    return resolve_inner(name, inner_specs())[1]


CSM = "AdamWClusteredSecondMoment"
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
# The fp32 reference's LoRA update is the yardstick: ||update - reference update|| / ||reference update||.
# fp16 autocast only changes the forward/backward arithmetic; bf16 parameters also round every update
# to 8 mantissa bits, so they get a wider tolerance.
TOLERANCE = {"fp16 autocast + GradScaler": 0.10, "bf16 parameters": 0.30}


@dataclasses.dataclass
class Sizes:
    params: float  # LoRA-shaped parameters of the optimizer measurements
    steps: int  # timed optimizer steps
    unet: dict  # UNet2DConditionModel config
    latent: int  # latent side (64 = 512 px for SD1.5)
    batch: int
    rank: int
    train_steps: int  # timed training steps per round in the UNet measurement
    rounds: int
    precision_steps: int


def sizes_for(args) -> Sizes:
    if args.dry_run:
        tiny_unet = dict(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            layers_per_block=1,
            block_out_channels=(32, 64),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        return Sizes(
            params=5e4, steps=2, unet=tiny_unet, latent=8, batch=1, rank=4, train_steps=2, rounds=1, precision_steps=3
        )
    sd15_unet = dict(
        sample_size=64,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=768,
        attention_head_dim=8,
    )
    return Sizes(
        params=args.params,
        steps=args.steps,
        unet=sd15_unet,
        latent=64,
        batch=1,
        rank=32,
        train_steps=20,
        rounds=3,
        precision_steps=30,
    )


class Device:
    """Synchronising clock and peak-memory probe; on CPU the memory figures are not available."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], object]) -> float:
        self.sync()
        start = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - start

    def reset_peak(self) -> int:
        """Start a peak measurement; returns the memory allocated now (the baseline)."""
        gc.collect()
        if not self.cuda:
            return 0
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak_since(self, baseline: int) -> int | None:
        if not self.cuda:
            return None
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - baseline


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mb(n: int | None) -> str:
    return "n/a (CPU)" if n is None else f"{n / 2**20:.0f}"


def banks_on_device(opt: LoliClustered) -> int:
    """Banks that hold state and are at home (all of them without offload)."""
    stepped = {k for k in range(opt.clusters) if opt.bank_steps[k]}
    return len(stepped & opt._offloader.resident) if opt._offloader is not None else len(stepped)


def one_bank_bytes(opt: LoliClustered, k: int = 0) -> int:
    """A bank's own tensors (shared entries, held once for all banks, not counted)."""
    return sum(
        v.numel() * v.element_size()
        for st in opt.bank(k).values()
        for key, v in st.items()
        if isinstance(v, torch.Tensor) and key not in opt._shared_keys
    )


def run_cases(device: Device, cases: dict[str, Callable[[], object]], failures: list[str]) -> dict[str, object]:
    """Run each case; one that fails is recorded (traceback on stderr) and the others still run. Its
    tensors go with its frame, so each case starts from the same device memory."""
    results = {}
    for label, measure in cases.items():
        try:
            results[label] = measure()
        except Exception as exc:
            failures.append(f"- {label}: failed ({type(exc).__name__}: {exc})")
            traceback.print_exc()
        device.reset_peak()
    return results


def grads_for(params, device: torch.device) -> None:
    g = torch.Generator(device=device).manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, device=device) * 1e-3


# ------------------------------------------------------------------------------------ 1. step time
def step_time_case(ctx, base_name: str, base_kwargs: dict, build: Callable) -> list:
    device, sizes = ctx.device, ctx.sizes
    p_base = lora_like_params(sizes.params, device=device.device)
    p_cand = lora_like_params(sizes.params, device=device.device)
    base = _inner_class(base_name)(p_base, **ctx.hyper, **base_kwargs)
    cand = build(p_cand)
    grads_for(p_base, device.device)
    grads_for(p_cand, device.device)
    for _ in range(max(3, ctx.clusters + 1)):  # every bank allocated (and parked) before timing
        base.step()
        cand.step()
    t_base, t_cand, ratios = [], [], []
    for _ in range(sizes.steps):  # interleaved, so drift affects both alike
        a, b = device.time(base.step), device.time(cand.step)
        t_base.append(a)
        t_cand.append(b)
        ratios.append(b / a)
    return [
        cand.clusters if isinstance(cand, LoliClustered) else 1,
        f"{1e3 * statistics.median(t_base):.2f}",
        f"{1e3 * statistics.median(t_cand):.2f}",
        f"{statistics.median(ratios):.3f}",
        mb(state_bytes(base)),
        mb(state_bytes(cand)),
    ]


def measure_step_time(ctx) -> str:
    K, hyper = ctx.clusters, ctx.hyper
    fused, foreach = {"fused": True}, {"foreach": True}
    cases = {  # label: (baseline inner, its kwargs, a function building the optimizer under test)
        "AdamW fused": ("AdamW", fused, lambda p: LoliClustered(p, inner="AdamW", clusters=K, **hyper, **fused)),
        "AdamW foreach": ("AdamW", foreach, lambda p: LoliClustered(p, inner="AdamW", clusters=K, **hyper, **foreach)),
        "AdamW8bit": ("AdamW8bit", {}, lambda p: LoliClustered(p, inner="AdamW8bit", clusters=K, **hyper)),
        f"AdamW foreach vs {CSM} banked": (
            "AdamW",
            foreach,
            lambda p: LoliClustered(p, inner=CSM, clusters=K, **hyper, **foreach),
        ),
        f"AdamW foreach vs {CSM} alone": ("AdamW", foreach, lambda p: _inner_class(CSM)(p, **hyper, **foreach)),
        "AdamW foreach vs LoliClustered offload='cpu'": (
            "AdamW",
            foreach,
            lambda p: LoliClustered(p, inner="AdamW", clusters=K, offload="cpu", **hyper, **foreach),
        ),
    }
    failures: list[str] = []
    results = run_cases(
        ctx.device, {label: (lambda c=case: step_time_case(ctx, *c)) for label, case in cases.items()}, failures
    )
    n = sum(p.numel() for p in lora_like_params(ctx.sizes.params))
    head = (
        f"## 1. Optimizer step time\n\n{n / 1e6:.1f}M LoRA-shaped parameters (fp32), lr 1e-4, weight decay 0.01, "
        f"median of {ctx.sizes.steps} interleaved steps after every bank has stepped; ratio = candidate / baseline.\n\n"
    )
    rows = [[label, *row] for label, row in results.items()]
    return (
        head
        + table(
            [
                "baseline vs candidate",
                "K",
                "baseline ms/step",
                "candidate ms/step",
                "median ratio",
                "state MB baseline",
                "state MB candidate",
            ],
            rows,
        )
        + _failures(failures)
    )


# ------------------------------------------------------------------------------------ 2. memory
def memory_case(ctx, inner: str, offload: str | None) -> list:
    device, K = ctx.device, ctx.clusters
    params = lora_like_params(ctx.sizes.params, device=device.device)
    grads_for(params, device.device)
    base = device.reset_peak()
    opt = LoliClustered(params, inner=inner, clusters=K, offload=offload, foreach=True, **ctx.hyper)
    most = 0
    for _ in range(K + 2):
        opt.step()
        most = max(most, banks_on_device(opt))
    train_peak = device.peak_since(base)
    bank, total = one_bank_bytes(opt), state_bytes(opt)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    del opt
    buf.seek(0)
    saved = torch.load(buf, map_location="cpu", weights_only=True)  # as accelerate's load_state does
    resumed = LoliClustered(params, inner=inner, clusters=K, offload=offload, foreach=True, **ctx.hyper)
    base = device.reset_peak()
    resumed.load_state_dict(saved)
    resume_peak = device.peak_since(base)

    def in_banks(n):
        return "n/a" if n is None else f"{n / bank:.2f}"

    return [
        inner,
        offload or "-",
        mb(total),
        mb(bank),
        mb(train_peak),
        in_banks(train_peak),
        most,
        mb(resume_peak),
        in_banks(resume_peak),
        banks_on_device(resumed),
    ]


def measure_memory(ctx) -> str:
    failures: list[str] = []
    cases = {
        f"{inner}, offload={offload}": (lambda i=inner, o=offload: memory_case(ctx, i, o))
        for inner in ("AdamW", CSM)
        for offload in (None, "cpu")
    }
    rows = list(run_cases(ctx.device, cases, failures).values())
    head = (
        f"## 2. Device memory of the optimizer state (K={ctx.clusters})\n\n"
        "Peak `torch.cuda.max_memory_allocated` above the parameters and gradients, over K+2 steps and over a "
        "resume (`load_state_dict` of a state loaded to CPU), also in units of one bank (a bank = one cluster's "
        "own tensors; AdamWClusteredSecondMoment's shared first moment stays on the device and is not part of a "
        "bank). The step's own temporaries count in the peak.\n\n"
    )
    return (
        head
        + table(
            [
                "inner",
                "offload",
                "state MB (all banks)",
                "one bank MB",
                "peak training MB",
                "= banks",
                "banks on device (max)",
                "peak resume MB",
                "= banks",
                "banks on device after resume",
            ],
            rows,
        )
        + _failures(failures)
    )


# ------------------------------------------------------------------------------------ 3. UNet LoRA
class UNetLoRA:
    """A diffusers UNet2DConditionModel with a peft LoRA, fixed random batches, and its LoRA init to restart from."""

    def __init__(self, sizes: Sizes, device: torch.device, base_dtype: torch.dtype, lora_dtype: torch.dtype):
        from diffusers import UNet2DConditionModel
        from peft import LoraConfig, inject_adapter_in_model

        torch.manual_seed(0)
        with torch.device(device):
            unet = UNet2DConditionModel(**sizes.unet)
        diffusers_log = logging.getLogger("diffusers")
        level = diffusers_log.level
        diffusers_log.setLevel(
            logging.ERROR
        )  # its "modules that should be kept in float32: []" is about from_pretrained
        try:
            unet.to(dtype=base_dtype).requires_grad_(False)
        finally:
            diffusers_log.setLevel(level)
        self.model = inject_adapter_in_model(
            LoraConfig(r=sizes.rank, lora_alpha=sizes.rank, target_modules=LORA_TARGETS), unet
        )
        self.lora = [p for p in self.model.parameters() if p.requires_grad]
        for p in self.lora:
            p.data = p.data.to(device=device, dtype=lora_dtype)
        self.init = [p.detach().clone() for p in self.lora]
        self.sizes, self.device, self.dtype = sizes, device, base_dtype

    def reset(self) -> None:
        with torch.no_grad():
            for p, p0 in zip(self.lora, self.init):
                p.copy_(p0)
                p.grad = None

    def batch(self, step: int):
        """The same inputs for every run: drawn on CPU from a per-step seed."""
        s = self.sizes
        g = torch.Generator().manual_seed(10_000 + step)
        latents = torch.randn(s.batch, 4, s.latent, s.latent, generator=g)
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, 1000, (s.batch,), generator=g)
        cond = torch.randn(s.batch, 77, s.unet["cross_attention_dim"], generator=g)
        noisy = latents + noise * (t.float() / 1000).view(-1, 1, 1, 1)
        return [x.to(self.device) for x in (noisy, t, cond, noise)]

    def loss(self, step: int, autocast: torch.dtype | None) -> torch.Tensor:
        noisy, t, cond, noise = self.batch(step)
        with torch.autocast(self.device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
            pred = self.model(noisy.to(self.dtype), t, cond.to(self.dtype)).sample
        return torch.nn.functional.mse_loss(pred.float(), noise)


def train_block_case(ctx, work: UNetLoRA, build: Callable, sync_after_step: bool) -> tuple[float, int | None]:
    """Mean time of one whole training step, timed as one block with no synchronisation inside (so the
    prefetch started at the end of a step overlaps the next forward/backward), and the peak memory."""
    device, K, n = ctx.device, ctx.clusters, ctx.sizes.train_steps
    work.reset()
    base = device.reset_peak()
    opt = build()

    def train_step(step: int) -> None:
        work.loss(step, torch.bfloat16).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sync_after_step:
            device.sync()

    for step in range(K + 2):  # every bank allocated (and parked) before timing
        train_step(step)
    elapsed = device.time(lambda: [train_step(K + 2 + i) for i in range(n)])
    return elapsed / n, device.peak_since(base)


def measure_unet_offload(ctx) -> str:
    device, sizes, K, hyper = ctx.device, ctx.sizes, ctx.clusters, ctx.hyper
    work = UNetLoRA(sizes, device.device, torch.bfloat16, torch.float32)
    lora = work.lora
    impl = {"fused": True} if device.cuda else {"foreach": True}
    plain, banked = "AdamW", f"LoliClustered(AdamW) K={K}"
    variants = {  # label: (optimizer factory, synchronize after each step)
        plain: (lambda: _inner_class("AdamW")(lora, **hyper, **impl), False),
        banked: (lambda: LoliClustered(lora, inner="AdamW", clusters=K, **hyper, **impl), False),
        f"{banked}, offload='cpu'": (
            lambda: LoliClustered(lora, inner="AdamW", clusters=K, offload="cpu", **hyper, **impl),
            False,
        ),
        f"{banked}, offload='cpu', synchronize after each step (no overlap)": (
            lambda: LoliClustered(lora, inner="AdamW", clusters=K, offload="cpu", **hyper, **impl),
            True,
        ),
        f"LoliClustered({CSM}) K={K}": (
            lambda: LoliClustered(lora, inner=CSM, clusters=K, foreach=True, **hyper),
            False,
        ),
        f"LoliClustered({CSM}) K={K}, offload='cpu'": (
            lambda: LoliClustered(lora, inner=CSM, clusters=K, offload="cpu", foreach=True, **hyper),
            False,
        ),
    }
    failures: list[str] = []
    times: dict[str, list[float]] = {name: [] for name in variants}
    peaks: dict[str, int | None] = {}
    failed: set[str] = set()
    for _ in range(sizes.rounds):  # rounds of all variants, so drift affects each alike
        cases = {
            name: (lambda b=build, s=sync: train_block_case(ctx, work, b, s))
            for name, (build, sync) in variants.items()
            if name not in failed
        }
        results = run_cases(device, cases, failures)
        failed |= set(cases) - set(results)
        for name, (seconds, peak) in results.items():
            times[name].append(seconds)
            peaks[name] = peak
    mean = {name: statistics.mean(t) for name, t in times.items() if t}
    rows = []
    for name in mean:
        vs_plain = f"{mean[name] / mean[plain]:.3f}" if plain in mean else "-"
        vs_banked = f"{mean[name] / mean[banked]:.3f}" if "offload" in name and banked in mean else "-"
        rows.append([name, f"{1e3 * mean[name]:.1f}", vs_plain, vs_banked, mb(peaks[name])])
    head = (
        f"## 3. Offload during a real forward/backward\n\nUNet2DConditionModel with "
        f"{'a tiny' if ctx.args.dry_run else 'the SD1.5'} architecture "
        f"({sum(p.numel() for p in work.model.parameters()) / 1e6:.0f}M parameters, bf16, random init), "
        f"peft LoRA rank {sizes.rank} on {', '.join(LORA_TARGETS)} "
        f"({sum(p.numel() for p in lora) / 1e6:.1f}M fp32 parameters), latents "
        f"{sizes.batch}x4x{sizes.latent}x{sizes.latent}, bf16 autocast; mean over {sizes.rounds} rounds of "
        f"{sizes.train_steps} whole training steps (forward, backward, step, zero_grad) timed as one block.\n\n"
    )
    return (
        head
        + table(["optimizer", "ms/step", "vs AdamW", f"vs {banked} without offload", "peak MB"], rows)
        + _failures(failures)
    )


# ------------------------------------------------------------------------------------ 4. precision
PRECISION_RUNS = {  # name: (base dtype, LoRA dtype, autocast dtype, GradScaler)
    "fp32 reference": (torch.float32, torch.float32, None, False),
    "fp16 autocast + GradScaler": (torch.float32, torch.float32, torch.float16, True),
    "bf16 parameters": (torch.bfloat16, torch.bfloat16, None, False),
}


def precision_case(ctx, inner: str, run: str) -> tuple[torch.Tensor, float, int, bool]:
    """Train the UNet LoRA; returns (LoRA update in fp32 on CPU, mean of the last 5 losses, steps
    GradScaler skipped, whether every loss was finite)."""
    base_dtype, lora_dtype, autocast, scaled = PRECISION_RUNS[run]
    device = ctx.device.device
    work = UNetLoRA(ctx.sizes, device, base_dtype, lora_dtype)
    opt = LoliClustered(work.lora, inner=inner, clusters=ctx.clusters, foreach=True, lr=1e-3, weight_decay=0.01)
    scaler = torch.amp.GradScaler(device.type) if scaled else None
    losses, skipped = [], 0
    for step in range(ctx.sizes.precision_steps):
        loss = work.loss(step, autocast)
        if scaler is not None:
            scaler.scale(loss).backward()
            scale = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped += scaler.get_scale() < scale  # the scale drops exactly when a step was skipped
        else:
            loss.backward()
            opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    update = torch.cat([(p.detach().float() - p0.float()).flatten().cpu() for p, p0 in zip(work.lora, work.init)])
    return update, statistics.mean(losses[-5:]), int(skipped), all(math.isfinite(x) for x in losses)


def measure_precision(ctx) -> str:
    rows, failures = [], []
    for inner in ("AdamW", CSM):
        cases = {
            f"{inner}, {run}": (lambda r=run, inner=inner: precision_case(ctx, inner, r)) for run in PRECISION_RUNS
        }
        runs = {label.split(", ", 1)[1]: result for label, result in run_cases(ctx.device, cases, failures).items()}
        reference = runs.get("fp32 reference")
        for run, (update, final_loss, skipped, finite) in runs.items():
            if run == "fp32 reference" or reference is None:
                rows.append([inner, run, f"{final_loss:.4f}", "-", "-", "-", skipped, finite])
                continue
            error = ((update - reference[0]).norm() / reference[0].norm()).item()
            tolerance = TOLERANCE[run]
            rows.append(
                [
                    inner,
                    run,
                    f"{final_loss:.4f}",
                    f"{error:.4f}",
                    tolerance,
                    "yes" if error <= tolerance else "NO",
                    skipped,
                    finite,
                ]
            )
    head = (
        f"## 4. Precision: fp16 GradScaler and bf16 parameters against fp32\n\nThe UNet LoRA of section 3, "
        f"LoliClustered K={ctx.clusters}, lr 1e-3, {ctx.sizes.precision_steps} steps from the same init and batches. "
        "'update error' = ||LoRA update - fp32 reference update|| / ||fp32 reference update||.\n\n"
    )
    return (
        head
        + table(
            [
                "inner",
                "run",
                "final loss (mean of last 5)",
                "update error",
                "tolerance",
                "within",
                "steps skipped by GradScaler",
                "losses finite",
            ],
            rows,
        )
        + _failures(failures)
    )


def _failures(lines: list[str]) -> str:
    return ("\n\n" + "\n".join(lines)) if lines else ""


MEASUREMENTS = [
    ("1. Optimizer step time", measure_step_time),
    ("2. Device memory", measure_memory),
    ("3. Offload during a real forward/backward", measure_unet_offload),
    ("4. Precision", measure_precision),
]


def run(args) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "loli-plugin bench gpu needs a CUDA GPU (torch.cuda.is_available() is False here), "
            "so nothing was measured. `loli-plugin bench gpu --device cpu --dry-run` runs the same code with "
            "tiny sizes on the CPU."
        )
        return 0
    ctx = dataclasses.make_dataclass("Context", ["args", "device", "sizes", "clusters", "hyper"])(
        args, Device(device), sizes_for(args), args.clusters, dict(lr=1e-4, weight_decay=0.01)
    )
    started = time.perf_counter()
    parts = [
        f"# loli-plugin bench gpu\n\nmachine: {machine_line()}\n\ncommand: `loli-plugin bench gpu "
        f"--device {args.device} --params {args.params:g} --clusters {args.clusters} --steps {args.steps} "
        f"--sections {','.join(map(str, sorted(args.sections)))}"
        f"{' --dry-run' if args.dry_run else ''}`"
        + (
            "\n\nDRY RUN: tiny sizes on the given device, to exercise the code; the figures mean nothing."
            if args.dry_run
            else ""
        )
    ]
    for number, (title, measure) in enumerate(MEASUREMENTS, start=1):
        if number not in args.sections:
            continue
        try:
            parts.append(measure(ctx))
        except Exception as exc:
            parts.append(f"## {title}\n\nfailed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        print(parts[-1] + "\n", flush=True)
    parts.append(f"total time: {time.perf_counter() - started:.0f} s")
    print(parts[-1])
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("\n\n".join(parts) + "\n")
        print(f"written to {out}")
    return 0


def _sections(text: str) -> set[int]:
    try:
        chosen = {int(part) for part in text.split(",")}
    except ValueError:
        chosen = set()
    if not chosen or not chosen <= set(range(1, len(MEASUREMENTS) + 1)):
        raise argparse.ArgumentTypeError(
            f"--sections {text!r}: give numbers from 1 to {len(MEASUREMENTS)} separated by commas, e.g. --sections 1,2"
        )
    return chosen


def add_parser(sub) -> None:
    p = sub.add_parser("gpu", help="GPU step time, device memory with/without offload, offload overlap, fp16/bf16 runs")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --dry-run, to exercise the code)")
    p.add_argument(
        "--dry-run", action="store_true", help="tiny sizes: checks that every measurement runs, figures mean nothing"
    )
    p.add_argument(
        "--params", type=positive_float, default=20e6, help="LoRA-shaped parameters for sections 1-2 (default 20e6)"
    )
    add_clusters_option(p)
    p.add_argument("--steps", type=positive_int, default=50, help="timed optimizer steps in section 1 (default 50)")
    p.add_argument(
        "--sections",
        type=_sections,
        default=set(range(1, len(MEASUREMENTS) + 1)),
        help="which measurements to run, e.g. 1,2 (default: all four)",
    )
    p.add_argument("--out", default=None, help="also write the Markdown to this file")
    p.set_defaults(func=run)
