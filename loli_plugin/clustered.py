"""LoliClustered: K optimizer states over one set of weights, one per timestep cluster.

Design (why it is exact and cheap):
- There is ONE inner optimizer. Its per-parameter ``state`` dict is swapped, by reference, among K
  banks before each step; nothing is copied. Stepping bank k is therefore literally the inner
  optimizer's own ``step()`` on the state it would have had if only cluster k's steps had existed.
- ``param_groups`` is the inner's own list, shared with this wrapper: LR schedulers, gradient
  clipping, accelerate, GradScaler and the trainers' LR logging read and write the dicts the inner
  optimizer uses.
- Some optimizers keep running values in the param group itself (Prodigy's ``d``, ``d_numerator``,
  ``k``; D-Adaptation's ``d``). Every group value that the inner's ``step()`` changes is banked
  per cluster too, so each cluster adapts on its own history. The host-owned ``lr`` and
  ``initial_lr`` are never banked: schedulers must keep control of them. An inner optimizer may name
  group values that are one quantity for all clusters (class attribute ``loli_shared_group_keys``,
  e.g. ProdigySharedD's ``d``): those are never banked either.
- Between steps the optimizer is *positioned* on ``current_cluster`` (the cluster of the next
  step): ``state`` and the banked group values are that cluster's.

- An inner optimizer may declare per-parameter state entries that are ONE quantity for all clusters
  (class attribute ``loli_shared_state``, e.g. AdamWClusteredSecondMoment's shared first moment).
  Those tensors exist once per parameter and every bank refers to the same object; only the other
  entries are banked, parked by ``offload`` and saved per cluster. The inner must update shared
  entries in place and create missing entries one by one (a cluster's first step finds the shared
  ones already there).

The saved form (all K banks in one state_dict with torch's layout, its checks, the all-or-nothing
load) is ``clustered_state``; this class hands its ``state_dict``/``load_state_dict`` to it.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from . import clustered_state
from .errors import LoliConfigError
from .inner import find_refusal, resolve_inner
from .options import DEFAULT_CLUSTERS, check_clusters
from .plugins import get_plugin_manager, inner_specs
from .schedule import ClusterSchedule

if TYPE_CHECKING:
    from .offload import BankOffloader

# Group keys the host owns. An LR scheduler writes them between steps; banking them would undo it.
HOST_OWNED_KEYS = frozenset({"params", "lr", "initial_lr", "name", "names"})


def _snap(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, (list, dict, set)):
        return copy.deepcopy(value)
    return value


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and a.shape == b.shape
            and bool(torch.equal(a, b))
        )
    try:
        return bool(a == b)
    except Exception:  # objects whose == is not a bool (arrays): identity was the only safe answer
        return False


class LoliClustered(torch.optim.Optimizer):
    """Wrap an inner optimizer and keep one state per timestep cluster.

    Args:
        params: parameters or param groups, as for any torch optimizer.
        inner: optimizer name (``"AdamW"``, ``"AdamW8bit"``, ``"Lion"``, ``"Prodigy"``, ``"CAME"``, ...,
            resolved through the ``loli_inner_optimizers`` hook), a dotted path, a class or a callable
            ``f(params, **kwargs) -> Optimizer``.
        clusters: number of timestep clusters K (one optimizer state each).
        schedule: order of clusters over steps: ``"shuffle"`` (default), ``"random"``, ``"round_robin"``
            or a name a plugin registers.
        seed: seed of the schedule; every rank must use the same one.
        **inner_kwargs: passed to the inner optimizer (``lr``, ``weight_decay``, ``betas``, ...).
    """

    def __init__(
        self,
        params: Iterable,
        inner: Any = "AdamW",
        clusters: int = DEFAULT_CLUSTERS,
        schedule: str = "shuffle",
        seed: int = 0,
        offload: str | None = None,
        warm_start: bool = False,
        beta_horizon: bool = False,
        **inner_kwargs: Any,
    ):
        clusters = check_clusters(clusters)
        offload = _check_offload(offload)
        name, factory, implied = resolve_inner(inner, inner_specs())
        optimizer = factory(params, **{**implied, **inner_kwargs})
        self._setup(optimizer, name, clusters, schedule, seed, offload, warm_start, beta_horizon)

    @classmethod
    def wrap(
        cls,
        optimizer: torch.optim.Optimizer,
        clusters: int = DEFAULT_CLUSTERS,
        schedule: str = "shuffle",
        seed: int = 0,
        name: str | None = None,
        offload: str | None = None,
        warm_start: bool = False,
        beta_horizon: bool = False,
    ) -> LoliClustered:
        """Bank an optimizer a host already built (OneTrainer builds its inner optimizers itself)."""
        clusters = check_clusters(clusters)
        offload = _check_offload(offload)
        name = name or type(optimizer).__name__
        reason = find_refusal(type(optimizer))
        if reason:
            raise LoliConfigError(f"inner={name!r} cannot be used inside LoliClustered: {reason}")
        if any(len(s) for s in optimizer.state.values()):
            raise LoliConfigError(
                "LoliClustered.wrap() needs a freshly built optimizer; this one already has state. "
                "Wrap it before the first step or before loading a checkpoint into it"
            )
        self = cls.__new__(cls)
        self._setup(optimizer, name, clusters, schedule, seed, offload, warm_start, beta_horizon)
        return self

    def _setup(
        self,
        optimizer: torch.optim.Optimizer,
        name: str,
        clusters: int,
        schedule: str,
        seed: int,
        offload: bool = False,
        warm_start: bool = False,
        beta_horizon: bool = False,
    ) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise LoliConfigError(
                f"inner={name!r} built a {type(optimizer).__name__}, not a torch.optim.Optimizer; "
                "LoliClustered can only bank torch optimizers"
            )
        self.schedule = ClusterSchedule(clusters, schedule, seed)
        self.inner_name = name
        self._ready = False
        # torch.optim.Optimizer.__init__ installs the step hooks and validates the groups; the dicts it
        # receives are the inner's own, and the list is replaced by the inner's list right after.
        super().__init__(optimizer.param_groups, optimizer.defaults)
        self.inner = optimizer
        self.param_groups = optimizer.param_groups
        self._banks: list[defaultdict] = [defaultdict(dict) for _ in range(clusters)]
        self._banks[self.schedule.current] = optimizer.state
        self._bank_steps = [0] * clusters
        n_groups = len(self.param_groups)
        # per group: value of each banked key before its first change (absent: the inner adds it lazily)
        self._initial: list[dict] = [{} for _ in range(n_groups)]
        self._banked_keys: list[set] = [set() for _ in range(n_groups)]
        self._bank_values: list[list[dict]] = [[{} for _ in range(n_groups)] for _ in range(clusters)]
        self._shared_keys = frozenset(getattr(optimizer, "loli_shared_state", ()))
        self._unbanked_group_keys = HOST_OWNED_KEYS | frozenset(getattr(optimizer, "loli_shared_group_keys", ()))
        self._shared: dict[torch.Tensor, dict[str, torch.Tensor]] = {}  # param -> its shared entries
        self._offloader = self._new_offloader() if offload else None
        self.warm_start = bool(warm_start)
        self.beta_horizon = bool(beta_horizon)
        self._last_stepped: int | None = None
        if self.beta_horizon:
            self._rescale_betas(self.param_groups)
        self._ready = True
        self._position(self.schedule.current)
        # One announcement: trainer adapters attach first (a trainer's stock route to a dotted optimizer class
        # has no other entry point for them), then observers (hookspecs.loli_optimizer_created).
        get_plugin_manager().hook.loli_optimizer_created(optimizer=self)

    # ------------------------------------------------------------------ public properties
    @property
    def clusters(self) -> int:
        return self.schedule.clusters

    @property
    def current_cluster(self) -> int:
        """The cluster of the NEXT optimizer step; constant across a gradient-accumulation window."""
        return self.schedule.current

    def peek(self, n: int = 1) -> list[int]:
        return self.schedule.peek(n)

    @property
    def bank_steps(self) -> list[int]:
        """How many optimizer steps each cluster's state has taken."""
        return list(self._bank_steps)

    def bank(self, k: int) -> defaultdict:
        """The per-parameter state of cluster ``k`` (the inner optimizer's own layout)."""
        return self._banks[k]

    # ------------------------------------------------------------------ stepping
    def step(self, closure: Callable | None = None):
        k = self.schedule.current
        if self.warm_start and self._bank_steps[k] == 0 and self._last_stepped is not None:
            self._warm_start(k, self._last_stepped)
        self._position(k)
        if self._shared_keys:
            self._link_shared(self._banks[k])
        before = [self._group_values(g) for g in self.param_groups]
        loss = self.inner.step() if closure is None else self.inner.step(closure)
        if self._shared_keys:
            self._collect_shared(self._banks[k])
        self._record_group_values(k, before)
        self._bank_steps[k] += 1
        self._last_stepped = k
        self.schedule.advance()
        if self._offloader is not None and self.schedule.current != k:
            # write the finished bank back; the next bank's copies start now (in _position, without
            # waiting) and overlap the next forward/backward; the next step() waits for them
            self._offloader.park(k, self._banks[k])
        self._position(self.schedule.current, wait=False)
        return loss

    def _warm_start(self, k: int, source: int) -> None:
        """Start bank k from a copy of the bank stepped last (its moments, step counts and group values),
        instead of from zero, so a cluster's first updates are not bias-corrected from scratch."""
        if self._offloader is not None:
            self._offloader.fetch(source, self._banks[source], wait=True)
            self._offloader.fetch(k, self._banks[k], wait=True)
        bank = self._banks[k]
        for param, state in self._banks[source].items():
            bank[param] = {
                key: v.clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
                for key, v in state.items()
                if key not in self._shared_keys
            }  # shared: linked, never copied
        self._bank_values[k] = copy.deepcopy(self._bank_values[source])

    def _link_shared(self, bank) -> None:
        """Point the bank's shared entries at each parameter's one shared tensor (a bank that was never
        stepped, or was just loaded, has none yet)."""
        for param, shared in self._shared.items():
            bank[param].update(shared)

    def _collect_shared(self, bank) -> None:
        """Adopt the shared entries the inner created on a parameter's first step."""
        if len(bank) > len(self._shared):
            for param, state in bank.items():
                if param not in self._shared:
                    self._shared[param] = {key: v for key, v in state.items() if key in self._shared_keys}

    def _new_offloader(self) -> BankOffloader:
        from .offload import BankOffloader

        return BankOffloader(self.clusters, "cpu", keep=self._shared_keys)

    def _rescale_betas(self, groups: list[dict]) -> None:
        """``beta_horizon=True``: each bank steps about once every K global steps, which stretches an
        exponential average's horizon of 1/(1-beta) of its own steps to K/(1-beta) global steps. Rescale
        so the horizon in global steps matches the inner optimizer's: beta' = 1 - K (1 - beta), floored
        at 0. Betas of averages the inner shares across clusters (``loli_shared_betas``) step every
        global step and keep their value."""
        shared = set(getattr(self.inner, "loli_shared_betas", ()))
        for group in groups:
            betas = group.get("betas")
            if isinstance(betas, (tuple, list)):
                group["betas"] = tuple(
                    float(b) if i in shared else max(0.0, 1.0 - self.clusters * (1.0 - float(b)))
                    for i, b in enumerate(betas)
                )

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        if not getattr(self, "_ready", False):  # called by torch.optim.Optimizer.__init__ in _setup
            return super().add_param_group(param_group)
        self.inner.add_param_group(param_group)
        self.param_groups = self.inner.param_groups
        if self.beta_horizon:
            self._rescale_betas(self.param_groups[-1:])
        self._initial.append({})
        self._banked_keys.append(set())
        for values in self._bank_values:
            values.append({})

    def _group_values(self, group: dict) -> dict:
        return {key: _snap(v) for key, v in group.items() if key not in HOST_OWNED_KEYS}

    def _record_group_values(self, k: int, before: list[dict]) -> None:
        for i, group in enumerate(self.param_groups):
            keys = self._banked_keys[i]
            for key, value in group.items():
                if (
                    key not in self._unbanked_group_keys
                    and key not in keys
                    and not _same(before[i].get(key, _MISSING), value)
                ):
                    keys.add(key)
                    # Its first change is now, so every bank stepped so far saw the value from before this step.
                    if key in before[i]:
                        self._initial[i][key] = before[i][key]
            self._bank_values[k][i] = {key: _snap(group[key]) for key in keys if key in group}

    def _position(self, k: int, wait: bool = True) -> None:
        """Make cluster k's state and banked group values the inner optimizer's. With offload, ``wait=False``
        only starts bringing the bank home (the prefetch at the end of a step)."""
        if self._offloader is not None:
            self._offloader.fetch(k, self._banks[k], wait=wait)
        self.inner.state = self._banks[k]
        self.state = self._banks[k]
        for i, group in enumerate(self.param_groups):
            values, initial = self._bank_values[k][i], self._initial[i]
            for key in self._banked_keys[i]:
                if key in values:
                    group[key] = _snap(values[key])
                elif key in initial:
                    group[key] = _snap(initial[key])
                else:  # a value the inner creates on its first step: let it create it for this cluster too
                    group.pop(key, None)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict:
        """All K banks in one state_dict with torch's layout (``clustered_state``), through torch's hooks."""
        for hook in self._optimizer_state_dict_pre_hooks.values():
            hook(self)
        state_dict = clustered_state.save(self)
        for hook in self._optimizer_state_dict_post_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        return state_dict

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state saved by ``state_dict`` (``clustered_state.load``: checked first, all or nothing)."""
        state_dict = state_dict.copy()  # shallow, like torch: pre-hooks may replace entries
        for hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = hook(self, state_dict)
            if result is not None:
                state_dict = result
        clustered_state.load(self, state_dict)
        for hook in self._optimizer_load_state_dict_post_hooks.values():
            hook(self)

    def __repr__(self) -> str:
        return (
            f"LoliClustered(inner={self.inner_name}, clusters={self.clusters}, schedule={self.schedule.strategy!r}, "
            f"seed={self.schedule.seed}, step={self.schedule.step})\n{self.inner!r}"
        )


_MISSING = object()


def _check_offload(offload) -> bool:
    if offload is None or offload is False:
        return False
    if str(offload).lower() != "cpu":
        raise LoliConfigError(
            f"offload={offload!r} is not supported; use offload='cpu' to park inactive banks in CPU memory, or None"
        )
    return True
