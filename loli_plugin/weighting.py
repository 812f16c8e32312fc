"""Per-cluster loss normalisation: each timestep cluster's loss divided by its own running mean.

In the spirit of EDM2's uncertainty weighting (Karras et al. 2024), which learns a log-variance u(sigma)
per noise level and minimises ``loss / exp(u) + u``: for a fixed loss level that objective is smallest
at ``exp(u) = E[loss]``, so the learned weight converges to 1 / (the noise level's mean loss), and every
noise level contributes a loss of about 1. ``ClusterLossNormalizer`` uses that optimum directly, per
cluster: the weight is one over an exponential moving average of the cluster's own loss (bias-corrected,
so the first loss of a cluster is divided by itself), held constant in the backward pass. It needs no
learning rate and no warm-up, which a learned u would on short LoRA runs (at lr 1e-3 it moves by about
1e-3 per step, far too slow to reach log-losses of -2 to -5 in a few hundred steps).

Why it is an option and not part of LoliClustered: with K Adam-type banks each cluster's updates are
already normalised by its own second moment, and multiplying a cluster's loss by a constant leaves
Adam's update unchanged (up to eps), so inside LoliClustered this weight changes almost nothing. It
matters for a single optimizer state (plain AdamW with one cluster per step), where it is a cheap way to
give every noise level an equal share of the gradient. ``bench quality`` measures both.
"""

from __future__ import annotations

import torch

from .errors import LoliConfigError
from .options import check_clusters


class ClusterLossNormalizer:
    """``normalizer(loss, k)`` returns ``loss / m_k``, where ``m_k`` is cluster k's bias-corrected EMA of
    its losses including this one (a detached scalar: the gradient is ``grad(loss) / m_k``)."""

    def __init__(self, clusters: int, decay: float = 0.9):
        self.clusters = check_clusters(clusters)
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 <= decay < 1.0:
            raise LoliConfigError(f"decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.ema = [0.0] * self.clusters
        self.count = [0] * self.clusters

    def mean(self, k: int) -> float:
        """Cluster k's bias-corrected running mean (nan before its first loss)."""
        n = self.count[k]
        return self.ema[k] / (1 - self.decay**n) if n else float("nan")

    def update(self, k: int, value: float) -> float:
        """Add one loss value of cluster ``k``; returns its running mean after it."""
        if not 0 <= k < self.clusters:
            raise LoliConfigError(f"cluster {k} is outside [0, {self.clusters})")
        self.ema[k] = self.decay * self.ema[k] + (1 - self.decay) * float(value)
        self.count[k] += 1
        return self.mean(k)

    def __call__(self, loss: torch.Tensor, k: int) -> torch.Tensor:
        m = self.update(k, loss.detach().double().mean().item())
        if not m > 0:
            raise LoliConfigError(f"cluster {k}'s running loss is {m}; normalisation needs positive losses")
        return loss / m

    def state_dict(self) -> dict:
        return {"clusters": self.clusters, "decay": self.decay, "ema": list(self.ema), "count": list(self.count)}

    def load_state_dict(self, state: dict) -> None:
        if state.get("clusters") != self.clusters:
            raise LoliConfigError(
                f"the saved loss normaliser has clusters={state.get('clusters')}, this run clusters={self.clusters}"
            )
        self.ema, self.count = [float(x) for x in state["ema"]], [int(x) for x in state["count"]]
