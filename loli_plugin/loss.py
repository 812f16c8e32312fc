"""The Loli loss: a weighted sum of MSE, L1 and (1 - cosine similarity), per element.

``loli_loss`` returns the unreduced loss by default so a trainer keeps applying its own masks, SNR
weights and per-sample weights exactly as it does for its built-in MSE.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from .errors import LoliConfigError
from .plugins import loss_terms
from .terms import cosine_term

__all__ = ["DEFAULT_WEIGHTS", "cosine_term", "loli_loss", "parse_loss_weights"]  # cosine_term: used by the adapters

DEFAULT_WEIGHTS = {"mse": 0.4, "l1": 0.4, "cos": 0.2}
_ALIASES = {"mae": "l1", "cosine": "cos", "l2": "mse"}


def parse_loss_weights(
    weights: Mapping[str, float] | str | None, option: str = "loli_loss_weights"
) -> dict[str, float]:
    """Validate loss weights given as a mapping or as ``"mse=0.4,l1=0.4,cos=0.2"``.

    Weights must be finite and non-negative, not all zero, and name known terms (built-ins or a
    plugin's). ``mae``/``cosine``/``l2`` are accepted as aliases of ``l1``/``cos``/``mse``.
    """
    if weights is None:
        return dict(DEFAULT_WEIGHTS)
    if isinstance(weights, str):
        parsed: dict[str, float] = {}
        for item in filter(None, (p.strip() for p in weights.replace(";", ",").split(","))):
            name, sep, value = item.partition("=")
            if not sep:
                raise LoliConfigError(
                    f'{option}: {item!r} is not of the form name=value; example: {option}="mse=0.4,l1=0.4,cos=0.2"'
                )
            try:
                parsed[name.strip()] = float(value)
            except ValueError:
                raise LoliConfigError(
                    f"{option}: the weight of {name.strip()!r} is {value.strip()!r}, not a number"
                ) from None
        weights = parsed
    if not isinstance(weights, Mapping) or not weights:
        raise LoliConfigError(f'{option} must name at least one term, e.g. {option}="mse=0.4,l1=0.4,cos=0.2"')
    terms = loss_terms()
    out: dict[str, float] = {}
    for name, value in weights.items():
        key = _ALIASES.get(str(name).lower(), str(name).lower())
        if key not in terms:
            raise LoliConfigError(f"{option}: unknown loss term {name!r}; known terms: {', '.join(sorted(terms))}")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise LoliConfigError(f"{option}: the weight of {name!r} is {value!r}, not a number") from None
        if not math.isfinite(value) or value < 0:
            raise LoliConfigError(f"{option}: the weight of {name!r} is {value}; weights must be finite and >= 0")
        out[key] = out.get(key, 0.0) + value
    if not any(out.values()):
        raise LoliConfigError(
            f"{option}: all weights are zero, so there is no loss to train on; give at least one term a positive weight"
        )
    return out


def loli_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Mapping[str, float] | str | None = None,
    reduction: str = "none",
    dim: int = 1,
) -> torch.Tensor:
    """``w_mse·(p−t)² + w_l1·|p−t| + w_cos·(1−cos(p, t))``, the cosine taken along ``dim``.

    ``reduction="none"`` (default) returns a tensor of ``pred``'s shape; ``"mean"`` and ``"sum"``
    reduce it. Terms with weight 0 are not computed.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"loli_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape"
        )
    if reduction not in ("none", "mean", "sum"):
        raise LoliConfigError(f"loli_loss: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
    weights = parse_loss_weights(weights)
    terms = loss_terms()
    loss = None
    for name, w in weights.items():
        if w == 0:
            continue
        term = w * terms[name](pred, target, dim)
        loss = term if loss is None else loss + term
    loss = loss.expand_as(pred) if loss.shape != pred.shape else loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss
