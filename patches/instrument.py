"""Instrumentors: small, checked, undoable patches of a third-party trainer.

Modelled on OpenTelemetry's Python instrumentors. An ``Instrumentor`` names the trainer versions it
supports and lists its ``Patch``es. Every patch can say whether it fits the installed trainer
(``problem()``), apply itself (``apply(context)``) and undo exactly what it did. Three kinds cover
every change the plugin makes to a trainer:

* ``FunctionPatch``: wraps a module function or a class attribute with a ``wrapt`` wrapper (proxies
  keep ``__name__``, ``__doc__``, ``inspect.signature`` and ``__wrapped__`` for code that inspects
  the trainer's functions). It patches the *attribute*, so callers that look the function up at call
  time (every trainer call site we patch) see the wrapper.
* ``EnumMemberPatch``: adds a member to a closed ``Enum`` (OneTrainer's optimizer list).
* ``MappingEntryPatch``: adds an entry to a module-level dict (OneTrainer's default parameters).

Failure policy (the host always starts): ``Instrumentor.instrument`` wraps the patches that fit and
only *reports* the ones that do not; it never raises for them. The trainer adapter records those
reports and raises ``LoliUnsupportedTrainerError`` when, and only when, a run asks for a Loli feature.

Compatibility rule of ``FunctionPatch`` (README, "Compatibility"): a target fits when every parameter
the wrapper reads (``reads``) still exists with the same name and, if it was positional, at the same
position (or as a keyword-only parameter when it was one). Added parameters with defaults, ``*args``/
``**kwargs`` and new keyword-only parameters are accepted; removed, renamed or reordered parameters the
wrapper reads are refused. Wrappers forward every argument they do not change (``call_replacing``).

Wrappers are plain functions ``wrapper(context, wrapped, instance, args, kwargs)``: the context is the
object the adapter hands over at instrument time (its run slot), so patch modules never import
their adapter.
"""

from __future__ import annotations

import enum
import functools
import inspect
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# both live in errors.py; imported here by name too, where adapters written for 0.1 found them
from ..errors import ENV_DISABLE, LoliUnsupportedTrainerError  # noqa: F401

# --------------------------------------------------------------------------- call helpers
_SIGNATURES: dict = {}


def _signature(func):
    sig = _SIGNATURES.get(func)
    if sig is None:
        sig = _SIGNATURES[func] = inspect.signature(func)
    return sig


def _bind(wrapped, args, kwargs):
    func = getattr(wrapped, "__func__", wrapped)
    if func is not wrapped:  # a bound method: its instance is the function's first argument
        args = (wrapped.__self__, *args)
    return func, _signature(func).bind(*args, **kwargs)


def bind_arguments(wrapped, args, kwargs) -> dict:
    """The call's arguments by parameter name (``self`` included for methods, defaults filled in),
    whichever mix of positional and keyword arguments the trainer used.

    Signatures are cached per plain function: wrapt hands methods over as bound methods, a new object
    per instance, and caching those would keep every instance alive."""
    _, bound = _bind(wrapped, args, kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def call_replacing(wrapped, call_args, call_kwargs, /, **replace):
    """Call ``wrapped`` with the trainer's own arguments, only the named ones replaced, keeping every
    other argument (including ones a newer trainer added) exactly as the caller passed it. (Positional-
    only, so trainer parameters named ``args`` or ``kwargs`` can be replaced.)"""
    func, bound = _bind(wrapped, call_args, call_kwargs)
    for name, value in replace.items():
        bound.arguments[name] = value
    if func is not wrapped:
        return func(*bound.args, **bound.kwargs)
    return wrapped(*bound.args, **bound.kwargs)


# --------------------------------------------------------------------------- lookup helpers
def _owner(module_name: str, attr: str):
    """(object holding the attribute, attribute name) for ``module.attr`` or ``module.Class.attr``; the
    owner is None when the module is not imported yet or a class on the path is missing."""
    module = sys.modules.get(module_name)
    *path, leaf = attr.split(".")
    owner = module
    for part in path:
        owner = getattr(owner, part, None) if owner is not None else None
    return owner, leaf


def _own_attribute(owner, leaf):
    """The attribute itself: a class's own ``__dict__`` entry (so undo restores exactly it, and a
    staticmethod stays a staticmethod), or a module's attribute."""
    if isinstance(owner, type):
        return owner.__dict__.get(leaf)
    return getattr(owner, leaf, None)


# --------------------------------------------------------------------------- patches
@dataclass
class Patch:
    """Base class: one change to a trainer, with its check and its undo."""

    module: str
    attr: str
    why: str = ""  # what the patch changes, shown by `loli-plugin doctor`
    #: the Loli feature(s) that need it (a run needing one of them is refused when the patch does not fit):
    #: options, activation, sampler, loss, logs, ui, ... (a str, or a tuple of them)
    feature: str | tuple = "options"
    optional: bool = False  # absent in some versions (e.g. a tracker class): absence is not a problem

    @property
    def name(self) -> str:
        return f"{self.module}.{self.attr}"

    @property
    def features(self) -> frozenset:
        return frozenset((self.feature,) if isinstance(self.feature, str) else self.feature)

    def problem(self) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, context) -> Callable[[], None]:  # pragma: no cover - abstract
        """Make the change; return the function that undoes exactly it."""
        raise NotImplementedError

    def _missing(self) -> str | None:
        if self.module not in sys.modules:
            return f"{self.name}: module {self.module} is not imported"
        owner, leaf = _owner(self.module, self.attr)
        if owner is None or _own_attribute(owner, leaf) is None:
            return f"{self.name}: not found"
        return None


@dataclass
class FunctionPatch(Patch):
    """Wrap ``module.attr`` (a function, or a method/staticmethod of a class in the module).

    ``params`` is the parameter list the wrapper was written against, in order; ``reads`` the ones it
    uses (default: all of them). ``wrapper(context, wrapped, instance, args, kwargs)``."""

    params: Sequence[str] = ()
    wrapper: Callable | None = None
    reads: Sequence[str] | None = None

    def problem(self) -> str | None:
        missing = self._missing()
        if missing:
            return missing
        owner, leaf = _owner(self.module, self.attr)
        fn = _own_attribute(owner, leaf)
        fn = getattr(fn, "__func__", fn)  # staticmethod / classmethod objects
        if not callable(fn):
            return f"{self.name}: is a {type(fn).__name__}, not a function"
        try:
            found = inspect.signature(fn).parameters
        except (TypeError, ValueError) as exc:
            return f"{self.name}: signature unreadable ({exc})"
        return signature_problem(self.name, list(self.params), self.reads, found)

    def apply(self, context) -> Callable[[], None]:
        import wrapt  # only once a trainer module is imported: never at interpreter start-up

        owner, leaf = _owner(self.module, self.attr)
        original = _own_attribute(owner, leaf)
        wrapper = functools.partial(self.wrapper, context)
        if isinstance(original, (staticmethod, classmethod)):
            patched = type(original)(wrapt.FunctionWrapper(original.__func__, wrapper))
        else:
            patched = wrapt.FunctionWrapper(original, wrapper)
        setattr(owner, leaf, patched)
        return lambda: setattr(owner, leaf, original)


def signature_problem(name: str, expected: list[str], reads, found) -> str | None:
    """The compatibility rule (module docstring): None when every parameter the wrapper reads is still
    there, by name, at its old position if it was positional."""
    reads = list(expected if reads is None else reads)
    kinds = inspect.Parameter
    positional = [n for n, p in found.items() if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)]
    problems = []
    for param in reads:
        where = expected.index(param) if param in expected else None
        p = found.get(param)
        if p is None:
            problems.append(f"no parameter {param!r}")
        elif (
            where is not None
            and p.kind != kinds.KEYWORD_ONLY
            and (param not in positional or positional.index(param) != where)
        ):
            problems.append(f"parameter {param!r} moved from position {where + 1}")
        elif p.kind == kinds.POSITIONAL_ONLY:
            problems.append(f"parameter {param!r} became positional-only")
    if not problems:
        return None
    return f"{name}: expected parameters ({', '.join(expected)}), found ({', '.join(found)}): {'; '.join(problems)}"


@dataclass
class EnumMemberPatch(Patch):
    """Add member ``member`` (name == value) to the closed Enum ``module.attr``; ``check(enum_cls)``
    returns a problem string when the enum is not the expected one."""

    member: str = ""
    check: Callable[[type], str | None] | None = None

    def problem(self) -> str | None:
        missing = self._missing()
        if missing:
            return missing
        cls = _own_attribute(*_owner(self.module, self.attr))
        if not (isinstance(cls, type) and issubclass(cls, enum.Enum)):
            return f"{self.name}: not an Enum"
        return self.check(cls) if self.check else None

    def apply(self, context) -> Callable[[], None]:
        cls = _own_attribute(*_owner(self.module, self.attr))
        if self.member in cls.__members__:
            return lambda: None  # already there (another registration): nothing of ours to undo
        member = object.__new__(cls)
        member._name_ = member._value_ = self.member
        member._sort_order_ = len(cls._member_names_)
        member.__objclass__ = cls
        type.__setattr__(cls, self.member, member)
        cls._member_names_.append(self.member)
        cls._member_map_[self.member] = member
        cls._value2member_map_[self.member] = member

        def undo():
            cls._member_names_.remove(self.member)
            del cls._member_map_[self.member]
            del cls._value2member_map_[self.member]
            type.__delattr__(cls, self.member)

        return undo


@dataclass
class MappingEntryPatch(Patch):
    """Add ``key(module) -> value(module)`` to the dict ``module.attr``, in place (code that imported
    the dict by name sees it)."""

    key: Callable[[Any], Any] | None = None
    value: Callable[[Any], Any] | None = None

    def problem(self) -> str | None:
        missing = self._missing()
        if missing:
            return missing
        table = _own_attribute(*_owner(self.module, self.attr))
        return None if isinstance(table, dict) else f"{self.name}: not a dict"

    def apply(self, context) -> Callable[[], None]:
        module = sys.modules[self.module]
        table = _own_attribute(*_owner(self.module, self.attr))
        key = self.key(module)
        if key in table:
            return lambda: None
        table[key] = self.value(module)
        return lambda: table.pop(key, None)


# --------------------------------------------------------------------------- instrumentor
@dataclass
class Instrumentor:
    """A named set of patches for one trainer, applied and undone together.

    ``instrument(context, module=None)`` applies every patch that fits (only those of ``module`` when
    given, e.g. from the post-import hook of that module) and returns ``{patch name: problem}`` for
    the ones that do not; patches whose module is not imported yet are left for a later call."""

    library: str
    supported: str  # human-readable versions, used in every error message
    patches: list[Patch]
    _undo: dict = field(default_factory=dict, repr=False)

    @property
    def instrumented(self) -> bool:
        return bool(self._undo)

    def is_applied(self, patch: Patch) -> bool:
        return patch.name in self._undo

    def modules(self) -> set[str]:
        return {p.module for p in self.patches}

    def problems(self, module: str | None = None) -> dict[str, str]:
        """Problems of the patches whose module is imported (or of ``module``'s patches)."""
        out = {}
        for p in self.patches:
            if (module is not None and p.module != module) or p.module not in sys.modules or p.name in self._undo:
                continue
            problem = p.problem()
            if problem and not (p.optional and problem.endswith(": not found")):
                out[p.name] = problem
        return out

    def instrument(self, context=None, module: str | None = None) -> dict[str, str]:
        """Apply the fitting patches (idempotent); return the problems of the others."""
        problems = {}
        for p in self.patches:
            if (module is not None and p.module != module) or p.module not in sys.modules or p.name in self._undo:
                continue
            problem = p.problem()
            if problem is None:
                self._undo[p.name] = p.apply(context)
            elif not (p.optional and problem.endswith(": not found")):
                problems[p.name] = problem
        return problems

    def uninstrument(self) -> None:
        """Undo every applied patch, last first."""
        for name in reversed(list(self._undo)):
            self._undo.pop(name)()


def unsupported_message(library: str, supported: str, problems: dict[str, str], asked: str) -> str:
    """The one message a refused Loli run gets: what it asked for, every patch that does not fit, the
    supported version and how to run without the plugin."""
    return (
        f"loli-plugin cannot run {asked} with this {library}: "
        + "; ".join(problems.values())
        + f". Supported: {supported}. Update {library} or loli-plugin, or train without the Loli options; "
        f"{ENV_DISABLE}=1 turns loli-plugin off entirely."
    )
