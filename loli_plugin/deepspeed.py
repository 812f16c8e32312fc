"""LoliClustered as DeepSpeed's basic optimizer (``pip install 'loli-plugin[deepspeed]'``).

DeepSpeed ZeRO-1/2 hand each rank a flat fp32 partition of every param group and step the basic optimizer on
it, so each rank keeps K banks of only its 1/N share: LoliClustered needs nothing from DeepSpeed for that. The
seams (read in DeepSpeed 0.19.8, ``deepspeed/runtime/zero/stage_1_and_2.py`` and ``stage3.py``):

* ZeRO-1/2 ``DeepSpeedZeroOptimizer._optimizer_step(i)`` steps the basic optimizer once per param group,
  showing it a one-group ``param_groups``; LoliClustered completes the step when every group is stepped.
* ZeRO-3 ``DeepSpeedZeroOptimizer_Stage3._optimizer_step(sub_group)`` steps it once per parameter sub-group
  without saying which is the last: ``bind(engine)`` wraps the ZeRO optimizer's ``step`` in
  ``LoliClustered.one_step()``. Bound, every ZeRO stage completes the step after DeepSpeed has copied the
  updated partitions back into the model, which is when step hooks (the trainers' probe) may run.
* A step DeepSpeed skips (fp16 overflow, a non-finite gradient norm) never calls the basic optimizer.
* Checkpoints: ``engine.save_checkpoint`` stores each rank's ``LoliClustered.state_dict()`` (its partition of
  every bank, the schedule) in ``zero_pp_rank_R_..._optim_states.pt``; ``load_checkpoint`` gives it back.

``check_config`` refuses the DeepSpeed settings under which the banks cannot work, before anything is trained;
each message names the setting, and the trainer's option for it (``options`` maps DeepSpeed config keys to a
trainer's command-line options).
"""

from __future__ import annotations

import functools
from typing import Any

from .clustered import LoliClustered
from .errors import LoliConfigError


def _get(config: dict, dotted: str, default: Any = None) -> Any:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def _name(dotted: str, options: dict[str, str]) -> str:
    option = options.get(dotted)
    return f"{option} (DeepSpeed config {dotted})" if option else f"DeepSpeed config {dotted}"


def check_config(config: dict, options: dict[str, str] | None = None, fix_offload: bool = True) -> list[str]:
    """Raise ``LoliConfigError`` for a DeepSpeed config LoliClustered cannot work under; return notes on
    what was adjusted. With ``fix_offload``, an optimizer offload without ``zero_force_ds_cpu_optimizer`` gets
    ``zero_force_ds_cpu_optimizer: false`` written into ``config``: otherwise accelerate replaces any torch
    optimizer with DeepSpeedCPUAdam (``map_pytorch_optim_to_deepspeed``) and DeepSpeed itself refuses a
    client optimizer, so the run would train with Adam instead of LoliClustered."""
    options = options or {}
    notes: list[str] = []
    if "optimizer" in config:
        raise LoliConfigError(
            "the DeepSpeed config has an 'optimizer' section: DeepSpeed would build its own optimizer "
            f"({_get(config, 'optimizer.type', '?')}) in place of LoliClustered, and there would be no cluster banks. "
            "Remove the 'optimizer' section from the DeepSpeed config file (accelerate's deepspeed_config_file)"
        )
    stage = _get(config, "zero_optimization.stage", 0)
    offload = str(_get(config, "zero_optimization.offload_optimizer.device", "none") or "none").lower()
    if offload == "nvme":
        raise LoliConfigError(
            f"{_name('zero_optimization.offload_optimizer.device', options)} = nvme is not supported with "
            "LoliClustered: ZeRO-Infinity swaps the optimizer state it finds on the parameters, one bank of K. "
            "Use cpu (ZeRO stage 1 or 2), or LoliClustered's own optimizer_args offload=cpu"
        )
    if offload == "cpu":
        force = config.get("zero_force_ds_cpu_optimizer")
        if force is None and fix_offload:
            config["zero_force_ds_cpu_optimizer"] = False
            notes.append(
                "optimizer offload to the CPU: zero_force_ds_cpu_optimizer set to false so that DeepSpeed keeps "
                "LoliClustered. Its banks step on the CPU with torch's kernels: for inner AdamW add fused=True to the "
                "optimizer arguments, whose CPU kernel is about as fast as DeepSpeedCPUAdam (docs/deepspeed.md)"
            )
        elif force not in (False, "false", "False"):
            raise LoliConfigError(
                f"{_name('zero_optimization.offload_optimizer.device', options)} = cpu with "
                "zero_force_ds_cpu_optimizer true: DeepSpeed (and accelerate) replace the optimizer with "
                'DeepSpeedCPUAdam, so LoliClustered would not train. Set "zero_force_ds_cpu_optimizer": false '
                "in the DeepSpeed config, or drop the optimizer offload"
            )
    if _get(config, "fp16.fp16_master_weights_and_grads", False) is True:
        raise LoliConfigError(
            f"{_name('fp16.fp16_master_weights_and_grads', options)}: DeepSpeed keeps fp16 master weights only "
            "for its own DeepSpeedCPUAdam, not for a client optimizer such as LoliClustered. Drop that option "
            "(the fp32 master weights stay on the CPU with the optimizer offload)"
        )
    if _get(config, "zero_optimization.elastic_checkpoint", False) is True:
        raise LoliConfigError(
            "DeepSpeed config zero_optimization.elastic_checkpoint = true saves the optimizer state it finds on the "
            "parameters, which is one of LoliClustered's K banks; set it to false"
        )
    if _get(config, "checkpoint.load_universal", False) is True:
        raise LoliConfigError(
            "DeepSpeed config checkpoint.load_universal = true: universal checkpoints carry one optimizer state "
            "per parameter, not LoliClustered's K banks; resume from the checkpoint the run saved"
        )
    if _get(config, "zero_optimization.zenflow") is not None:
        raise LoliConfigError(
            "DeepSpeed config zero_optimization.zenflow: ZenFlow steps its own CPU optimizer, not LoliClustered; "
            "remove the zenflow section"
        )
    if stage not in (0, 1, 2, 3, "auto", None):
        raise LoliConfigError(f"{_name('zero_optimization.stage', options)} = {stage!r} is not a ZeRO stage")
    return notes


def basic_optimizer(engine) -> LoliClustered | None:
    """The LoliClustered a DeepSpeed engine steps, or None."""
    opt = getattr(engine, "basic_optimizer", None)
    return opt if isinstance(opt, LoliClustered) else None


def bind(engine) -> LoliClustered:
    """Make every call of the engine's optimizer step (DeepSpeed's ZeRO, fp16 or bf16 wrapper around
    LoliClustered) one LoliClustered step, complete when DeepSpeed's step returns. Required for ZeRO-3;
    harmless and idempotent for the others. Call it right after ``deepspeed.initialize`` (with accelerate:
    ``accelerator.deepspeed_engine_wrapped.engine``)."""
    loli = basic_optimizer(engine)
    if loli is None:
        found = type(getattr(engine, "basic_optimizer", None)).__name__
        raise LoliConfigError(
            f"this DeepSpeed engine steps {found}, not LoliClustered: the optimizer was replaced (a DeepSpeed "
            "config 'optimizer' section, or an optimizer offload with zero_force_ds_cpu_optimizer true)"
        )
    wrapper = engine.optimizer
    if wrapper is loli or getattr(wrapper.step, "__loli_bound__", None) is loli:
        return loli
    original = wrapper.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        with loli.one_step():
            return original(*args, **kwargs)

    step.__loli_bound__ = loli
    wrapper.step = step
    return loli


def after_engine_step(engine, callback) -> None:
    """Call ``callback()`` after each optimizer step the engine takes and does not skip (an fp16 overflow sets
    the ZeRO/fp16 optimizer's ``overflow``): for step hooks of an optimizer DeepSpeed steps once per param
    group inside its own step (the probe with a stock optimizer)."""
    wrapper = engine.optimizer
    original = wrapper.step

    @functools.wraps(original)
    def step(*args, **kwargs):
        result = original(*args, **kwargs)
        if not getattr(wrapper, "overflow", False):
            callback()
        return result

    step.__loli_bound__ = getattr(original, "__loli_bound__", None)
    wrapper.step = step
