"""The plugin's own hook implementations: built-in inner optimizers, schedules and loss terms.

They are registered like any third-party plugin, so a plugin can add names or override these.
"""

from __future__ import annotations

from .hookspecs import hookimpl
from .inner import SCHEDULE_FREE_REASON, InnerSpec
from .orders import BUILTIN_ORDERS
from .terms import BUILTIN_TERMS

_TORCH_NAMES = ["ASGD", "Adadelta", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RAdam", "RMSprop", "Rprop", "SGD"]


def _adafactor_check(kwargs: dict) -> str | None:
    if kwargs.get("relative_step") or kwargs.get("warmup_init"):
        return (
            "relative_step=True / warmup_init=True make Adafactor compute its own learning rate from its step count, "
            "which ignores the trainer's --learning_rate and scheduler (and would restart in every cluster); "
            "leave them unset (relative_step=False is the default inside LoliClustered) and set the learning rate "
            "as usual"
        )
    return None


def _inner_specs() -> dict[str, InnerSpec]:
    specs = {name: InnerSpec(f"torch.optim:{name}") for name in _TORCH_NAMES}
    bnb = "bitsandbytes"
    specs.update(
        {
            # The names kohya sd-scripts users type for --optimizer_type, with the same meaning there
            # (library/train_util.py get_optimizer).
            "AdamW8bit": InnerSpec("bitsandbytes.optim:AdamW8bit", pip=bnb),
            "PagedAdamW8bit": InnerSpec("bitsandbytes.optim:PagedAdamW8bit", pip=bnb),
            "PagedAdamW": InnerSpec("bitsandbytes.optim:PagedAdamW", pip=bnb),
            "PagedAdamW32bit": InnerSpec("bitsandbytes.optim:PagedAdamW32bit", pip=bnb),
            "Lion8bit": InnerSpec("bitsandbytes.optim:Lion8bit", pip=bnb),
            "PagedLion8bit": InnerSpec("bitsandbytes.optim:PagedLion8bit", pip=bnb),
            "SGDNesterov": InnerSpec("torch.optim:SGD", defaults={"nesterov": True, "momentum": 0.9}),
            # One first moment for all clusters, one second moment per cluster: (1 + K) / 2K of full banks' memory.
            "AdamWClusteredSecondMoment": InnerSpec("loli_plugin.clustered_second_moment:AdamWClusteredSecondMoment"),
            "SGDNesterov8bit": InnerSpec(
                "bitsandbytes.optim:SGD8bit", pip=bnb, defaults={"nesterov": True, "momentum": 0.9}
            ),
            "Lion": InnerSpec("lion_pytorch:Lion", pip="lion-pytorch"),
            "Prodigy": InnerSpec("prodigyopt:Prodigy", pip="prodigyopt"),
            # Prodigy with one step-size estimate d for all clusters (each cluster keeps its own moments)
            "ProdigySharedD": InnerSpec("loli_plugin.prodigy_shared_d:ProdigySharedD", pip="prodigyopt"),
            "CAME": InnerSpec("came_pytorch:CAME", pip="came-pytorch"),
            # kohya's AdaFactor is transformers' (relative_step etc.); torch.optim.Adafactor differs and
            # stays reachable as inner='torch.optim.Adafactor'. Inside LoliClustered the host's learning
            # rate and scheduler drive it, so it runs in transformers' "manual lr" mode by default (sd-scripts'
            # own --optimizer_type AdaFactor instead drops the lr and swaps in AdafactorSchedule).
            "AdaFactor": InnerSpec(
                "transformers.optimization:Adafactor",
                pip="transformers",
                defaults={"relative_step": False, "scale_parameter": False, "warmup_init": False},
                check=_adafactor_check,
            ),
            "DAdaptation": InnerSpec("dadaptation:DAdaptAdamPreprint", pip="dadaptation"),
            "DAdaptAdamPreprint": InnerSpec("dadaptation:DAdaptAdamPreprint", pip="dadaptation"),
            "DAdaptAdaGrad": InnerSpec("dadaptation:DAdaptAdaGrad", pip="dadaptation"),
            "DAdaptAdam": InnerSpec("dadaptation:DAdaptAdam", pip="dadaptation"),
            "DAdaptAdan": InnerSpec("dadaptation:DAdaptAdan", pip="dadaptation"),
            "DAdaptAdanIP": InnerSpec("dadaptation.experimental:DAdaptAdanIP", pip="dadaptation"),
            "DAdaptLion": InnerSpec("dadaptation:DAdaptLion", pip="dadaptation"),
            "DAdaptSGD": InnerSpec("dadaptation:DAdaptSGD", pip="dadaptation"),
        }
    )
    for name in ("AdamWScheduleFree", "RAdamScheduleFree", "SGDScheduleFree"):
        specs[name] = InnerSpec(f"schedulefree:{name}", pip="schedulefree", refuse=SCHEDULE_FREE_REASON)
    return specs


@hookimpl
def loli_inner_optimizers():
    return _inner_specs()


@hookimpl
def loli_schedules():
    return dict(BUILTIN_ORDERS)


@hookimpl
def loli_loss_terms():
    return dict(BUILTIN_TERMS)
