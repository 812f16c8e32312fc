"""The saved form of a ``LoliClustered``: how its K banks go into one state_dict, the checks a saved
state must pass before anything is loaded, and the load that leaves the optimizer untouched when it fails.

The state_dict keeps torch's layout (``state`` keyed by parameter index, ``param_groups``) so hosts that
move state to a device (accelerate) or re-map parameter indices (OneTrainer) keep working:

* ``state[index]`` is ``{cluster: inner_state}`` (format 1), plus ``"shared": {key: tensor}`` for the
  entries the inner optimizer shares across clusters (``loli_shared_state``; format 2, saved once);
* each param group carries ``loli_banked`` (``{cluster: {key: value}}``, the group values the inner's
  ``step()`` changes, e.g. Prodigy's ``d``) and ``loli_initial`` (their values before any step);
* ``loli`` holds the format, K, the inner optimizer's name and class, the schedule and each bank's steps.

It is made of tensors and plain containers only, so ``torch.load(weights_only=True)`` reads it. The
inner optimizer's own ``state_dict``/``load_state_dict`` do the per-bank work, so its casts and its
quantized state (bitsandbytes) are handled as it handles them. Every function takes the ``LoliClustered``
(``opt``) whose banks it writes or reads; the class calls them, this module imports nothing of it.
"""

from __future__ import annotations

from .errors import LoliError, LoliStateError

FORMAT_BANKS = 1  # state[index] = {cluster: inner_state}
FORMAT_SHARED = 2  # the same, plus state[index]["shared"] = {key: tensor} for the inner's shared entries
META_KEY = "loli"
SHARED_KEY = "shared"  # in a saved parameter entry: the inner's loli_shared_state entries, saved once
BANKED_KEY = "loli_banked"  # in a saved param group: {cluster: {key: value}}
INITIAL_KEY = "loli_initial"  # in a saved param group: {key: value before any step}

# What a saved state that does not fit raises inside torch's (or the inner's) load_state_dict. Anything
# else (out of memory, I/O, KeyboardInterrupt) is not a mismatch and must reach the user unchanged.
MISMATCH_ERRORS = (ValueError, KeyError, IndexError, TypeError, AttributeError)


def save(opt) -> dict:
    """The state_dict of ``opt`` (without torch's state_dict hooks, which ``LoliClustered.state_dict`` runs)."""
    if opt._offloader is not None:
        opt._offloader.synchronize()
    active = opt.inner.state
    packed: dict[int, dict[int, dict]] = {}
    groups = None
    try:
        for k, bank in enumerate(opt._banks):
            opt.inner.state = bank
            sd = opt.inner.state_dict()
            for idx, st in sd["state"].items():
                entry = packed.setdefault(idx, {})
                own = {key: v for key, v in st.items() if key not in opt._shared_keys}
                if len(own) < len(st):  # every bank refers to the same shared tensors: save them once
                    entry.setdefault(SHARED_KEY, {key: v for key, v in st.items() if key in opt._shared_keys})
                if own:
                    entry[k] = own
            groups = groups if groups is not None else sd["param_groups"]
    finally:
        opt.inner.state = active
    for i, group in enumerate(groups):
        keys = sorted(opt._banked_keys[i])
        group[BANKED_KEY] = {
            k: {key: opt._bank_values[k][i][key] for key in keys if key in opt._bank_values[k][i]}
            for k in range(opt.clusters)
            if opt._bank_values[k][i]
        }
        group[INITIAL_KEY] = {key: opt._initial[i][key] for key in keys if key in opt._initial[i]}
    return {
        "state": packed,
        "param_groups": groups,
        META_KEY: {
            "format": FORMAT_SHARED if opt._shared_keys else FORMAT_BANKS,
            "clusters": opt.clusters,
            "inner": opt.inner_name,
            "inner_class": f"{type(opt.inner).__module__}.{type(opt.inner).__qualname__}",
            "schedule": opt.schedule.state_dict(),
            "bank_steps": list(opt._bank_steps),
        },
    }


def load(opt, state_dict: dict) -> None:
    """Load a saved state into ``opt``, all of it or nothing: a state saved with another K, inner
    optimizer or format is refused before anything changes, and a load that fails half-way puts the
    optimizer back as it was (a failed resume must not leave half-loaded banks)."""
    meta = check(state_dict, opt.clusters, opt.inner_name)
    if opt._offloader is not None:
        # the banks kept for a failed load wait in CPU memory, so they add nothing on the device
        opt._offloader.synchronize()
        for k in sorted(opt._offloader.resident):
            opt._offloader.park(k, opt._banks[k])
    saved = _snapshot(opt)
    try:
        _load_banks(opt, state_dict, meta)
    except BaseException as exc:
        _restore(opt, saved)
        if isinstance(exc, LoliError) or not isinstance(exc, MISMATCH_ERRORS):
            raise
        raise LoliStateError(
            f"the saved LoliClustered state does not fit this optimizer ({type(exc).__name__}: {exc}); "
            "the network's parameters (modules, rank, train_* switches) must be the same as when it was saved, "
            "and the file must be complete; otherwise start without resuming the optimizer state"
        ) from exc


def check(state_dict: dict, clusters: int, inner_name: str) -> dict:
    """The saved ``loli`` entry, once the state is known to be one this optimizer can load."""
    meta = state_dict.get(META_KEY) if isinstance(state_dict, dict) else None
    if not isinstance(meta, dict):
        raise LoliStateError(
            "this optimizer state was not saved by LoliClustered (it has no 'loli' entry), so it holds no "
            "cluster states; resume it with the optimizer that saved it, or start without resuming the "
            "optimizer state"
        )
    if meta.get("format") not in (FORMAT_BANKS, FORMAT_SHARED):
        raise LoliStateError(
            f"optimizer state format {meta.get('format')!r} is not supported by this loli-plugin "
            f"(formats {FORMAT_BANKS} and {FORMAT_SHARED}); use the loli-plugin version that saved it"
        )
    if meta.get("clusters") != clusters:
        raise LoliStateError(
            f"the saved optimizer state has clusters={meta.get('clusters')} "
            f"but this run uses clusters={clusters}; "
            f"set clusters={meta.get('clusters')} to resume it, or start without resuming the optimizer state"
        )
    saved_inner = str(meta.get("inner", ""))
    if saved_inner.lower() != inner_name.lower():
        raise LoliStateError(
            f"the saved optimizer state was made with inner={saved_inner!r} "
            f"but this run uses inner={inner_name!r}; "
            f"set inner={saved_inner!r} to resume it, or start without resuming the optimizer state"
        )
    if not isinstance(state_dict.get("state"), dict) or not isinstance(state_dict.get("param_groups"), list):
        raise LoliStateError(
            "the saved optimizer state is incomplete (no 'state' or 'param_groups'); the file may be truncated"
        )
    return meta


#: what a load replaces, kept to put back when it fails
_LOADED = ("_banks", "_bank_values", "_banked_keys", "_initial", "_shared", "_offloader", "_bank_steps")


def _snapshot(opt) -> tuple:
    return (opt.inner.state, opt.inner.param_groups, opt.schedule.step, *(getattr(opt, a) for a in _LOADED))


def _restore(opt, saved: tuple) -> None:
    opt.inner.state, opt.inner.param_groups, opt.schedule.step = saved[:3]
    for attribute, value in zip(_LOADED, saved[3:]):
        setattr(opt, attribute, value)
    opt.param_groups = opt.inner.param_groups
    opt._position(opt.schedule.current)


def _load_banks(opt, state_dict: dict, meta: dict) -> None:
    saved_groups = state_dict["param_groups"]
    plain_groups = [{key: v for key, v in g.items() if key not in (BANKED_KEY, INITIAL_KEY)} for g in saved_groups]
    banked = [g.get(BANKED_KEY, {}) for g in saved_groups]
    initial = [dict(g.get(INITIAL_KEY, {})) for g in saved_groups]
    opt.schedule.load_state_dict(meta["schedule"])
    current = opt.schedule.current
    saved_state = state_dict["state"]
    # The inner's own load_state_dict casts and places every tensor the way it expects
    # (torch casts to the parameter's dtype/device; bitsandbytes handles its quantized state).
    # Banked group values need no care here: _position() sets them before every step.
    shared_saved = {idx: entry[SHARED_KEY] for idx, entry in saved_state.items() if SHARED_KEY in entry}
    if shared_saved and not opt._shared_keys:
        raise LoliStateError(
            f"the saved optimizer state has state shared across clusters, which inner={opt.inner_name!r} "
            "does not keep; resume with the inner optimizer that saved it"
        )
    if opt._shared_keys:
        opt.inner.load_state_dict({"state": shared_saved, "param_groups": plain_groups})
        opt._shared = {param: dict(entries) for param, entries in opt.inner.state.items()}
    # Bank by bank, each parked before the next is loaded: with offload, at most the active bank and
    # the one being loaded are on the device at any time.
    offloader = opt._new_offloader() if opt._offloader is not None else None
    banks = []
    for k in range(opt.clusters):
        state_k = {idx: entry[k] for idx, entry in saved_state.items() if k in entry}
        opt.inner.load_state_dict({"state": state_k, "param_groups": plain_groups})
        banks.append(opt.inner.state)
        if offloader is not None and k != current:
            offloader.park(k, opt.inner.state)
            offloader.synchronize()  # its device copy is freed before the next bank allocates
    opt.inner.load_state_dict({"state": {}, "param_groups": plain_groups})
    opt.param_groups = opt.inner.param_groups  # torch's load_state_dict builds new group dicts
    opt._banks = banks
    opt._offloader = offloader
    opt._bank_values = [[dict(b.get(k, {})) for b in banked] for k in range(opt.clusters)]
    opt._banked_keys = [set(init) | {key for b in bg.values() for key in b} for init, bg in zip(initial, banked)]
    opt._initial = initial
    opt._bank_steps = [int(n) for n in meta.get("bank_steps", [0] * opt.clusters)]
    opt._position(current)
