"""``loli-plugin memory``: the optimizer-state memory of a run, in GiB, for AdamW and each LoliClustered choice.

K banks cost K x the inner optimizer's state; how much that is depends on what is trained. The presets are
the trained tensors of real runs, counted from the architectures themselves: diffusers' model classes
built with the published config values below (each cites the config it copies) on the *meta* device
(accelerate's ``init_empty_weights``: shapes only, no memory, no download), then the LoRA target layers
the trainers' own network modules pick:

* kohya-ss/sd-scripts ``networks/lora.py`` (``LoRANetwork.UNET_TARGET_REPLACE_MODULE =
  ["Transformer2DModel"]``, ``create_modules``): every ``Linear`` and 1x1 ``Conv2d`` inside a
  ``Transformer2DModel`` (SD1.5, SDXL).
* sd-scripts ``networks/lora_flux.py`` (``FLUX_TARGET_REPLACE_MODULE_DOUBLE/SINGLE``): every ``Linear`` in
  the double and single stream blocks of BFL's layout (``library/flux_models.py``), where q, k and v are
  one ``qkv`` layer and a single block's q, k, v and MLP input are one ``linear1``: diffusers' separate
  layers are fused back (``FUSE``), so a rank-r LoRA has r x (in + sum of outs) parameters there.
* musubi-tuner ``networks/lora_wan.py`` (``WAN_TARGET_REPLACE_MODULES = ["WanAttentionBlock"]``, exclude
  pattern ``.*(patch_embedding|text_embedding|time_embedding|time_projection|norm|head).*``): every
  ``Linear`` of a Wan block (self and cross attention q, k, v, o; the two FFN layers); diffusers'
  ``WanTransformerBlock`` has the same layers under other names.

Only the denoiser (UNet / DiT) is counted: a text-encoder LoRA (sd-scripts' default for SD1.5 without
``--network_train_unet_only``) adds its own tensors.

State per trained tensor of n elements (what the optimizers allocate; ``tests/test_memory.py`` checks
every formula against the bytes of real optimizers' state):

* torch AdamW: ``exp_avg`` and ``exp_avg_sq`` in the weights' dtype, a float32 ``step``.
* bitsandbytes AdamW8bit: two uint8 states of n bytes and two float32 ``absmax`` per 256-element block;
  tensors under 4096 elements (``min_8bit_size``) keep two float32 states instead.
* LoliClustered with full banks: K of the inner's states.
* ``AdamWClusteredSecondMoment``: one shared ``exp_avg`` and K ``exp_avg_sq`` (plus the float32 steps).
* ``offload="cpu"``: at most two banks on the GPU (the active one and the one being fetched), up to K-1
  in pinned CPU memory; entries shared by all banks stay on the GPU.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from .errors import LoliConfigError

GIB = 2**30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
STEP_BYTES = 4  # torch keeps each parameter's step as a float32 scalar tensor
BNB_MIN_8BIT_SIZE = 4096  # bitsandbytes Optimizer2State: smaller tensors get 32-bit state
BNB_BLOCK = 256  # bitsandbytes' blockwise quantisation: one float32 absmax per block and state
INNERS = ("AdamW", "AdamW8bit", "AdamWClusteredSecondMoment")

# --------------------------------------------------------------------------- architectures
# Published config values, copied from the configs named beside them (diffusers' config.json of each
# model's Hugging Face repository; keys are diffusers' constructor arguments).

#: stable-diffusion-v1-5/stable-diffusion-v1-5, unet/config.json (UNet2DConditionModel)
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
#: stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (UNet2DConditionModel)
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
    norm_num_groups=32,
)
#: black-forest-labs/FLUX.1-dev, transformer/config.json (FluxTransformer2DModel)
FLUX_DEV = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)
#: Wan-AI/Wan2.1-T2V-14B-Diffusers, transformer/config.json (WanTransformer3DModel)
WAN21_T2V_14B = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=40,
    attention_head_dim=128,
    in_channels=16,
    out_channels=16,
    text_dim=4096,
    freq_dim=256,
    ffn_dim=13824,
    num_layers=40,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=1024,
)

#: diffusers' Flux layers that BFL's layout (the one sd-scripts trains) holds as one layer: within one
#: block, the listed layers share their input and their outputs are concatenated
FLUX_FUSE = {
    "FluxTransformerBlock": [
        ("attn.to_q", "attn.to_k", "attn.to_v"),  # img_attn.qkv
        ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),  # txt_attn.qkv
    ],
    "FluxSingleTransformerBlock": [("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")],  # linear1
}


@dataclass(frozen=True)
class Architecture:
    title: str
    diffusers_class: str
    config: dict
    source: str
    #: class names of the blocks whose Linear / 1x1 Conv2d layers a LoRA targets
    lora_blocks: tuple[str, ...]
    #: what the LoRA wraps, in words (the trainer module it follows is cited beside each entry)
    lora_source: str
    fuse: dict = field(default_factory=dict)


ARCHITECTURES = {
    "sd15": Architecture(
        "SD1.5 UNet",
        "UNet2DConditionModel",
        SD15_UNET,
        "stable-diffusion-v1-5/stable-diffusion-v1-5 unet/config.json",
        ("Transformer2DModel",),
        "LoRA on every Linear and 1x1 Conv2d of its Transformer2DModels",  # sd-scripts networks/lora.py
    ),
    "sdxl": Architecture(
        "SDXL UNet",
        "UNet2DConditionModel",
        SDXL_UNET,
        "stabilityai/stable-diffusion-xl-base-1.0 unet/config.json",
        ("Transformer2DModel",),
        "LoRA on every Linear and 1x1 Conv2d of its Transformer2DModels",  # sd-scripts networks/lora.py
    ),
    "flux": Architecture(
        "FLUX.1-dev transformer",
        "FluxTransformer2DModel",
        FLUX_DEV,
        "black-forest-labs/FLUX.1-dev transformer/config.json",
        ("FluxTransformerBlock", "FluxSingleTransformerBlock"),
        "LoRA on every Linear of its double and single blocks in BFL's layout",  # sd-scripts networks/lora_flux.py
        FLUX_FUSE,
    ),
    "wan14b": Architecture(
        "Wan 2.1 T2V 14B transformer",
        "WanTransformer3DModel",
        WAN21_T2V_14B,
        "Wan-AI/Wan2.1-T2V-14B-Diffusers transformer/config.json",
        ("WanTransformerBlock",),
        "LoRA on every Linear of its blocks",  # musubi-tuner networks/lora_wan.py
    ),
}


@dataclass(frozen=True)
class Preset:
    title: str
    architecture: str
    rank: int | None  # None: every parameter is trained (full fine-tune)


PRESETS = {
    "sd15-lora": Preset("SD1.5 LoRA", "sd15", 16),
    "sdxl-lora": Preset("SDXL LoRA", "sdxl", 32),
    "flux-lora": Preset("Flux LoRA", "flux", 16),
    "wan14b-lora": Preset("Wan 14B LoRA", "wan14b", 32),
    "sdxl-full": Preset("SDXL full fine-tune", "sdxl", None),
}


def build_on_meta(name: str):
    """The architecture as a diffusers model on the meta device (shapes only)."""
    import diffusers
    from accelerate import init_empty_weights

    arch = ARCHITECTURES[name]
    cls = getattr(diffusers, arch.diffusers_class, None)
    if cls is None:
        raise LoliConfigError(
            f"{arch.title}: diffusers {diffusers.__version__} has no {arch.diffusers_class}; "
            "pip install -U diffusers (or give --params)"
        )
    with init_empty_weights():
        return cls(**arch.config)


def lora_targets(model, arch: Architecture) -> list[tuple[str, int, int]]:
    """(name, in features, out features) of every layer a LoRA of ``arch`` wraps, fused as the trainer's
    layout has them. A 1x1 Conv2d counts like a Linear (sd-scripts gives both the same LoRA)."""
    import torch

    targets = []
    for block_name, block in model.named_modules():
        kind = type(block).__name__
        if kind not in arch.lora_blocks:
            continue
        layers = {}
        for name, module in block.named_modules():
            if isinstance(module, torch.nn.Linear):
                layers[name] = (module.in_features, module.out_features)
            elif isinstance(module, torch.nn.Conv2d) and module.kernel_size == (1, 1):
                layers[name] = (module.in_channels, module.out_channels)
        for group in arch.fuse.get(kind, []):
            parts = [layers.pop(name) for name in group]
            if len({fan_in for fan_in, _ in parts}) != 1:
                raise AssertionError(f"{block_name}: fused layers {group} do not share their input")
            layers["+".join(group)] = (parts[0][0], sum(out for _, out in parts))
        targets += [(f"{block_name}.{name}", fan_in, fan_out) for name, (fan_in, fan_out) in layers.items()]
    return targets


def preset_tensors(name: str, rank: int | None = None) -> tuple[str, list[int]]:
    """A preset's title and the element count of every trained tensor (a LoRA layer has two: down r x in
    and up out x r)."""
    preset = PRESETS[name]
    rank = preset.rank if rank is None else rank
    arch = ARCHITECTURES[preset.architecture]
    model = build_on_meta(preset.architecture)
    if preset.rank is None:
        return f"{preset.title} ({arch.title}, every parameter)", [p.numel() for p in model.parameters()]
    sizes = []
    for _, fan_in, fan_out in lora_targets(model, arch):
        sizes += [rank * fan_in, fan_out * rank]
    return f"{preset.title} rank {rank} ({arch.title}; {arch.lora_source})", sizes


# --------------------------------------------------------------------------- state bytes
def adamw_bytes(sizes: list[int], dtype_bytes: int) -> int:
    return sum(2 * n * dtype_bytes + STEP_BYTES for n in sizes)


def adamw8bit_bytes(sizes: list[int]) -> int:
    total = 0
    for n in sizes:
        if n < BNB_MIN_8BIT_SIZE:
            total += 2 * n * 4
        else:
            total += 2 * n + 2 * 4 * -(-n // BNB_BLOCK)
    return total


@dataclass(frozen=True)
class Footprint:
    """Bytes on the weights' device and in CPU memory."""

    device: int
    cpu: int = 0


def footprint(sizes: list[int], inner: str, clusters: int, offload: str | None, dtype: str = "fp32") -> Footprint:
    """Optimizer-state bytes of ``LoliClustered(inner, clusters, offload)`` (``clusters=None``: the inner
    optimizer alone)."""
    width = DTYPE_BYTES[dtype]
    if inner == "AdamW":
        bank, shared = adamw_bytes(sizes, width), 0
    elif inner == "AdamW8bit":
        bank, shared = adamw8bit_bytes(sizes), 0
    elif inner == "AdamWClusteredSecondMoment":
        # per bank: exp_avg_sq and step; shared by all banks: exp_avg and the global step
        bank = sum(n * width + STEP_BYTES for n in sizes)
        shared = sum(n * width + STEP_BYTES for n in sizes)
    else:
        raise LoliConfigError(
            f"--inner {inner}: memory knows {', '.join(INNERS)}; for another inner, measure it with "
            f"`loli-plugin bench optimizer --inner {inner} --clusters K`"
        )
    if clusters is None:
        return Footprint(bank + shared)
    if offload is None or clusters <= 2:
        return Footprint(clusters * bank + shared)
    return Footprint(2 * bank + shared, (clusters - 1) * bank)


def choices(inner: str | None, clusters: int, offload: str | None) -> list[tuple[str, str, int | None, str | None]]:
    """(label, inner, K or None for the plain optimizer, offload) of every row the command prints."""
    rows = [
        ("AdamW", "AdamW", None, None),
        ("AdamW8bit", "AdamW8bit", None, None),
        (f"LoliClustered(AdamW, K={clusters})", "AdamW", clusters, None),
        (f"LoliClustered(AdamW8bit, K={clusters})", "AdamW8bit", clusters, None),
        (f"LoliClustered(AdamWClusteredSecondMoment, K={clusters})", "AdamWClusteredSecondMoment", clusters, None),
        (f'LoliClustered(AdamW, K={clusters}, offload="cpu")', "AdamW", clusters, "cpu"),
    ]
    if inner is not None:
        own = (inner, clusters, offload)
        if not any(row[1:] == own for row in rows):
            extra = f', offload="{offload}"' if offload else ""
            rows.append((f"LoliClustered({inner}, K={clusters}{extra})", *own))
    return rows


def gib(n: int) -> str:
    return f"{n / GIB:.2f}" if n >= 0.01 * GIB or n == 0 else f"{n / GIB:.3f}"


def table(sizes: list[int], inner, clusters, offload, dtype) -> list[str]:
    base = footprint(sizes, "AdamW", None, None, dtype).device
    lines = ["| optimizer | GPU (GiB) | CPU RAM (GiB) | GPU vs AdamW |", "|---|---|---|---|"]
    for label, row_inner, k, row_offload in choices(inner, clusters, offload):
        f = footprint(sizes, row_inner, k, row_offload, dtype)
        mark = " (yours)" if inner is not None and (row_inner, k, row_offload) == (inner, clusters, offload) else ""
        lines.append(f"| {label}{mark} | {gib(f.device)} | {gib(f.cpu) if f.cpu else '-'} | {f.device / base:.2f}x |")
    return lines


def summary_table(clusters: int = 10, dtype: str = "fp32") -> list[str]:
    """One row per preset: the README's table."""
    lines = [
        f"| {dtype} weights, K={clusters} | trained params | AdamW | AdamW8bit | Loli AdamW | Loli AdamW8bit "
        '| Loli CSM | Loli AdamW offload="cpu": GPU + CPU |',
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, preset in PRESETS.items():
        title, sizes = preset_tensors(name)
        cells = [f"{sum(sizes) / 1e6:,.1f} M" if sum(sizes) < 1e9 else f"{sum(sizes) / 1e9:.2f} B"]
        for inner, k, off in [
            ("AdamW", None, None),
            ("AdamW8bit", None, None),
            ("AdamW", clusters, None),
            ("AdamW8bit", clusters, None),
            ("AdamWClusteredSecondMoment", clusters, None),
        ]:
            cells.append(gib(footprint(sizes, inner, k, off, dtype).device))
        off = footprint(sizes, "AdamW", clusters, "cpu", dtype)
        cells.append(f"{gib(off.device)} + {gib(off.cpu)}")
        label = preset.title + (f" r{preset.rank}" if preset.rank else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


# --------------------------------------------------------------------------- command line
def parse_count(text: str) -> int:
    """``20e6``, ``20M``, ``2.6B``, ``85114880`` -> a whole number of parameters."""
    import argparse

    match = re.fullmatch(
        r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMbB]?)\s*", text.replace(",", "").replace("_", "")
    )
    if not match:
        raise argparse.ArgumentTypeError(f"expected a parameter count such as 20e6, 85M or 2.6B, got {text!r}")
    value = float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9}[match.group(2).lower()]
    if not 1 <= value < 1e15:
        raise argparse.ArgumentTypeError(f"expected a parameter count >= 1, got {text!r}")
    return round(value)


def add_parser(sub) -> None:
    from .cli_args import cluster_count, positive_int

    p = sub.add_parser(
        "memory",
        help="optimizer-state memory (GiB) of AdamW and each LoliClustered choice, for a parameter count or a preset",
        description="Optimizer-state memory in GiB of AdamW against each LoliClustered choice. Presets count the "
        "trained tensors of real architectures (diffusers classes with the published configs, built on the meta "
        "device; LoRA targets as the trainers' LoRA modules pick them).",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--params", type=parse_count, help="trained parameters, e.g. 85M, 2.6B or 20e6")
    what.add_argument(
        "--preset",
        choices=[*PRESETS, "all"],
        help="sd15-lora (rank 16), sdxl-lora (32), flux-lora (16), wan14b-lora (32), sdxl-full; all: one table",
    )
    p.add_argument("--rank", type=positive_int, help="LoRA rank of a LoRA preset (default: the preset's)")
    p.add_argument(
        "--inner", choices=INNERS, help="your inner optimizer: adds (or marks) its row with your --clusters/--offload"
    )
    p.add_argument("--clusters", type=cluster_count, default=10, help="K, the number of timestep clusters (default 10)")
    p.add_argument("--offload", choices=["cpu"], help='offload="cpu" for your --inner row')
    p.add_argument(
        "--dtype",
        choices=list(DTYPE_BYTES),
        default="fp32",
        help="dtype of the trained weights, which torch's AdamW state follows (default fp32: the trainers keep LoRA "
        "weights in fp32 unless told otherwise, e.g. with a full-bf16 option)",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    if args.offload and not args.inner:
        raise LoliConfigError("--offload describes your configuration's row: give --inner too")
    if args.rank is not None and (args.preset is None or args.preset == "all" or PRESETS[args.preset].rank is None):
        raise LoliConfigError("--rank goes with a LoRA preset (sd15-lora, sdxl-lora, flux-lora, wan14b-lora)")
    if args.preset == "all":
        print("\n".join(summary_table(args.clusters, args.dtype)))
        print("GiB of optimizer state; CSM = inner AdamWClusteredSecondMoment; offload: GPU (at most two banks) + CPU.")
        return 0
    if args.preset:
        title, sizes = preset_tensors(args.preset, args.rank)
    else:
        title, sizes = f"{args.params:,} parameters in one tensor", [args.params]
    print(f"{title}: {sum(sizes):,} trained parameters in {len(sizes):,} tensors, {args.dtype} weights")
    print("\n".join(table(sizes, args.inner, args.clusters, args.offload, args.dtype)))
    print(
        "GiB = 2^30 bytes of optimizer state (weights, gradients and activations come on top). AdamW's state follows "
        "the weights' dtype; AdamW8bit keeps 1 byte per element and state (tensors under 4096 elements: float32)."
    )
    if args.params is not None:
        print("A bare count is one tensor: for AdamW8bit the real layers' sizes matter little above 4096 elements.")
    return 0
