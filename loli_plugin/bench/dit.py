"""A tiny Flux-style transformer on packed tokens for the digits benchmark: diffusers' own
``FluxTransformer2DModel`` (MMDiT double-stream blocks, then single-stream blocks, rotary positions
from image ids) with a tiny configuration.

Like Flux, the model sees *packed* latents: each 2x2 patch of the 8x8 single-channel image is one
token of 4 channels, so an image is 16 tokens (N, 16, 4) in and out, and the loss is computed on
the packed tokens (the Loli loss's cosine along ``dim=-1``, each token's channels, as the README
tells users of packed latents). There is no text: the text stream is one zero token (and zero
pooled projection), which the model's context embedder turns into a learned constant, as an empty
prompt does. The timestep goes in as the UNet's does (``t * 1000``) and is divided back to Flux's
``[0, 1]`` here.
"""

from __future__ import annotations

import torch

PATCH = 2  # pixels per token side: 8x8 -> 4x4 tokens of 2*2 channels
SIDE = 8 // PATCH
TOKENS = SIDE * SIDE
CHANNELS = PATCH * PATCH
# width 32 = 2 heads of 16; rotary axes (id, row, column) share the 16 dims of a head
CONFIG = dict(
    patch_size=1,
    in_channels=CHANNELS,
    num_layers=1,
    num_single_layers=2,
    attention_head_dim=16,
    num_attention_heads=2,
    joint_attention_dim=16,
    pooled_projection_dim=16,
    axes_dims_rope=(4, 6, 6),
)
# The LoRA's targets, as kohya's networks/lora_flux.py and musubi-tuner's DiT LoRAs pick them: the
# attention projections (q, k, v, out; the text stream's too) and the MLPs of every block, not the
# embedders, norms' modulation or the final projection.
LORA_TARGETS = (
    r".*transformer_blocks\.\d+\.(attn\.(to_q|to_k|to_v|to_out\.0|add_q_proj|add_k_proj|add_v_proj|to_add_out)"
    r"|ff\.net\.(0\.proj|2)|ff_context\.net\.(0\.proj|2)|proj_mlp|proj_out)"
)


def pack(images: torch.Tensor) -> torch.Tensor:
    """(N, 1, 8, 8) images -> (N, 16, 4) tokens, row-major over 2x2 patches (Flux's ``_pack_latents``
    layout: channel, then the patch's rows and columns)."""
    n, c = images.shape[:2]
    x = images.reshape(n, c, SIDE, PATCH, SIDE, PATCH).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, TOKENS, c * PATCH * PATCH)


def unpack(tokens: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack``."""
    n = tokens.shape[0]
    x = tokens.reshape(n, SIDE, SIDE, 1, PATCH, PATCH).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, 1, 8, 8)


class _Output:
    def __init__(self, sample: torch.Tensor):
        self.sample = sample


class PackedDiT(torch.nn.Module):
    """``FluxTransformer2DModel`` with the inputs a text-free digits model needs; ``forward(tokens,
    t * 1000)`` returns an object with ``.sample`` (N, 16, 4), like a diffusers UNet's output."""

    def __init__(self):
        from diffusers import FluxTransformer2DModel

        super().__init__()
        self.transformer = FluxTransformer2DModel(**CONFIG)
        rows, cols = torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij")
        img_ids = torch.stack([torch.zeros(TOKENS), rows.flatten().float(), cols.flatten().float()], dim=1)
        self.register_buffer("img_ids", img_ids, persistent=False)
        self.register_buffer("txt_ids", torch.zeros(1, 3), persistent=False)

    def forward(self, tokens: torch.Tensor, timestep: torch.Tensor) -> _Output:
        n = tokens.shape[0]
        out = self.transformer(
            hidden_states=tokens,
            encoder_hidden_states=tokens.new_zeros(n, 1, CONFIG["joint_attention_dim"]),
            pooled_projections=tokens.new_zeros(n, CONFIG["pooled_projection_dim"]),
            timestep=timestep.to(tokens.dtype) / 1000,
            img_ids=self.img_ids,
            txt_ids=self.txt_ids,
        ).sample
        return _Output(out)


def tiny_dit() -> PackedDiT:
    return PackedDiT()
