"""Resolving the ``inner=`` option of LoliClustered to an optimizer class.

A name goes through the ``loli_inner_optimizers`` hook (built-ins plus entry-point plugins), a
dotted path is imported, and a class or callable is used as given. Whatever the route, inner
optimizers that cannot be banked (schedule-free ones) are refused here, before any state exists.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from typing import Any, Callable

from .errors import LoliConfigError, LoliDependencyError


@dataclasses.dataclass(frozen=True)
class InnerSpec:
    """How to build one named inner optimizer.

    ``target`` is ``"module:attr"`` (imported lazily) or an object. ``defaults`` are keyword
    arguments the name implies (kohya's ``SGDNesterov`` is SGD with nesterov=True, momentum=0.9);
    the user's own arguments override them. ``pip`` names the distribution to install when the
    module is missing. ``refuse`` holds the reason when the optimizer must not be wrapped.
    """

    target: Any
    pip: str | None = None
    defaults: dict = dataclasses.field(default_factory=dict)
    refuse: str | None = None

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
    if inspect.isclass(cls_or_fn) and callable(getattr(cls_or_fn, "train", None)) and callable(getattr(cls_or_fn, "eval", None)):
        # torch.optim.Optimizer has neither; an optimizer that needs mode switching keeps state outside `state`.
        return SCHEDULE_FREE_REASON
    return None


def known_names() -> dict[str, InnerSpec]:
    from .plugins import get_plugin_manager, merged

    pm = get_plugin_manager()
    specs = merged(pm.hook.loli_inner_optimizers(), "loli_inner_optimizers")
    return {name.lower(): spec for name, spec in specs.items()}


def resolve_inner(inner: Any) -> tuple[str, Callable, dict]:
    """Return ``(display_name, factory, implied_kwargs)`` for the ``inner=`` option.

    ``factory(params, **kwargs)`` builds the optimizer. Raises LoliConfigError for unknown names and
    refused optimizers, LoliDependencyError for a known optimizer whose package is missing.
    """
    if isinstance(inner, str):
        name = inner.strip()
        specs = known_names()
        spec = specs.get(name.lower())
        if spec is not None:
            factory = spec.load(name)
            implied = dict(spec.defaults)
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
