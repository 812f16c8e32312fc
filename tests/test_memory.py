"""``loli-plugin memory``: its formulas are the bytes real optimizers allocate, and its presets are the
architectures' published configs (the LoRA target layers and parameter counts recomputed here by hand
from the config values, independently of diffusers' classes)."""

import pytest
import torch

from loli_plugin import LoliClustered
from loli_plugin.cli import main
from loli_plugin.memory import (
    ARCHITECTURES,
    FLUX_DEV,
    PRESETS,
    SD15_UNET,
    SDXL_UNET,
    WAN21_T2V_14B,
    build_on_meta,
    footprint,
    lora_targets,
    preset_tensors,
)

# sizes below and above bitsandbytes' 8-bit threshold (4096) and not multiples of its 256-element block
SIZES = [(16, 40), (64, 64), (16, 320), (300, 17), (7,)]


def stepped(opt, params, clusters):
    for _ in range(clusters):  # every bank steps once
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    return opt


def state_bytes(opt) -> int:
    """Bytes of every state tensor, each counted once (a shared entry sits in every bank)."""
    banks = [opt.bank(k) for k in range(opt.clusters)] if isinstance(opt, LoliClustered) else [opt.state]
    tensors = {}
    for bank in banks:
        for state in bank.values():
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and not key.startswith("qmap"):  # bnb's 2 KB maps: one per process
                    tensors[id(value)] = value
    return sum(v.numel() * v.element_size() for v in tensors.values())


def params_of(dtype):
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in SIZES]


@pytest.mark.parametrize("dtype, name", [(torch.float32, "fp32"), (torch.bfloat16, "bf16")])
@pytest.mark.parametrize(
    "inner, clusters",
    [("AdamW", None), ("AdamW8bit", None)]  # the plain optimizers
    + [(inner, k) for inner in ("AdamW", "AdamWClusteredSecondMoment", "AdamW8bit") for k in (1, 3)],
)
def test_formula_is_what_the_optimizer_allocates(inner, clusters, dtype, name):
    if inner == "AdamW8bit":
        pytest.importorskip("bitsandbytes")
    params = params_of(dtype)
    sizes = [p.numel() for p in params]
    if clusters is None:
        if inner == "AdamW8bit":
            import bitsandbytes as bnb

            opt = bnb.optim.AdamW8bit(params, lr=1e-3)
        else:
            opt = torch.optim.AdamW(params, lr=1e-3)
        stepped(opt, params, 1)
    else:
        opt = stepped(LoliClustered(params, inner=inner, clusters=clusters, lr=1e-3), params, clusters)
    assert state_bytes(opt) == footprint(sizes, inner, clusters, None, name).device


def test_offload_keeps_at_most_two_banks_on_the_device():
    sizes = [1000, 5000]
    full = footprint(sizes, "AdamW", 10, None).device
    off = footprint(sizes, "AdamW", 10, "cpu")
    assert off.device == 2 * full // 10 and off.cpu == 9 * full // 10
    csm = footprint(sizes, "AdamWClusteredSecondMoment", 10, "cpu")
    shared = sum(n * 4 + 4 for n in sizes)  # the shared first moment stays on the device
    assert csm.device == shared + 2 * shared and csm.cpu == 9 * shared
    assert footprint(sizes, "AdamW", 2, "cpu").cpu == 0  # two banks fit: nothing to park


# --------------------------------------------------------------------------- the presets, by hand
def sd_unet_lora_layers(config):
    """(in, out) of every layer sd-scripts' LoRA wraps in an SD UNet: per Transformer2DModel of width C
    (proj_in, proj_out) and per transformer block attn1 q k v out (C->C), attn2 q out (C->C) and k v
    (cross_attention_dim -> C), GEGLU C->8C and C*4->C. Down blocks have layers_per_block attentions,
    the mid block one, up blocks layers_per_block + 1."""
    widths = config["block_out_channels"]
    depth = config.get("transformer_layers_per_block", (1,) * len(widths))
    d = config["cross_attention_dim"]
    attentions = []  # (width, blocks) of every Transformer2DModel
    for i, kind in enumerate(config["down_block_types"]):
        if kind.startswith("CrossAttn"):
            attentions += [(widths[i], depth[i])] * config["layers_per_block"]
    attentions.append((widths[-1], depth[-1]))  # mid block
    for i, kind in enumerate(config["up_block_types"]):
        level = len(widths) - 1 - i
        if kind.startswith("CrossAttn"):
            attentions += [(widths[level], depth[level])] * (config["layers_per_block"] + 1)
    layers = []
    for c, blocks in attentions:
        layers += [(c, c), (c, c)]
        for _ in range(blocks):
            layers += [(c, c)] * 4 + [(c, c), (d, c), (d, c), (c, c)] + [(c, 8 * c), (4 * c, c)]
    return layers


def flux_lora_layers(config):
    """BFL's layout, as sd-scripts' lora_flux wraps it: per double block, for image and text each,
    the modulation (h -> 6h), qkv (h -> 3h), proj (h -> h), MLP (h -> 4h, 4h -> h); per single block
    linear1 (h -> 3h + 4h), linear2 (h + 4h -> h) and the modulation (h -> 3h)."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    double = [(h, 6 * h), (h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)] * 2
    single = [(h, 7 * h), (5 * h, h), (h, 3 * h)]
    return double * config["num_layers"] + single * config["num_single_layers"]


def wan_lora_layers(config):
    """musubi-tuner's lora_wan: per block, self and cross attention q k v o (h -> h), FFN h -> ffn -> h."""
    h = config["num_attention_heads"] * config["attention_head_dim"]
    return ([(h, h)] * 8 + [(h, config["ffn_dim"]), (config["ffn_dim"], h)]) * config["num_layers"]


BY_HAND = {
    "sd15": lambda: sd_unet_lora_layers(SD15_UNET),
    "sdxl": lambda: sd_unet_lora_layers(SDXL_UNET),
    "flux": lambda: flux_lora_layers(FLUX_DEV),
    "wan14b": lambda: wan_lora_layers(WAN21_T2V_14B),
}


def sdxl_unet_parameters(config) -> int:
    """Every parameter of the SDXL UNet, from its config: resnets (GroupNorms, two 3x3 convs, the time
    projection, a 1x1 shortcut when the width changes), Transformer2DModels (GroupNorm, linear
    proj_in/out, blocks of three LayerNorms, self and cross attention without q/k/v bias, GEGLU FF),
    down/upsamplers, the time and text-time embeddings, conv_in / conv_out."""
    widths, depth, d = (
        config["block_out_channels"],
        config["transformer_layers_per_block"],
        config["cross_attention_dim"],
    )
    temb = 4 * widths[0]

    def resnet(cin, cout):
        shortcut = cin * cout + cout if cin != cout else 0
        return 2 * cin + 9 * cin * cout + cout + temb * cout + cout + 2 * cout + 9 * cout * cout + cout + shortcut

    def transformer(c, blocks):
        block = 2 * c + 3 * c * c + c * c + c  # norm1, attn1
        block += 2 * c + c * c + 2 * d * c + c * c + c  # norm2, attn2
        block += 2 * c + c * 8 * c + 8 * c + 4 * c * c + c  # norm3, GEGLU feed-forward
        return 2 * c + 2 * (c * c + c) + blocks * block

    def sampler(c):
        return 9 * c * c + c

    n = config["in_channels"] * widths[0] * 9 + widths[0]  # conv_in
    n += widths[0] * temb + temb + temb * temb + temb  # time_embedding
    n += config["projection_class_embeddings_input_dim"] * temb + temb + temb * temb + temb  # add_embedding
    skips, cin = [widths[0]], widths[0]
    for i, kind in enumerate(config["down_block_types"]):
        for _ in range(config["layers_per_block"]):
            n += resnet(cin, widths[i])
            cin = widths[i]
            if kind.startswith("CrossAttn"):
                n += transformer(widths[i], depth[i])
            skips.append(cin)
        if i < len(widths) - 1:
            n += sampler(cin)
            skips.append(cin)
    n += 2 * resnet(widths[-1], widths[-1]) + transformer(widths[-1], depth[-1])  # mid block
    for i, kind in enumerate(config["up_block_types"]):
        level = len(widths) - 1 - i
        for _ in range(config["layers_per_block"] + 1):
            n += resnet(cin + skips.pop(), widths[level])
            cin = widths[level]
            if kind.startswith("CrossAttn"):
                n += transformer(widths[level], depth[level])
        if level > 0:
            n += sampler(cin)
    n += 2 * widths[0] + widths[0] * config["out_channels"] * 9 + config["out_channels"]  # norm_out, conv_out
    return n


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_lora_targets_match_the_config_by_hand(name):
    targets = lora_targets(build_on_meta(name), ARCHITECTURES[name])
    assert sorted((i, o) for _, i, o in targets) == sorted(BY_HAND[name]())


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.rank])
def test_lora_presets_count_rank_times_in_plus_out(name):
    preset = PRESETS[name]
    _, sizes = preset_tensors(name)
    assert sum(sizes) == preset.rank * sum(i + o for i, o in BY_HAND[preset.architecture]())


def test_known_lora_sizes():
    """The published sizes users know, for a second opinion on the arithmetic above: an SDXL UNet LoRA of
    rank 32 is about 85 M parameters (170 MB in fp16), a Flux one of rank 16 about 77 M."""
    assert sum(preset_tensors("sdxl-lora")[1]) == 85_114_880
    assert sum(preset_tensors("flux-lora")[1]) == 76_578_816
    assert sum(preset_tensors("wan14b-lora")[1]) == 153_354_240
    assert sum(preset_tensors("sd15-lora")[1]) == 6_782_976


def test_full_sdxl_is_every_unet_parameter():
    _, sizes = preset_tensors("sdxl-full")
    assert sum(sizes) == sdxl_unet_parameters(SDXL_UNET) == 2_567_463_684  # the SDXL UNet's published count


def test_base_models_have_their_published_parameter_counts():
    counts = {name: sum(p.numel() for p in build_on_meta(name).parameters()) for name in ARCHITECTURES}
    assert counts == {"sd15": 859_520_964, "sdxl": 2_567_463_684, "flux": 11_901_408_320, "wan14b": 14_288_491_584}


def test_command_prints_adamw_against_each_choice(capsys):
    assert main(["memory", "--params", "85M", "--inner", "AdamW8bit", "--clusters", "5", "--offload", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "85,000,000 trained parameters" in out
    rows = {line.split(" | ")[0].lstrip("| "): line for line in out.splitlines() if line.startswith("| ")}
    assert rows["AdamW"].split(" | ")[1] == f"{85e6 * 8 / 2**30:.2f}"
    assert "LoliClustered(AdamW, K=5)" in rows and "LoliClustered(AdamWClusteredSecondMoment, K=5)" in rows
    assert 'LoliClustered(AdamW8bit, K=5, offload="cpu") (yours)' in rows


def test_readme_carries_the_command_table(capsys):
    from pathlib import Path

    assert main(["memory", "--preset", "all"]) == 0
    table = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "\n".join(table) in readme, "README's memory table differs from `loli-plugin memory --preset all`"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["memory"], "one of the arguments --params --preset is required"),
        (["memory", "--params", "abc"], "expected a parameter count"),
        (["memory", "--params", "0"], "expected a parameter count >= 1"),
        (["memory", "--preset", "sdxl-full", "--rank", "8"], "--rank goes with a LoRA preset"),
        (["memory", "--params", "1M", "--offload", "cpu"], "give --inner too"),
        (["memory", "--params", "1M", "--clusters", "0"], "--clusters must be >= 1"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
