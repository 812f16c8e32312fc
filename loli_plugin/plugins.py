"""The process-wide plugin manager: built-ins plus every ``loli_plugin`` entry point."""

from __future__ import annotations

import functools

import pluggy

from . import hookspecs


def build_plugin_manager(load_entrypoints: bool = True) -> pluggy.PluginManager:
    """A new manager with the built-ins registered (and, by default, the installed entry points)."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    from . import builtins

    pm.register(builtins, name="loli_plugin.builtins")
    from .adapters import kohya as kohya_adapter  # light: imports nothing of sd-scripts

    pm.register(kohya_adapter, name="loli_plugin.adapters.kohya")
    if load_entrypoints:
        pm.load_setuptools_entrypoints(hookspecs.PROJECT)
    return pm


@functools.lru_cache(maxsize=None)
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
