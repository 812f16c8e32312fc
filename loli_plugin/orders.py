"""The built-in cluster orders: which cluster optimizer step ``n`` belongs to, as a pure function of
``(seed, n)``, so every rank of a distributed run computes the same cluster without communicating.
Plugins add orders through the ``loli_schedules`` hook."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Protocol


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
