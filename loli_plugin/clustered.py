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
- A host may step the param groups one at a time: DeepSpeed ZeRO-1/2 (``DeepSpeedZeroOptimizer.
  _optimizer_step``) sets ``param_groups`` to a one-group list, calls ``step()``, and puts the full
  list back, once per group. Each such call steps only the groups it shows, all on the same bank; the
  optimizer step is complete, and the schedule advances, when every group has been stepped. DeepSpeed
  ZeRO-3 steps it once per parameter sub-group, which nothing in the calls tells apart from separate
  steps: ``one_step()`` makes every call inside it one optimizer step (``loli_plugin.deepspeed.bind``
  wraps ZeRO's step in it); unbound, ZeRO-3 is refused at its first call. A step the host skips
  (DeepSpeed's fp16 overflow) calls nothing and so advances nothing.

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

import contextlib
import copy
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch

from . import clustered_state
from .errors import LoliConfigError, LoliStateError
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
        self._stepped_groups: set[int] = set()  # groups stepped so far in an optimizer step taken group by group
        self._in_one_step = False  # inside one_step(): calls do not complete the step
        self._step_complete_hooks: OrderedDict[int, Callable] = OrderedDict()  # RemovableHandle needs a weakref
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

    # ------------------------------------------------------------------ param groups
    @property
    def param_groups(self) -> list[dict]:
        """The inner optimizer's own list of group dicts, or the part of it a host is stepping now."""
        return self.__dict__["_shown_groups"]

    @param_groups.setter
    def param_groups(self, groups: list[dict]) -> None:
        inner = self.__dict__.get("inner")
        if inner is None or groups is inner.param_groups:  # torch's __init__; a host putting the full list back
            self.__dict__["_shown_groups"] = groups
            return
        own = {id(g) for g in inner.param_groups}
        if groups and len(groups) < len(inner.param_groups) and all(id(g) in own for g in groups):
            self.__dict__["_shown_groups"] = groups  # a host stepping some groups (DeepSpeed ZeRO-1/2)
            return
        inner.param_groups = groups  # new groups: they are the inner's from now on
        self.__dict__["_shown_groups"] = groups

    @property
    def _groups(self) -> list[dict]:
        """All param groups, whatever part of them a host shows."""
        return self.inner.param_groups

    @property
    def mid_step(self) -> bool:
        """True between the calls of an optimizer step that a host takes group by group (DeepSpeed ZeRO-1/2):
        some groups are stepped, the schedule has not advanced yet."""
        return bool(self._stepped_groups)

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
        groups = self._groups
        shown = self.param_groups
        if shown is groups:
            stepping = list(range(len(groups)))
        else:  # a host stepping some groups: find them in the full list
            index = {id(g): i for i, g in enumerate(groups)}
            stepping = [index[id(g)] for g in shown]
        self._check_group_count()
        if not self._in_one_step:
            _refuse_unbound_zero3(shown)
        k = self.schedule.current
        if not self._stepped_groups:  # the first (or only) call of this optimizer step
            if self.warm_start and self._bank_steps[k] == 0 and self._last_stepped is not None:
                self._warm_start(k, self._last_stepped)
            self._position(k)
            if self._shared_keys:
                self._link_shared(self._banks[k])
        before = {i: self._group_values(groups[i]) for i in stepping}
        if shown is not groups:
            self.inner.param_groups = shown
        try:
            loss = self.inner.step() if closure is None else self.inner.step(closure)
        finally:
            self.inner.param_groups = groups
        if self._shared_keys:
            self._collect_shared(self._banks[k])
        self._record_group_values(k, before)
        self._stepped_groups.update(stepping)
        if not self._in_one_step and len(self._stepped_groups) == len(groups):
            self._finish_step()
        # else: the host steps the other groups (or sub-groups) next; the schedule waits for them
        return loss

    @contextlib.contextmanager
    def one_step(self):
        """Every ``step()`` call inside is part of ONE optimizer step: one bank, one schedule advance at the
        end (none if nothing stepped). For a host that steps the optimizer once per parameter sub-group:
        DeepSpeed ZeRO-3 (``loli_plugin.deepspeed.bind`` wraps its step in this)."""
        if self._in_one_step:  # nested: the outer window decides
            yield self
            return
        self._in_one_step = True
        try:
            yield self
        finally:
            self._in_one_step = False
        # not reached when the host's step raised: a step that did not finish is not counted
        if self._stepped_groups:
            self._finish_step()

    def register_step_complete_hook(self, hook: Callable) -> torch.utils.hooks.RemovableHandle:
        """``hook(optimizer)`` runs when an optimizer step is complete: at the end of ``step()``, or after
        the last call of a step a host takes group by group or inside ``one_step()``. (torch's step post-hooks
        run after every call.)"""
        handle = torch.utils.hooks.RemovableHandle(self._step_complete_hooks)
        self._step_complete_hooks[handle.id] = hook
        return handle

    def _finish_step(self) -> None:
        k = self.schedule.current
        self._stepped_groups.clear()
        self._bank_steps[k] += 1
        self._last_stepped = k
        self.schedule.advance()
        if self._offloader is not None and self.schedule.current != k:
            # write the finished bank back; the next bank's copies start now (in _position, without
            # waiting) and overlap the next forward/backward; the next step() waits for them
            self._offloader.park(k, self._banks[k])
        self._position(self.schedule.current, wait=False)
        for hook in list(self._step_complete_hooks.values()):
            hook(self)

    def _check_group_count(self) -> None:
        """A host may drop empty groups before the first step (DeepSpeed's engine does); later the banked
        group values would no longer line up with the groups."""
        n = len(self._groups)
        if n == len(self._initial):
            return
        if any(self._bank_steps) or self._stepped_groups:
            raise LoliStateError(
                f"the optimizer's param groups changed from {len(self._initial)} to {n} after it stepped; "
                "LoliClustered banks values per group, so groups can only be added with add_param_group"
            )
        self._initial = [{} for _ in range(n)]
        self._banked_keys = [set() for _ in range(n)]
        self._bank_values = [[{} for _ in range(n)] for _ in range(self.clusters)]

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

    def _record_group_values(self, k: int, before: dict[int, dict]) -> None:
        """After bank k stepped the groups in ``before`` (index -> their values before the step)."""
        groups = self._groups
        for i in before:
            group = groups[i]
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
        for i, group in enumerate(self._groups):
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


def _refuse_unbound_zero3(groups: list[dict]) -> None:
    """DeepSpeed ZeRO-3 steps the basic optimizer once per parameter sub-group, each time showing it only
    that sub-group's flat fp32 partition (which carries ZeRO-3's ``ds_id``); nothing in those calls says
    which one is the last. Without ``loli_plugin.deepspeed.bind(engine)`` each call would count as an
    optimizer step: refuse before anything is updated."""
    if any(hasattr(p, "ds_id") for g in groups for p in g["params"]):
        raise LoliConfigError(
            "LoliClustered is being stepped by DeepSpeed ZeRO-3 (zero_optimization.stage=3) without "
            "loli_plugin.deepspeed.bind(engine): ZeRO-3 steps it once per parameter sub-group, and the cluster "
            "schedule would advance on each. Call loli_plugin.deepspeed.bind(engine) right after "
            "deepspeed.initialize (the trainer integrations do it themselves), or use ZeRO stage 1 or 2"
        )


def _check_offload(offload) -> bool:
    if offload is None or offload is False:
        return False
    if str(offload).lower() != "cpu":
        raise LoliConfigError(
            f"offload={offload!r} is not supported; use offload='cpu' to park inactive banks in CPU memory, or None"
        )
    return True
