"""The old name of :mod:`loli_plugin.patches.instrument` (the instrumentor kit), kept so that adapters
written against it keep working. Importing it gives the new module itself (the same object)."""

import sys
import warnings

from . import instrument

warnings.warn(
    "loli_plugin.patches.base was renamed loli_plugin.patches.instrument; import the patch classes from there",
    DeprecationWarning,
    2,
)
sys.modules[__name__] = instrument
