"""Which cluster each optimizer step belongs to.

The order is a pure function of ``(seed, step)``: every rank of a distributed run computes the same
cluster for the same step without communicating, and a resumed run continues the same sequence
from the saved step. ``ClusterSchedule`` only adds the position (the number of optimizer steps
taken) and its persistence; the orders themselves are in ``orders`` (and plugins').
"""

from __future__ import annotations

from .errors import LoliConfigError, LoliStateError
from .options import DEFAULT_CLUSTERS, check_clusters
from .plugins import schedules


class ClusterSchedule:
    """The cluster of every optimizer step, with ``peek`` for prefetching and a saveable position.

    ``current`` is the cluster of the NEXT optimizer step; it changes only in ``advance()``, which
    the optimizer calls at the end of ``step()``, so all micro-batches of a gradient-accumulation
    window see the same cluster.
    """

    def __init__(self, clusters: int = DEFAULT_CLUSTERS, strategy: str = "shuffle", seed: int = 0, step: int = 0):
        self.clusters = check_clusters(clusters)
        factories = schedules()
        if strategy not in factories:
            raise LoliConfigError(f"unknown schedule={strategy!r}; choose one of {', '.join(sorted(factories))}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise LoliConfigError(f"seed must be an integer, got {seed!r}")
        self.strategy, self.seed, self.step = strategy, seed, int(step)
        self._order = factories[strategy](self.clusters, seed)

    def cluster_at(self, step: int) -> int:
        k = int(self._order(step))
        if not 0 <= k < self.clusters:
            raise RuntimeError(f"schedule {self.strategy!r} returned cluster {k} outside [0, {self.clusters})")
        return k

    @property
    def current(self) -> int:
        return self.cluster_at(self.step)

    def peek(self, n: int = 1) -> list[int]:
        """The clusters of the next ``n`` optimizer steps, starting with ``current``."""
        return [self.cluster_at(self.step + i) for i in range(n)]

    def advance(self) -> None:
        self.step += 1

    def state_dict(self) -> dict:
        return {"strategy": self.strategy, "seed": self.seed, "step": self.step, "clusters": self.clusters}

    def load_state_dict(self, state: dict) -> None:
        for key in ("strategy", "seed", "clusters"):
            if state.get(key) != getattr(self, key):
                raise LoliStateError(
                    f"the saved cluster schedule has {key}={state.get(key)!r} "
                    f"but this run uses {key}={getattr(self, key)!r}; "
                    f"resume with the same {key} as the saved run, or start without resuming the optimizer state"
                )
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return (
            f"ClusterSchedule(clusters={self.clusters}, strategy={self.strategy!r}, seed={self.seed}, step={self.step})"
        )
