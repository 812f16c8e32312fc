"""The old name of :mod:`loli_plugin.adapter`, kept so that adapters written against it keep working.

Renamed because in pluggy's words the *host* is the program that calls the hooks (the trainer), while
this module is the adapter interface. Importing it gives the new module itself (the same object), so
``from loli_plugin.host import TrainerAdapter`` and monkeypatching either name reach the same code.
"""

import sys
import warnings

from . import adapter

warnings.warn(
    "loli_plugin.host was renamed loli_plugin.adapter; import TrainerAdapter from there", DeprecationWarning, 2
)
sys.modules[__name__] = adapter
