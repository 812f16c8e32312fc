"""Loaded at interpreter start by ``loli_plugin.pth`` (site-packages): keep it tiny and harmless.

It imports neither torch nor loli_plugin. It only registers post-import hooks: for sd-scripts'
``library.train_util`` (parser options and the ``LoliClustered`` short name) and for OneTrainer's
optimizer enum, config, ``create`` and UI view modules (LOLI_CLUSTERED and its options). Nothing
happens unless those modules are imported. Set ``LOLI_PLUGIN_DISABLE=1`` to turn it off.
"""

import os
import sys


def _on_train_util(module):
    from loli_plugin.adapters.kohya import on_train_util_import

    on_train_util_import(module)


def _on_onetrainer_module(module):
    from loli_plugin.adapters.onetrainer import on_import

    on_import(module)


#: OneTrainer modules whose import triggers a registration (loli_plugin.adapters.onetrainer.WATCHED;
#: repeated here so this file imports nothing of loli_plugin at start-up)
ONETRAINER_MODULES = (
    "modules.util.enum.Optimizer",
    "modules.util.optimizer_util",
    "modules.util.config.TrainConfig",
    "modules.util.create",
    "modules.ui.BaseOptimizerParamsWindowView",
    "modules.ui.BaseTrainingTabView",
)


def install():
    if os.environ.get("LOLI_PLUGIN_DISABLE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        import wrapt
    except ImportError:  # a broken environment must never stop the interpreter from starting
        print("loli-plugin: wrapt is missing, sd-scripts integration is off (pip install wrapt)", file=sys.stderr)
        return False
    wrapt.register_post_import_hook(_on_train_util, "library.train_util")
    for name in ONETRAINER_MODULES:
        wrapt.register_post_import_hook(_on_onetrainer_module, name)
    return True


INSTALLED = install()
