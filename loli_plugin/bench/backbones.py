"""The two backbones of the digits benchmark, behind one interface: how to build the model, the layout
it works in (images, or Flux-style packed tokens), the objectives it is trained with, its pre-training
recipe, its LoRA targets and the dimension the Loli loss's cosine runs along.

* ``unet``: a small diffusers ``UNet2DModel`` on (N, 1, 8, 8) images; epsilon prediction or rectified
  flow with logit-normal timesteps; a LoRA on the attention projections and the ResNet convolutions.
* ``dit``: a tiny ``FluxTransformer2DModel`` on packed tokens (``dit.py``); rectified flow with SD3's
  shifted logit-normal timesteps (shift 3, ``--timestep_sampling shift --discrete_flow_shift 3`` in
  sd-scripts' SD3 and musubi-tuner); a LoRA on the attention and MLP projections of every block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .dit import LORA_TARGETS as DIT_LORA_TARGETS


@dataclass(frozen=True)
class Backbone:
    name: str
    label: str
    objectives: tuple[str, ...]
    #: pre-training recipe (``make-base``): steps, seed, batch, lr of AdamW on every digit but the held-out one
    recipe: dict = field(hash=False)
    lora_targets: object = field(hash=False)  # peft target_modules: a list of names or a regex
    loss_dim: int = 1  # the Loli loss's cosine: channels of an image, channels of a packed token
    shift: float | None = None  # flow-matching timestep shift

    def build(self) -> torch.nn.Module:
        if self.name == "unet":
            from .digits import tiny_unet

            return tiny_unet()
        from .dit import tiny_dit

        return tiny_dit()

    def to_model(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 1, 8, 8) images in the model's layout."""
        if self.name == "unet":
            return images
        from .dit import pack

        return pack(images)

    def to_images(self, x: torch.Tensor) -> torch.Tensor:
        """The model's layout back to (N, 1, 8, 8) images."""
        if self.name == "unet":
            return x
        from .dit import unpack

        return unpack(x)

    def objective(self, name: str):
        from .digits import Objective

        if name not in self.objectives:
            raise ValueError(f"the {self.label} is trained with {', '.join(self.objectives)} only, not {name}")
        return Objective(name, shift=self.shift)

    def noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Standard normal noise for ``n`` images, in the model's layout (drawn as images, then packed)."""
        return self.to_model(torch.randn((n, 1, 8, 8), generator=generator))


UNET = Backbone(
    name="unet",
    label="UNet",
    objectives=("eps", "flow"),
    recipe={"steps": 600, "seed": 0, "batch": 64, "lr": 2e-3},
    lora_targets=["to_q", "to_k", "to_v", "conv1", "conv2"],
    loss_dim=1,
)
DIT = Backbone(
    name="dit",
    label="DiT (Flux-style, packed tokens)",
    objectives=("flow",),
    recipe={"steps": 600, "seed": 0, "batch": 64, "lr": 2e-3},
    lora_targets=DIT_LORA_TARGETS,
    loss_dim=-1,
    shift=3.0,
)
BACKBONES = {b.name: b for b in (UNET, DIT)}


def get(name: str) -> Backbone:
    return BACKBONES[name]
