"""The built-in terms of the Loli loss, each ``term(pred, target, dim)`` -> a per-element tensor that
broadcasts to ``pred``'s shape. Plugins add terms through the ``loli_loss_terms`` hook."""

from __future__ import annotations

from collections.abc import Callable

import torch

_EPS = 1e-8


def mse_term(pred: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    return (pred - target) ** 2


def l1_term(pred: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    return (pred - target).abs()


def cosine_term(pred: torch.Tensor, target: torch.Tensor, dim: int) -> torch.Tensor:
    """``1 - cos(pred, target)`` along ``dim`` at every other position, kept as a size-1 dim to broadcast.

    For image latents ``(B, C, H, W)`` dim=1 compares the channel vectors of each pixel. For packed
    sequence latents ``(B, L, D)`` (Flux, SD3 after patchify) pass ``dim=-1``.
    The norms are clamped *before* the square root, so a zero vector gives cos = 0 (loss 1) with
    finite gradients, instead of the NaN gradient of sqrt at 0.
    """
    dot = (pred * target).sum(dim=dim, keepdim=True)
    norms = (
        pred.pow(2).sum(dim=dim, keepdim=True).clamp_min(_EPS**2)
        * target.pow(2).sum(dim=dim, keepdim=True).clamp_min(_EPS**2)
    ).sqrt()
    return 1.0 - dot / norms


BUILTIN_TERMS: dict[str, Callable] = {"mse": mse_term, "l1": l1_term, "cos": cosine_term}
