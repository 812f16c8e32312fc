"""A tiny diffusion setup on scikit-learn's handwritten digits, shared by ``loli-plugin demo`` and
``loli-plugin bench quality``: the data (shipped with scikit-learn, nothing downloaded), a small
diffusers ``UNet2DModel``, the two training objectives with a fixed validation grid, pre-training on
digits 0-8 and a peft LoRA for the held-out digit 9.
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


def nine_split() -> tuple[torch.Tensor, torch.Tensor]:
    """Digit 9 split into the LoRA's training images and its held-out validation images."""
    nine = digits([9])
    return nine[:120], nine[120:]


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


def add_lora(model):
    """Freeze ``model`` and inject a rank-8 peft LoRA; returns the model and the LoRA parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    model.requires_grad_(False)
    model = inject_adapter_in_model(
        LoraConfig(r=8, lora_alpha=8, target_modules=["to_q", "to_k", "to_v", "conv1", "conv2"]), model
    )
    return model, [p for p in model.parameters() if p.requires_grad]


class Objective:
    """Noising, target and fixed validation grid for one training objective: ``eps`` (epsilon
    prediction, DDPM schedule, integer timesteps drawn uniformly) or ``flow`` (rectified flow,
    logit-normal t)."""

    def __init__(self, name: str):
        from diffusers import DDPMScheduler

        from ..sampling import DiscreteUniform, LogitNormal

        self.name = name
        self.sched = DDPMScheduler(num_train_timesteps=1000)
        self.dist = DiscreteUniform(0, 1000) if name == "eps" else LogitNormal(0.0, 1.0)
        self.grid = torch.linspace(50, 950, 9).long() if name == "eps" else torch.linspace(0.05, 0.95, 9)

    def noisy(self, x0, t, g):
        """(model input, model timestep, target) for clean images ``x0`` at timesteps ``t``, with
        noise drawn from ``g``."""
        return self.noised(x0, torch.randn(x0.shape, generator=g), t)

    def noised(self, x0, noise, t):
        """(model input, model timestep, target) for clean images ``x0`` with this ``noise`` at ``t``."""
        if self.name == "eps":
            return self.sched.add_noise(x0, noise, t), t, noise
        tt = t.view(-1, 1, 1, 1)
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


# The recipe of the shipped base models (``loli-plugin bench make-base`` regenerates them).
PRETRAIN = {"steps": 600, "seed": 0, "batch": 64, "lr": 2e-3}


def pretrain(
    objective: Objective,
    steps: int = PRETRAIN["steps"],
    seed: int = PRETRAIN["seed"],
    progress: Callable[[Iterable], Iterable] = iter,
    after_step: Callable[[int, dict], None] | None = None,
) -> dict:
    """Train the tiny UNet on digits 0-8 (batch 64, AdamW 2e-3); returns its state_dict.
    ``progress`` wraps the step range (e.g. a tqdm progress bar); ``after_step(n, state_dict)`` is
    called after optimizer step n (1-based).

    Runs on ONE CPU thread: oneDNN's convolutions and the vectorized reductions split their sums by
    thread count, so 1 and 2 threads give different bits; with one thread the result is the same
    bits on every run and thread setting of the same CPU type and torch build."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)
        data = digits(range(9))
        model = tiny_unet()
        opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN["lr"])
        batch = PRETRAIN["batch"]
        for step in progress(range(steps)):
            x0 = data[torch.randint(len(data), (batch,), generator=g)]
            xt, tt, target = objective.noisy(x0, objective.dist.sample(batch, generator=g), g)
            loss = torch.nn.functional.mse_loss(model(xt, tt).sample, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if after_step is not None:
                after_step(step + 1, model.state_dict())
        return {k: v.clone() for k, v in model.state_dict().items()}
    finally:
        torch.set_num_threads(threads)
