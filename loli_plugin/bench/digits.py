"""A tiny diffusion setup on scikit-learn's handwritten digits, shared by ``loli-plugin demo`` and
``loli-plugin bench quality``: the data (shipped with scikit-learn, nothing downloaded), the two
backbones (a small diffusers ``UNet2DModel`` here, a tiny Flux-style transformer on packed tokens in
``dit.py``), the training objectives with a fixed validation grid, pre-training on every digit but
the held-out one (9 by default) and a peft LoRA for the held-out digit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


def digits(classes) -> torch.Tensor:
    """Images of the given digit classes as (N, 1, 8, 8) in [-1, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32) / 8.0 - 1.0  # 0..16 -> -1..1, shape (N, 8, 8)
    y = torch.tensor(data.target)
    keep = torch.isin(y, torch.tensor(list(classes)))
    return x[keep][:, None]


HELD_OUT = 9  # the digit the shipped base models never saw and the demo's LoRA learns
TRAIN_IMAGES = 120  # of the held-out digit's ~180 images, the LoRA's training set; the rest validates


def held_out_split(digit: int = HELD_OUT) -> tuple[torch.Tensor, torch.Tensor]:
    """The held-out ``digit`` split into the LoRA's training images and its validation images."""
    images = digits([digit])
    return images[:TRAIN_IMAGES], images[TRAIN_IMAGES:]


def nine_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Digit 9 split into the LoRA's training images and its held-out validation images."""
    return held_out_split(9)


def base_digits(held_out: int = HELD_OUT) -> list[int]:
    """The digits a base model is pre-trained on: all but the held-out one."""
    return [d for d in range(10) if d != held_out]


def tiny_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=16,
    )


UNET_LORA_TARGETS = ["to_q", "to_k", "to_v", "conv1", "conv2"]


def add_lora(model, targets=None):
    """Freeze ``model`` and inject a rank-8 peft LoRA into ``targets`` (peft ``target_modules``: names or
    a regex; default the UNet's); returns the model and the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    model = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=8, target_modules=UNET_LORA_TARGETS if targets is None else targets), model
    )
    return model, [p for p in model.parameters() if p.requires_grad]


class Objective:
    """Noising, target and fixed validation grid for one training objective: ``eps`` (epsilon
    prediction, DDPM schedule, integer timesteps drawn uniformly) or ``flow`` (rectified flow,
    logit-normal t; with ``shift`` s, SD3/Flux's shifted logit-normal ``t' = s t / (1 + (s - 1) t)``,
    and the sampler's time grid shifted the same way, as diffusers' FlowMatchEulerDiscreteScheduler
    does). Works on any tensor layout: images (N, 1, 8, 8) or packed tokens (N, tokens, channels)."""

    def __init__(self, name: str, shift: float | None = None):
        from diffusers import DDPMScheduler

        from ..sampling import DiscreteUniform, LogitNormal, Shift

        if shift is not None and name != "flow":
            raise ValueError("a timestep shift applies to flow matching only")
        self.name, self.shift = name, shift
        self.sched = DDPMScheduler(num_train_timesteps=1000)
        if name == "eps":
            self.dist = DiscreteUniform(0, 1000)
        else:
            self.dist = LogitNormal(0.0, 1.0) if shift is None else Shift(LogitNormal(0.0, 1.0), shift)
        self.grid = torch.linspace(50, 950, 9).long() if name == "eps" else torch.linspace(0.05, 0.95, 9)

    def shifted(self, t: torch.Tensor) -> torch.Tensor:
        """Flow time ``t`` through this objective's shift (identity without one)."""
        s = self.shift
        return t if s is None else s * t / (1 + (s - 1) * t)

    def noisy(self, x0, t, g):
        """(model input, model timestep, target) for clean images ``x0`` at timesteps ``t``, with
        noise drawn from ``g``."""
        return self.noised(x0, torch.randn(x0.shape, generator=g), t)

    def noised(self, x0, noise, t):
        """(model input, model timestep, target) for clean images ``x0`` with this ``noise`` at ``t``."""
        if self.name == "eps":
            return self.sched.add_noise(x0, noise, t), t, noise
        tt = t.view(-1, *[1] * (x0.dim() - 1))
        return (1 - tt) * x0 + tt * noise, t * 1000, noise - x0  # velocity target

    def grid_losses(self, model, x_val) -> list[float]:
        """MSE at each timestep of the fixed grid, with fixed noise: comparable from one evaluation
        to the next because neither the timesteps nor the noise move."""
        g = torch.Generator().manual_seed(1234)
        per_t = []
        with torch.no_grad():
            for value in self.grid:
                t = torch.full((len(x_val),), value.item(), dtype=self.grid.dtype)
                xt, tt, target = self.noisy(x_val, t, g)
                per_t.append(torch.nn.functional.mse_loss(model(xt, tt).sample, target).item())
        return per_t


# The recipe of the shipped UNet base models (``loli-plugin bench make-base`` regenerates them);
# backbones.py holds each backbone's.
PRETRAIN = {"steps": 600, "seed": 0, "batch": 64, "lr": 2e-3}


def pretrain(
    objective: Objective,
    steps: int | None = None,
    seed: int | None = None,
    progress: Callable[[Iterable], Iterable] = iter,
    after_step: Callable[[int, dict], None] | None = None,
    *,
    backbone,
    held_out: int = HELD_OUT,
) -> dict:
    """Train ``backbone`` (a ``backbones.Backbone``; passed in, since backbones imports this module) on
    every digit but ``held_out`` with its recipe (batch 64, AdamW); returns its state_dict. ``steps`` and
    ``seed`` override the recipe's. ``progress`` wraps the step range (e.g. a tqdm progress bar);
    ``after_step(n, state_dict)`` is called after optimizer step n (1-based).

    Runs on ONE CPU thread: oneDNN's convolutions and the vectorized reductions split their sums by
    thread count, so 1 and 2 threads give different bits; with one thread the result is the same
    bits on every run and thread setting of the same CPU type and torch build."""
    recipe = backbone.recipe
    steps = recipe["steps"] if steps is None else steps
    seed = recipe["seed"] if seed is None else seed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        data = backbone.to_model(digits(base_digits(held_out)))
        model = backbone.build()
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"])
        batch = recipe["batch"]
        for step in progress(range(steps)):
            x0 = data[torch.randint(len(data), (batch,), generator=g)]
            t = objective.dist.sample(batch, generator=g)
            xt, tt, target = objective.noised(x0, backbone.to_model(torch.randn((batch, 1, 8, 8), generator=g)), t)
            loss = torch.nn.functional.mse_loss(model(xt, tt).sample, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(step + 1, model.state_dict())
        return {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
