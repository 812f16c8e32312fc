"""Instrumentors: small classes that patch a third-party trainer and can undo it.

Modelled on OpenTelemetry's Python instrumentors: each instrumentor names the library versions it
supports and the exact functions it wraps. Before anything is wrapped, every target is looked up
and its signature compared with the one the wrapper was written against; a mismatch raises
``LoliUnsupportedTrainerError`` listing every problem and the supported versions. The project's
worst bug would be a trainer that silently trains with its stock optimizer, loss or sampler while
the user believes the plugin is active, so there is no partial or best-effort mode.

Wrapping uses ``wrapt`` (proxies keep ``__name__``, ``__doc__``, ``inspect.signature`` and
``__wrapped__`` intact for code and tools that inspect the trainer's functions) and patches the
*module attribute*, so callers that look the function up through the module at call time (all of
the trainers' own call sites) see the wrapper.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass, field
from typing import Callable, Sequence

import wrapt

from ..errors import LoliError


def bind_arguments(wrapped, args, kwargs) -> dict:
    """The call's arguments by parameter name (``self`` included for methods), whichever mix of
    positional and keyword arguments the trainer used.

    Signatures are cached per plain function: wrapt hands methods over as bound methods, a new object
    per instance, and caching those would keep every instance alive."""
    func = getattr(wrapped, "__func__", wrapped)
    sig = _SIGNATURES.get(func)
    if sig is None:
        sig = _SIGNATURES[func] = inspect.signature(func)
    if func is not wrapped:  # a bound method: its instance is the first argument of the function
        args = (wrapped.__self__, *args)
    bound = sig.bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


_SIGNATURES: dict = {}


class LoliUnsupportedTrainerError(LoliError, RuntimeError):
    """The installed trainer does not have the functions, with the signatures, the plugin patches."""


@dataclass(frozen=True)
class PatchTarget:
    """One function to wrap: ``module.attr``, expected to take exactly ``params`` (names, in order)."""

    module: str
    attr: str  # a module attribute ("create_optimizer") or a class attribute ("ModelSetupNoiseMixin._get_timestep")
    params: Sequence[str]
    wrapper: Callable  # wrapt-style wrapper(wrapped, instance, args, kwargs)
    why: str = ""  # what the wrapper changes, for `loli-plugin doctor`

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    def owner(self, mod):
        """The object holding the attribute (the module, or a class inside it) and the attribute's name."""
        *path, leaf = self.attr.split(".")
        owner = mod
        for part in path:
            owner = getattr(owner, part, None)
            if owner is None:
                return None, leaf
        return owner, leaf

    def problem(self) -> str | None:
        """None if the target exists with the expected signature, else a one-line reason."""
        try:
            mod = importlib.import_module(self.module)
        except Exception as exc:  # ImportError, or the trainer's own import-time errors
            return f"{self.name}: module {self.module} cannot be imported ({type(exc).__name__}: {exc})"
        owner, leaf = self.owner(mod)
        fn = None if owner is None else owner.__dict__.get(leaf) if isinstance(owner, type) else getattr(owner, leaf, None)
        if fn is None:
            return f"{self.name}: not found"
        fn = getattr(fn, "__wrapped__", fn) if isinstance(fn, wrapt.ObjectProxy) else fn
        try:
            found = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError) as exc:
            return f"{self.name}: signature unreadable ({exc})"
        if found != list(self.params):
            return f"{self.name}: expected parameters ({', '.join(self.params)}), found ({', '.join(found)})"
        return None


@dataclass
class Instrumentor:
    """A named set of ``PatchTarget``s for one trainer, installed and removed together."""

    library: str
    supported: str  # human-readable versions, used in every error message
    targets: list[PatchTarget]
    _originals: dict = field(default_factory=dict, repr=False)

    @property
    def instrumented(self) -> bool:
        return bool(self._originals)

    def problems(self) -> list[str]:
        return [p for p in (t.problem() for t in self.targets) if p]

    def check(self) -> None:
        problems = self.problems()
        if problems:
            raise LoliUnsupportedTrainerError(
                f"loli-plugin cannot patch this {self.library}: "
                + "; ".join(problems)
                + f". Supported: {self.supported}. Update {self.library} (or loli-plugin), "
                "or remove the Loli options from your config to train without the plugin."
            )

    def instrument(self) -> None:
        """Check every target, then wrap them all (idempotent)."""
        if self.instrumented:
            return
        self.check()
        for t in self.targets:
            owner, leaf = t.owner(importlib.import_module(t.module))
            # a class's own __dict__ entry (not an inherited one), so uninstrument restores exactly it
            original = owner.__dict__[leaf] if isinstance(owner, type) else getattr(owner, leaf)
            self._originals[t.name] = (owner, leaf, original)
            setattr(owner, leaf, wrapt.FunctionWrapper(original, t.wrapper))

    def uninstrument(self) -> None:
        """Put the original functions back."""
        for owner, leaf, original in self._originals.values():
            setattr(owner, leaf, original)
        self._originals.clear()
