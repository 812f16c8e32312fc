"""Which cluster each optimizer step belongs to.

The order is a pure function of ``(seed, step)``: every rank of a distributed run computes the same
cluster for the same step without communicating, and a resumed run continues the same sequence
from the saved step. ``ClusterSchedule`` only adds the position (the number of optimizer steps
taken) and its persistence.
"""

from __future__ import annotations

import random
from typing import Callable, Protocol

from .errors import LoliConfigError, LoliStateError
from .options import DEFAULT_CLUSTERS, check_clusters


class ClusterOrder(Protocol):
    def __call__(self, step: int) -> int: ...


def _rng(seed: int, *salt) -> random.Random:
    # Seeding Random with a str is stable across platforms and Python versions (hashed with SHA-512),
    # unlike hash() of a tuple, which is randomised per process for str members.
    return random.Random(":".join(str(s) for s in (seed, *salt)))


class ShuffleOrder:
    """A seeded permutation of the K clusters per cycle of K steps: each cluster once per cycle."""

    def __init__(self, clusters: int, seed: int):
        self.clusters, self.seed = clusters, seed
        self._cycle, self._perm = -1, []

    def __call__(self, step: int) -> int:
        cycle, pos = divmod(step, self.clusters)
        if cycle != self._cycle:
            perm = list(range(self.clusters))
            _rng(self.seed, "shuffle", cycle).shuffle(perm)
            self._cycle, self._perm = cycle, perm
        return self._perm[pos]


class RandomOrder:
    """Independent uniform choice per step (the reference implementation's behaviour)."""

    def __init__(self, clusters: int, seed: int):
        self.clusters, self.seed = clusters, seed

    def __call__(self, step: int) -> int:
        return _rng(self.seed, "random", step).randrange(self.clusters)


class RoundRobinOrder:
    """0, 1, ..., K-1, 0, 1, ...: the simplest order, handy for debugging and tests."""

    def __init__(self, clusters: int, seed: int):
        self.clusters = clusters

    def __call__(self, step: int) -> int:
        return step % self.clusters


BUILTIN_ORDERS: dict[str, Callable[[int, int], ClusterOrder]] = {
    "shuffle": ShuffleOrder,
    "random": RandomOrder,
    "round_robin": RoundRobinOrder,
}


def available_schedules() -> dict[str, Callable[[int, int], ClusterOrder]]:
    from .plugins import get_plugin_manager, merged

    return merged(get_plugin_manager().hook.loli_schedules(), "loli_schedules")


class ClusterSchedule:
    """The cluster of every optimizer step, with ``peek`` for prefetching and a saveable position.

    ``current`` is the cluster of the NEXT optimizer step; it changes only in ``advance()``, which
    the optimizer calls at the end of ``step()``, so all micro-batches of a gradient-accumulation
    window see the same cluster.
    """

    def __init__(self, clusters: int = DEFAULT_CLUSTERS, strategy: str = "shuffle", seed: int = 0, step: int = 0):
        self.clusters = check_clusters(clusters)
        factories = available_schedules()
        if strategy not in factories:
            raise LoliConfigError(
                f"unknown schedule={strategy!r}; choose one of {', '.join(sorted(factories))}"
            )
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
                    f"the saved cluster schedule has {key}={state.get(key)!r} but this run uses {key}={getattr(self, key)!r}; "
                    f"resume with the same {key} as the saved run, or start without resuming the optimizer state"
                )
        self.step = int(state["step"])

    def __repr__(self) -> str:
        return f"ClusterSchedule(clusters={self.clusters}, strategy={self.strategy!r}, seed={self.seed}, step={self.step})"
