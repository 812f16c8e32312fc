"""The process-wide plugin manager: the built-ins plus every ``loli_plugin`` entry point (the
trainer adapters this package ships are registered that way too, so the core imports none of them),
the merged registries the core reads through it, and the one path by which events reach the
trainer adapters (their ``loli_optimizer_created`` is a hook implementation like any observer's)."""

from __future__ import annotations

import functools

import pluggy

from . import hookspecs


def build_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A new manager with the built-ins registered (and, by default, the installed entry points)."""
    from . import builtins

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(builtins, name="loli_plugin.builtins")
    pm.register(_AdapterEvents(pm), name="loli_plugin.adapter_events")
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


class _AdapterEvents:
    """Hands the hooks' events to the trainer adapters registered in ``pm``: an adapter is told by the
    same hook call as every observer, first (``tryfirst``), so that it starts its run, or refuses an
    optimizer its trainer cannot follow, before an observer sees the optimizer."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm

    @hookspecs.hookimpl(tryfirst=True)
    def loli_optimizer_created(self, optimizer):
        for adapter in trainer_adapters(self.pm):
            adapter.on_optimizer_created(optimizer)


@functools.cache
def get_plugin_manager() -> pluggy.PluginManager:
    """The manager every lookup goes through; built once per process, on first use."""
    return build_plugin_manager()


def merged(hook_results, what: str) -> dict:
    """Merge the dicts several plugins returned; later registrations (third parties) win.

    pluggy calls the most recently registered implementation first, so we iterate in reverse to
    let a third-party plugin override a built-in name on purpose.
    """
    out: dict = {}
    for result in reversed(hook_results):
        if result is None:
            continue
        if not isinstance(result, dict):
            raise TypeError(f"a loli_plugin hook for {what} returned {type(result).__name__}, expected a dict")
        out.update(result)
    return out


def trainer_adapters(pm: pluggy.PluginManager | None = None) -> list:
    """Every registered trainer adapter (``loli_trainer_adapters``; ``loli_plugin.adapter.TrainerAdapter``
    objects), each once, in the order the hook returns them."""
    found: list = []
    for result in (pm or get_plugin_manager()).hook.loli_trainer_adapters():
        for adapter in result or ():
            if adapter not in found:
                found.append(adapter)
    return found


def inner_specs() -> dict:
    """``{name: InnerSpec}`` of every named inner optimizer (``loli_inner_optimizers``)."""
    return merged(get_plugin_manager().hook.loli_inner_optimizers(), "loli_inner_optimizers")


def schedules() -> dict:
    """``{name: factory(clusters, seed)}`` of every cluster order (``loli_schedules``)."""
    return merged(get_plugin_manager().hook.loli_schedules(), "loli_schedules")


def loss_terms() -> dict:
    """``{name: term(pred, target, dim)}`` of every Loli-loss term (``loli_loss_terms``)."""
    return merged(get_plugin_manager().hook.loli_loss_terms(), "loli_loss_terms")
