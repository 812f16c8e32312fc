"""Run at interpreter start by ``loli_plugin.pth`` (site-packages): it must cost nothing and break nothing.

It imports no module that is not already loaded at start-up (only ``sys`` and ``os``) and installs a
tiny ``sys.meta_path`` finder that answers ``None`` for every import except the trainer modules the
installed adapters watch. Those names come from the manifests ``loli_plugin/adapters/*.watch`` (one
module name a line), read with one directory listing. When a watched module has been executed, the
finder hands it to ``loli_plugin.adapter.on_watched_import``, which lets the adapter check and patch it.
Nothing else happens: torch, loli_plugin and wrapt are imported only then, and a missing dependency
is reported then, once, never at interpreter start. ``LOLI_PLUGIN_DISABLE=1`` turns it off.

A third-party trainer adapter shipped in another distribution adds its watched names from its own
``.pth`` line: ``import _loli_plugin_autoload as a; a.watch("mytrainer.core")``.
"""

import os
import sys

#: module names whose import is handed to loli_plugin.adapter
WATCHED = set()
#: how the hook was installed: "pth" (site-packages), "launcher" (python -m loli_plugin.launch) or None
INSTALLED_BY = None
INSTALLED = False
_REPORTED = set()


def disabled():
    return os.environ.get("LOLI_PLUGIN_DISABLE", "").strip().lower() in ("1", "true", "yes", "on")


def _adapter_folders():
    here = os.path.dirname(os.path.abspath(__file__))
    # installed: site-packages/loli_plugin/adapters; a source checkout maps loli_plugin.adapters to adapters/
    return (os.path.join(here, "loli_plugin", "adapters"), os.path.join(here, "adapters"))


def read_manifests():
    """Every module name listed in the adapters' ``*.watch`` manifests."""
    names = set()
    for folder in _adapter_folders():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if entry.endswith(".watch"):
                try:
                    with open(os.path.join(folder, entry), encoding="utf-8") as f:
                        names.update(line.strip() for line in f if line.strip() and not line.startswith("#"))
                except OSError:
                    pass
        break  # the first folder that exists is this installation's
    return names


def watch(*names):
    """Hand the import of these modules to loli_plugin (for adapters outside this distribution)."""
    WATCHED.update(names)


def _report(key, message):
    if key not in _REPORTED:
        _REPORTED.add(key)
        sys.stderr.write("loli-plugin: " + message + "\n")


def _fire(module):
    try:
        from loli_plugin.adapter import on_watched_import
    except Exception as exc:  # a broken or partial install must never stop the trainer
        _report(
            "import",
            f"cannot load its trainer integration ({type(exc).__name__}: {exc}); {module.__name__} runs without "
            "loli-plugin. Reinstall loli-plugin with its dependencies, or set LOLI_PLUGIN_DISABLE=1.",
        )
        return
    on_watched_import(module)


class _Loader:
    """Wraps the real loader of a watched module: runs it, then hands the module over."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        # the module keeps its real loader (inspect.getsource, importlib.reload, resources use it)
        module.__loader__ = self._loader
        if getattr(module, "__spec__", None) is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _fire(module)


class _Finder:
    """First on sys.meta_path; declines every name it does not watch with one set lookup."""

    _busy = set()

    def find_spec(self, name, path=None, target=None):
        if name not in WATCHED or name in self._busy:
            return None
        self._busy.add(name)
        try:
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is self or find is None:
                    continue
                spec = find(name, path, target)
                if spec is not None:
                    break
            else:
                return None
        finally:
            self._busy.discard(name)
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def install(by="pth"):
    """Install the finder (idempotent); False when LOLI_PLUGIN_DISABLE is set."""
    global INSTALLED_BY, INSTALLED
    if disabled():
        return False
    if INSTALLED_BY is None:
        WATCHED.update(read_manifests())
        sys.meta_path.insert(0, _Finder())
        INSTALLED_BY, INSTALLED = by, True
        # a watched module imported before the hook (only possible through the launcher)
        for name in sorted(WATCHED & set(sys.modules)):
            _fire(sys.modules[name])
    return True


INSTALLED = install()
