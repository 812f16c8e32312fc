"""Exceptions the plugin raises before training starts.

Every message names the option at fault and how to fix it: a user reading a trainer's traceback
should not need to open this package to know what to change.
"""


class LoliError(Exception):
    """Base class for every error this package raises on purpose."""


class LoliConfigError(LoliError, ValueError):
    """A user-facing option is invalid (cluster count, loss weights, inner optimizer, ...)."""


class LoliStateError(LoliError, ValueError):
    """A saved optimizer state does not fit the optimizer it is loaded into."""


class LoliDependencyError(LoliError, ImportError):
    """An optional package needed for the requested feature is not installed."""
