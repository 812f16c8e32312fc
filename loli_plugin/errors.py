"""Exceptions the plugin raises before training starts.

Every message names the option at fault and how to fix it: a user reading a trainer's traceback
should not need to open this package to know what to change.
"""

#: the environment variable that turns loli-plugin off (``_loli_plugin_autoload`` reads the same name at
#: interpreter start, without importing this package)
ENV_DISABLE = "LOLI_PLUGIN_DISABLE"


class LoliError(Exception):
    """Base class for every error this package raises on purpose."""


class LoliConfigError(LoliError, ValueError):
    """A user-facing option is invalid (cluster count, loss weights, inner optimizer, ...)."""


class LoliStateError(LoliError, ValueError):
    """A saved optimizer state does not fit the optimizer it is loaded into."""


class LoliDependencyError(LoliError, ImportError):
    """An optional package needed for the requested feature is not installed."""


class LoliUnsupportedTrainerError(LoliError, RuntimeError):
    """The installed trainer lacks functions (or signatures) a requested Loli feature needs.
    ``refused_at_import``: raised at the import of a trainer layout the plugin cannot serve, because the
    command line asks for Loli options (the one case where a trainer's import is stopped)."""

    def __init__(self, *args, refused_at_import: bool = False):
        super().__init__(*args)
        self.refused_at_import = refused_at_import
