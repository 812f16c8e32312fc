"""Nerogar/OneTrainer adapter: registers LOLI_CLUSTERED and its options, builds the optimizer, keeps
the run's state. Nothing in OneTrainer is edited.

How it activates: ``loli_plugin.pth`` registers post-import hooks (``_loli_plugin_autoload``). When
OneTrainer's own modules are imported (they are recognised by their file layout and contents, since
the package name ``modules`` is shared with other projects) the plugin:

* adds ``Optimizer.LOLI_CLUSTERED`` and its ``OPTIMIZER_DEFAULT_PARAMETERS`` entry;
* adds the ``loli_inner``/``loli_clusters``/``loli_schedule`` optimizer fields and ``cos_strength``
  to the config factories (so the UI, JSON configs, presets, backups and multi-GPU children have them);
* installs ``patches.onetrainer.TRAINING`` when ``modules.util.create`` is imported, and the UI
  additions when the UI views are imported.

Multi-GPU children are spawned fresh interpreters: the ``.pth`` runs there too, so every rank registers
the same things before it rebuilds its config.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass

from ..errors import LoliConfigError
from .run import LoliRun

_RUN: "OneTrainerRun | None" = None

#: inner optimizers that cannot be wrapped: (reason)
_REFUSED = {
    "MUON": "Muon splits parameter groups by layer type, which OneTrainer's backup re-mapping keys differently",
    "MUON_ADV": "Muon splits parameter groups by layer type, which OneTrainer's backup re-mapping keys differently",
    "ADAMUON_ADV": "Muon splits parameter groups by layer type, which OneTrainer's backup re-mapping keys differently",
}


@dataclass
class OneTrainerRun(LoliRun):
    inner: str = ""


def active_run() -> OneTrainerRun | None:
    return _RUN


def deactivate() -> None:
    global _RUN
    _RUN = None


def _is_onetrainer(module, relpath: str) -> bool:
    path = getattr(module, "__file__", "") or ""
    return path.replace(os.sep, "/").endswith(relpath)


def on_import(module) -> None:
    """Post-import hook for OneTrainer's modules (see module docstring)."""
    from ..patches import onetrainer as patches

    name = module.__name__
    if name == "modules.util.enum.Optimizer":
        if _is_onetrainer(module, "modules/util/enum/Optimizer.py") and "ADAMW" in getattr(module, "Optimizer").__members__:
            patches.register_member(module)
    elif name == "modules.util.optimizer_util":
        if _is_onetrainer(module, "modules/util/optimizer_util.py") and hasattr(module, "OPTIMIZER_DEFAULT_PARAMETERS"):
            patches.register_default_parameters(module)
    elif name == "modules.util.config.TrainConfig":
        if _is_onetrainer(module, "modules/util/config/TrainConfig.py") and hasattr(module, "TrainOptimizerConfig"):
            patches.register_config_fields(module)
    elif name == "modules.util.create":
        if _is_onetrainer(module, "modules/util/create.py") and hasattr(module, "create_optimizer"):
            patches.TRAINING.instrument()  # raises LoliUnsupportedTrainerError naming the supported commit
    elif name in ("modules.ui.BaseOptimizerParamsWindowView", "modules.ui.BaseTrainingTabView"):
        from ..patches import onetrainer_ui

        if _is_onetrainer(module, name.replace(".", "/") + ".py"):
            onetrainer_ui.instrument(name)


WATCHED = (
    "modules.util.enum.Optimizer",
    "modules.util.optimizer_util",
    "modules.util.config.TrainConfig",
    "modules.util.create",
    "modules.ui.BaseOptimizerParamsWindowView",
    "modules.ui.BaseTrainingTabView",
)


def build_optimizer(create_optimizer, bound: dict):
    """Build LoliClustered for ``create_optimizer``'s arguments; ``create_optimizer`` is the original."""
    global _RUN
    from modules.util.enum.Optimizer import Optimizer

    from .. import LoliClustered
    from ..inner import SCHEDULE_FREE_REASON
    from ..options import check_clusters
    from ..patches import onetrainer as patches

    config = bound["config"]
    oc = config.optimizer
    inner_name = str(getattr(oc, "loli_inner", "") or "").strip()
    choices = [m for m in Optimizer.__members__ if m != patches.MEMBER]
    if inner_name not in Optimizer.__members__ or inner_name == patches.MEMBER:
        raise LoliConfigError(
            f"Inner Optimizer (optimizer.loli_inner) is {inner_name!r}, not a OneTrainer optimizer; "
            f"pick one in the optimizer window, e.g. ADAMW, ADAMW_8BIT, PRODIGY, LION, CAME (all: {', '.join(choices)})"
        )
    inner_member = Optimizer[inner_name]
    if inner_member.is_schedule_free:
        raise LoliConfigError(f"Inner Optimizer {inner_name} cannot be used: {SCHEDULE_FREE_REASON}")
    if inner_name in _REFUSED:
        raise LoliConfigError(f"Inner Optimizer {inner_name} cannot be used with LOLI_CLUSTERED: {_REFUSED[inner_name]}")
    if getattr(oc, "fused_back_pass", False):
        raise LoliConfigError(
            "Fused Back Pass is not supported by LOLI_CLUSTERED (its per-parameter steps bypass the cluster banks); "
            "turn off 'Fused Back Pass' in the optimizer window"
        )
    clusters = check_clusters(getattr(oc, "loli_clusters", 10), option="Timestep Clusters (optimizer.loli_clusters)")
    import _loli_plugin_autoload

    if getattr(config, "multi_gpu", False) and getattr(_loli_plugin_autoload, "VIA_LAUNCHER", False):
        raise LoliConfigError(
            "Multi-GPU training with LOLI_CLUSTERED needs loli-plugin's start-up hook in every spawned rank: install "
            "loli-plugin with pip (not editable) so loli_plugin.pth runs, instead of the python -m loli_plugin.onetrainer launcher"
        )

    inner_optimizer_config = copy.copy(oc)
    inner_optimizer_config.optimizer = inner_member
    inner_config = copy.copy(config)
    inner_config.optimizer = inner_optimizer_config
    inner = create_optimizer(bound["parameter_group_collection"], None, inner_config, bound.get("layer_key_fn"))
    if inner is None:
        raise LoliConfigError(f"OneTrainer built no optimizer for Inner Optimizer {inner_name}")
    optimizer = LoliClustered.wrap(inner, clusters=clusters, schedule=str(getattr(oc, "loli_schedule", "shuffle")), seed=0, name=inner_name)
    run = OneTrainerRun.for_optimizer(optimizer, inner=inner_name)
    if bound.get("state_dict") is not None:
        load_backup(optimizer, bound["state_dict"], bound["parameter_group_collection"].unique_name_mapping)
    _RUN = run
    print(f"loli-plugin: LOLI_CLUSTERED(inner={inner_name}, clusters={clusters}, schedule={optimizer.schedule.strategy}); "
          "timesteps drawn from one cluster per optimizer step", file=sys.stderr)
    return optimizer


def load_backup(optimizer, saved: dict, group_names: list[str]) -> None:
    """Load a OneTrainer backup's ``optimizer.pt`` into ``optimizer``.

    OneTrainer saves ``param_group_mapping`` (the unique name of each group) and
    ``param_group_optimizer_mapping`` next to the optimizer state, and re-maps groups by name when the
    LoRA layout changes. The same contract is kept here: groups whose name and optimizer match keep
    their saved state (all cluster banks and group values), the others start fresh. A backup made with
    another optimizer starts fresh, as OneTrainer does; one made with another cluster count or inner
    optimizer is refused by ``LoliClustered.load_state_dict`` with the option to change.
    """
    from ..patches.onetrainer import MEMBER

    if "loli" not in saved:
        print("loli-plugin: the backup's optimizer state was saved by another optimizer; LOLI_CLUSTERED starts fresh",
              file=sys.stderr)
        return
    saved = dict(saved)
    fresh = optimizer.state_dict()["param_groups"]
    old_names = saved.pop("param_group_mapping", None)
    old_optimizers = saved.pop("param_group_optimizer_mapping", None)
    state, groups, next_index = {}, [], 0
    for i, name in enumerate(group_names):
        new = fresh[i]
        old_i = old_names.index(name) if old_names is not None and name in old_names else (i if old_names is None else None)
        reuse = old_i is not None and (old_optimizers is None or old_optimizers[old_i] == MEMBER)
        source = saved["param_groups"][old_i] if reuse else new
        indices = list(range(next_index, next_index + len(source["params"])))
        if reuse:
            for new_index, old_index in zip(indices, source["params"]):
                if old_index in saved["state"]:
                    state[new_index] = saved["state"][old_index]
        groups.append({**source, "params": indices, "lr": new["lr"], "initial_lr": new.get("initial_lr", new["lr"])})
        next_index += len(indices)
    optimizer.load_state_dict({**saved, "state": state, "param_groups": groups})
