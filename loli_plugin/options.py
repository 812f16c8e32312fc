"""Validation of the user-facing options shared by the optimizer, the sampler and the adapters.

Each check raises ``LoliConfigError`` naming the option and the fix, so a bad value stops the run
before the first training step instead of surfacing as a shape error deep inside a trainer.
"""

from __future__ import annotations

import numbers

from .errors import LoliConfigError

DEFAULT_CLUSTERS = 10


def check_clusters(clusters, admissible: int | None = None, option: str = "clusters") -> int:
    """Return ``clusters`` as an int, or raise if it is not a usable cluster count.

    ``admissible`` is the number of distinct discrete timesteps the trainer can draw; every
    cluster must own at least one of them, so K may not exceed it.
    """
    if isinstance(clusters, bool) or not isinstance(clusters, numbers.Integral):
        if isinstance(clusters, float) and clusters.is_integer():
            clusters = int(clusters)
        elif isinstance(clusters, str) and clusters.strip().lstrip("+").isdigit():
            clusters = int(clusters)
        else:
            raise LoliConfigError(
                f"{option} must be a positive integer, got {clusters!r}; "
                f"set {option}={DEFAULT_CLUSTERS} (the default) or another whole number >= 1"
            )
    clusters = int(clusters)
    if clusters < 1:
        raise LoliConfigError(
            f"{option} must be >= 1, got {clusters}; set {option}={DEFAULT_CLUSTERS} (the default), "
            f"or {option}=1 to train with a single optimizer state"
        )
    if admissible is not None and clusters > admissible:
        raise LoliConfigError(
            f"{option}={clusters} is larger than the {admissible} distinct timesteps the trainer can draw "
            f"with its current settings, so some clusters would be empty; set {option} <= {admissible} "
            f"or widen the timestep range"
        )
    return clusters
