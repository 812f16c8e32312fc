"""loli_plugin.deepspeed without DeepSpeed: the config refusals, bind() on a stand-in engine, and the pieces of
LoliClustered that ZeRO relies on (one_step, step-complete hooks, the unbound ZeRO-3 refusal). The real engine
runs in tests/test_deepspeed.py."""

from __future__ import annotations

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.deepspeed import after_engine_step, bind, check_config

#: a trainer's command-line options for some DeepSpeed settings, as an adapter passes them
OPTIONS = {
    "zero_optimization.stage": "--zero_stage",
    "zero_optimization.offload_optimizer.device": "--offload_optimizer_device",
    "fp16.fp16_master_weights_and_grads": "--full_fp16",
}


def _params():
    g = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(6, 4, generator=g)), torch.nn.Parameter(torch.randn(5, generator=g))]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


@pytest.mark.parametrize(
    "config, named",
    [
        ({"optimizer": {"type": "AdamW"}}, "'optimizer' section"),
        ({"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "nvme"}}}, "--offload_optimizer_device"),
        (
            {
                "zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}},
                "zero_force_ds_cpu_optimizer": True,
            },
            "zero_force_ds_cpu_optimizer",
        ),
        ({"fp16": {"enabled": True, "fp16_master_weights_and_grads": True}}, "--full_fp16"),
        ({"zero_optimization": {"stage": 2, "elastic_checkpoint": True}}, "elastic_checkpoint"),
        ({"checkpoint": {"load_universal": True}}, "load_universal"),
        ({"zero_optimization": {"stage": 2, "zenflow": {"topk_ratio": 0.1}}}, "zenflow"),
        ({"zero_optimization": {"stage": 7}}, "--zero_stage"),
    ],
)
def test_configs_the_banks_cannot_work_under_are_refused_with_the_setting_named(config, named):
    with pytest.raises(LoliConfigError, match=named.replace("(", r"\(")):
        check_config(config, OPTIONS)


def test_cpu_offload_keeps_loliclustered_by_setting_zero_force_ds_cpu_optimizer_false():
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    notes = check_config(config, OPTIONS)
    assert config["zero_force_ds_cpu_optimizer"] is False and "zero_force_ds_cpu_optimizer" in notes[0]
    assert check_config({"zero_optimization": {"stage": 1}}) == []  # nothing to adjust, nothing written
    explicit = {"zero_optimization": {"offload_optimizer": {"device": "cpu"}}, "zero_force_ds_cpu_optimizer": False}
    assert check_config(explicit) == []


def test_one_step_makes_every_call_inside_one_optimizer_step():
    params, reference_params = _params(), _params()
    opt = LoliClustered(params, clusters=3, lr=1e-2)
    reference = LoliClustered(reference_params, clusters=3, lr=1e-2)
    done = []
    opt.register_step_complete_hook(lambda o: done.append(o.schedule.step))
    for step in range(4):
        _grads(params, step)
        _grads(reference_params, step)
        with opt.one_step():
            # ZeRO-3: one call per sub-group, each with only that sub-group's parameters in the group
            group = opt.param_groups[0]
            everything = group["params"]
            for part in everything:
                group["params"] = [part]
                opt.step()
                assert opt.mid_step and opt.schedule.step == step
            group["params"] = everything
        reference.step()
        assert opt.schedule.step == step + 1 and not opt.mid_step
    assert done == [1, 2, 3, 4]
    assert opt.bank_steps == reference.bank_steps
    assert all(torch.equal(a, b) for a, b in zip(params, reference_params))
    with opt.one_step():  # a step the host skipped: no call, no advance, no hook
        pass
    assert opt.schedule.step == 4 and done == [1, 2, 3, 4]


def test_step_complete_hooks_run_once_per_step_when_groups_are_stepped_one_by_one():
    params = _params()
    opt = LoliClustered([{"params": params[:1]}, {"params": params[1:]}], clusters=2, lr=1e-2)
    done, calls = [], []
    opt.register_step_complete_hook(lambda o: done.append(o.schedule.step))
    handle = opt.register_step_post_hook(lambda o, a, k: calls.append(o.mid_step))
    _grads(params, 0)
    full = opt.param_groups
    for group in full:
        opt.param_groups = [group]
        opt.step()
        opt.param_groups = full
    assert done == [1] and calls == [True, False]
    handle.remove()
    _grads(params, 1)
    opt.step()  # an ordinary step: the hook runs at its end
    assert done == [1, 2]


def test_unbound_zero3_is_refused_before_anything_changes():
    """ZeRO-3's flat fp32 sub-group partitions carry ``ds_id``; stepped outside one_step() they are refused."""
    params = _params()
    opt = LoliClustered(params, clusters=2, lr=1e-2)
    flat = torch.nn.Parameter(torch.cat([p.detach().flatten() for p in params]))
    flat.ds_id = "0_1"
    flat.grad = torch.ones_like(flat)
    opt.param_groups[0]["params"] = [flat]
    before = flat.detach().clone()
    with pytest.raises(LoliConfigError, match=r"loli_plugin\.deepspeed\.bind\(engine\)"):
        opt.step()
    assert torch.equal(flat, before) and opt.schedule.step == 0 and opt.bank_steps == [0, 0]
    with opt.one_step():
        opt.step()
    assert opt.schedule.step == 1


class _Zero:
    """Stands in for DeepSpeed's ZeRO optimizer: steps the basic optimizer once per parameter, as ZeRO-3 does
    per sub-group."""

    def __init__(self, basic):
        self.optimizer = basic
        self.calls = 0
        self.overflow = False

    def step(self):
        if self.overflow:  # DeepSpeed's skipped step: the basic optimizer is not called
            return
        group = self.optimizer.param_groups[0]
        everything = group["params"]
        for part in everything:
            group["params"] = [part]
            self.optimizer.step()
            self.calls += 1
        group["params"] = everything


class _Engine:
    def __init__(self, basic):
        self.basic_optimizer = basic
        self.optimizer = _Zero(basic)


def test_bind_wraps_the_engines_optimizer_step_once():
    params = _params()
    opt = LoliClustered(params, clusters=3, lr=1e-2)
    engine = _Engine(opt)
    assert bind(engine) is opt and bind(engine) is opt  # idempotent: one wrapper
    for step in range(3):
        _grads(params, step)
        engine.optimizer.step()
        assert opt.schedule.step == step + 1
    assert engine.optimizer.calls == 6 and sum(opt.bank_steps) == 3
    engine.basic_optimizer = torch.optim.AdamW(_params())
    with pytest.raises(LoliConfigError, match="steps AdamW, not LoliClustered"):
        bind(engine)


def test_after_engine_step_runs_once_per_engine_step_and_not_on_a_skipped_one():
    """A stock optimizer under ZeRO is stepped once per group inside the engine's step; hooks that must see
    one step (the probe) follow the engine's step instead, skipping the ones DeepSpeed skipped."""
    params = _params()
    inner = torch.optim.AdamW(params, lr=1e-2)
    engine = _Engine(inner)
    seen = []
    after_engine_step(engine, lambda: seen.append(engine.optimizer.calls))
    _grads(params, 0)
    engine.optimizer.step()
    assert seen == [2]  # once, after both per-part calls
    engine.optimizer.overflow = True  # DeepSpeed skips this one
    engine.optimizer.step()
    assert seen == [2] and engine.optimizer.calls == 2
