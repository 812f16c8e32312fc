"""Loaded at interpreter start by ``loli_plugin.pth`` (site-packages): keep it tiny and harmless.

It imports neither torch nor loli_plugin. It only registers a post-import hook for sd-scripts'
``library.train_util``; when (and only when) that module is imported, loli-plugin installs its
parser options and the ``LoliClustered`` short name. Set ``LOLI_PLUGIN_DISABLE=1`` to turn it off.
"""

import os
import sys


def _on_train_util(module):
    from loli_plugin.adapters.kohya import on_train_util_import

    on_train_util_import(module)


def install():
    if os.environ.get("LOLI_PLUGIN_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import wrapt
    except ImportError:  # a broken environment must never stop the interpreter from starting
        print("loli-plugin: wrapt is missing, sd-scripts integration is off (pip install wrapt)", file=sys.stderr)
        return False
    wrapt.register_post_import_hook(_on_train_util, "library.train_util")
    return True


INSTALLED = install()
