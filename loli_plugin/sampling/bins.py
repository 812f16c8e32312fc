"""Equal-probability bins of the unit interval: the cluster k of K owns ``[k/K, (k+1)/K)``.

A distribution's quantile function maps bin k onto the k-th K-quantile range of that
distribution, so choosing each cluster equally often and drawing ``u`` uniformly inside the
cluster's bin reproduces the distribution exactly (the law of total probability over K
equal-mass pieces). Everything trainer-specific lives in the quantile function; these helpers only
handle the bins.
"""

from __future__ import annotations

import numbers

import torch

from ..errors import LoliConfigError
from ..options import check_clusters


def check_cluster_index(k, clusters) -> tuple[int, int]:
    """Validate ``(k, clusters)`` and return them as ints."""
    clusters = check_clusters(clusters)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise LoliConfigError(f"cluster index must be an integer in [0, {clusters}), got {k!r}")
    k = int(k)
    if not 0 <= k < clusters:
        raise LoliConfigError(f"cluster index {k} is outside [0, {clusters}) for clusters={clusters}")
    return k, clusters


def cluster_bounds(k: int, clusters: int) -> tuple[float, float]:
    """The probability range ``(k/K, (k+1)/K)`` of cluster ``k`` of ``clusters``."""
    k, clusters = check_cluster_index(k, clusters)
    return k / clusters, (k + 1) / clusters


def cluster_uniform(
    n: int,
    k: int,
    clusters: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """``n`` uniforms in ``[k/K, (k+1)/K)``, as ``dtype`` on ``device``.

    Drawn in float64 and clamped below the upper bound *after* the cast: ``(k + U)/K`` can round up
    to ``(k+1)/K`` in float32 (U is as large as 1 - 2**-24), which would put a draw in the next
    cluster and, for the last cluster, make ``u == 1`` reach the quantile function's infinite end.
    Draws use ``generator``'s device (the trainers keep CPU generators) and are then moved.
    """
    k, clusters = check_cluster_index(k, clusters)
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise LoliConfigError(f"number of draws must be a non-negative integer, got {n!r}")
    if not dtype.is_floating_point:
        raise LoliConfigError(f"cluster_uniform needs a floating dtype, got {dtype}")
    lo, hi = cluster_bounds(k, clusters)
    draw_device = generator.device if generator is not None else device
    u = torch.rand(int(n), generator=generator, device=draw_device, dtype=torch.float64)
    u = ((u + k) / clusters).to(device=device, dtype=dtype)
    lo_t = torch.tensor(lo, dtype=dtype)
    hi_t = torch.tensor(hi, dtype=dtype)
    # The largest value of dtype strictly below hi, and the smallest value of dtype not below lo.
    below_hi = torch.nextafter(hi_t, torch.tensor(-1.0, dtype=dtype))
    if lo_t < lo:
        lo_t = torch.nextafter(lo_t, torch.tensor(2.0, dtype=dtype))
    return u.clamp_(min=lo_t.item(), max=below_hi.item())
