"""Resolving the ``inner=`` option of LoliClustered to an optimizer class.

A name goes through the ``loli_inner_optimizers`` hook (built-ins plus entry-point plugins), a
dotted path is imported, and a class or callable is used as given. Whatever the route, inner
optimizers that cannot be banked (schedule-free ones) are refused here, before any state exists.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from .errors import LoliConfigError, LoliDependencyError


@dataclasses.dataclass(frozen=True)
class InnerSpec:
    """How to build one named inner optimizer.

    ``target`` is ``"module:attr"`` (imported lazily) or an object. ``defaults`` are keyword
    arguments the name implies (kohya's ``SGDNesterov`` is SGD with nesterov=True, momentum=0.9);
    the user's own arguments override them. ``pip`` names the distribution to install when the
    module is missing. ``refuse`` holds the reason when the optimizer must not be wrapped.
    ``check(kwargs)`` returns why a combination of arguments cannot work inside LoliClustered (or None).
    """

    target: Any
    pip: str | None = None
    defaults: dict = dataclasses.field(default_factory=dict)
    refuse: str | None = None
    check: Callable[[dict], str | None] | None = None

    def load(self, name: str) -> Callable:
        if self.refuse:
            raise LoliConfigError(f"inner={name!r} cannot be used inside LoliClustered: {self.refuse}")
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attr = self.target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            if self.pip and _is_missing(exc, module_name):
                raise LoliDependencyError(
                    f"inner={name!r} needs the package {self.pip!r}, which is not installed in this environment; "
                    f"install it with `pip install {self.pip}` or pick another inner optimizer"
                ) from exc
            raise
        return getattr(module, attr)


def _is_missing(exc: ImportError, module_name: str) -> bool:
    missing = getattr(exc, "name", None) or ""
    return module_name == missing or module_name.startswith(missing + ".")


# Why these are refused: LoliClustered swaps the per-parameter `state` between clusters, so an inner
# optimizer is only safe to bank when everything it remembers lives there (or in param-group
# scalars, which are banked too). Schedule-free optimizers keep the *parameters themselves* at an
# interpolation point that depends on the optimizer's history and need train()/eval() switching:
# K histories over one set of weights have no consistent meaning.
SCHEDULE_FREE_REASON = (
    "schedule-free optimizers keep their averaging state in the weights themselves (and need "
    "optimizer.train()/eval()), which K separate cluster states cannot share; use a regular optimizer "
    "such as AdamW, AdamW8bit, Lion or Prodigy as the inner optimizer"
)


def find_refusal(cls_or_fn: Any) -> str | None:
    """Return why an inner optimizer class cannot be banked, or None when it can."""
    name = getattr(cls_or_fn, "__name__", "") or ""
    module = getattr(cls_or_fn, "__module__", "") or ""
    if "schedulefree" in name.lower() or module.split(".")[0] in {"schedulefree"}:
        return SCHEDULE_FREE_REASON
    if (
        inspect.isclass(cls_or_fn)
        and callable(getattr(cls_or_fn, "train", None))
        and callable(getattr(cls_or_fn, "eval", None))
    ):
        # torch.optim.Optimizer has neither; an optimizer that needs mode switching keeps state outside `state`.
        return SCHEDULE_FREE_REASON
    return None


def resolve_inner(inner: Any, specs: dict[str, InnerSpec]) -> tuple[str, Callable, dict]:
    """Return ``(display_name, factory, implied_kwargs)`` for the ``inner=`` option; ``specs`` are the
    named inner optimizers (``loli_plugin.plugins.inner_specs()``: built-ins and plugins').

    ``factory(params, **kwargs)`` builds the optimizer. Raises LoliConfigError for unknown names and
    refused optimizers, LoliDependencyError for a known optimizer whose package is missing.
    """
    if isinstance(inner, str):
        name = inner.strip()
        specs = {key.lower(): spec for key, spec in specs.items()}
        spec = specs.get(name.lower())
        if spec is not None:
            factory = spec.load(name)
            implied = dict(spec.defaults)
            if spec.check is not None:
                factory = _checked(name, factory, spec.check)
        elif "." in name or ":" in name:
            factory = _import_dotted(name)
            implied = {}
        else:
            raise LoliConfigError(
                f"unknown inner optimizer inner={name!r}; known names: {', '.join(sorted(specs))}; "
                f"or give a dotted path such as inner='my_package.MyOptimizer'"
            )
    elif callable(inner):
        name, factory, implied = getattr(inner, "__name__", type(inner).__name__), inner, {}
    else:
        raise LoliConfigError(f"inner must be an optimizer name, a class or a callable, got {type(inner).__name__}")
    reason = find_refusal(factory)
    if reason:
        raise LoliConfigError(f"inner={name!r} cannot be used inside LoliClustered: {reason}")
    return name, factory, implied


def _checked(name: str, cls: Callable, check: Callable[[dict], str | None]) -> Callable:
    """``cls``'s factory that first refuses argument combinations ``check`` names."""

    def build(params, **kwargs):
        problem = check(kwargs)
        if problem:
            raise LoliConfigError(f"inner={name!r}: {problem}")
        return cls(params, **kwargs)

    build.__name__, build.__module__, build.__wrapped__ = cls.__name__, cls.__module__, cls
    return build


def _import_dotted(path: str) -> Callable:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LoliConfigError(
            f"inner={path!r}: cannot import module {module_name!r} ({exc}); check the spelling or install its package"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise LoliConfigError(f"inner={path!r}: module {module_name!r} has no attribute {attr!r}") from None
