"""LoliClustered: bit-exactness against its inner optimizer, banking, persistence, host integration."""

from __future__ import annotations

import io

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError, LoliStateError
from loli_plugin.errors import LoliDependencyError

STEPS = 12


def make_params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    # (512, 16) has 8192 elements: above bitsandbytes' min_8bit_size (4096), so its 8-bit path runs
    shapes = [(16, 8), (8,), (512, 16), (16,)]
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]


def groups_of(params, lr=1e-2):
    # two groups with different LRs, like kohya's UNet / text-encoder split or LoRA+. Prodigy
    # (lr ~ 1) only accepts one LR for all groups, so it gets two groups with the same LR.
    return [{"params": params[:2], "lr": lr}, {"params": params[2:], "lr": lr if lr >= 1 else lr * 0.5}]


def fake_grads(step: int, params) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    # cluster-like scale swings, as diffusion losses have across timesteps
    scale = 10.0 ** torch.empty(()).uniform_(-2, 1, generator=g).item()
    # a consistent pull towards 1 plus noise, so adaptive optimizers (Prodigy's d) really adapt
    return [scale * ((p.detach() - 1.0) + 0.3 * torch.randn(p.shape, generator=g)) for p in params]


def set_grads(step, params):
    for p, grad in zip(params, fake_grads(step, params)):
        p.grad = grad.clone()


INNERS = {
    "AdamW": dict(weight_decay=0.01),
    "AdamW-foreach": dict(weight_decay=0.01, foreach=True),
    "AdamW-forloop": dict(weight_decay=0.01, foreach=False),
    "AdamW-fused": dict(weight_decay=0.01, fused=True),
    "SGD": dict(momentum=0.9, nesterov=True),
    "Lion": dict(weight_decay=0.01),
    "Prodigy": dict(weight_decay=0.01),
    "CAME": dict(weight_decay=0.01),
    "AdamW8bit": dict(weight_decay=0.01),
}


def inner_class(key):
    name = key.split("-")[0]
    if name == "Lion":
        return pytest.importorskip("lion_pytorch").Lion, "Lion"
    if name == "Prodigy":
        return pytest.importorskip("prodigyopt").Prodigy, "Prodigy"
    if name == "CAME":
        return pytest.importorskip("came_pytorch").CAME, "CAME"
    if name == "AdamW8bit":
        return pytest.importorskip("bitsandbytes").optim.AdamW8bit, "AdamW8bit"
    return getattr(torch.optim, name), name


def lr_for(key):
    return 1.0 if key == "Prodigy" else (1e-4 if key == "Lion" else 1e-2)


@pytest.mark.parametrize("key", list(INNERS))
def test_one_cluster_is_bit_identical_to_inner(key):
    cls, name = inner_class(key)
    kwargs = INNERS[key]
    lr = lr_for(key)
    ref_params, our_params = make_params(), make_params()
    ref = cls(groups_of(ref_params, lr), lr=lr, **kwargs)
    ours = LoliClustered(groups_of(our_params, lr), inner=name, clusters=1, lr=lr, **kwargs)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref, lambda s: 1.0 / (1 + s))
    our_sched = torch.optim.lr_scheduler.LambdaLR(ours, lambda s: 1.0 / (1 + s))
    for step in range(STEPS):
        set_grads(step, ref_params)
        set_grads(step, our_params)
        ref.step()
        ours.step()
        ref_sched.step()
        our_sched.step()
        ref.zero_grad()
        ours.zero_grad()
    for a, b in zip(ref_params, our_params):
        assert torch.equal(a, b), f"{key}: parameters differ from the inner optimizer alone"
    assert ours.param_groups[0]["lr"] == ref.param_groups[0]["lr"]


@pytest.mark.parametrize("key", ["AdamW", "AdamW-fused", "SGD", "Lion", "Prodigy", "CAME", "AdamW8bit"])
@pytest.mark.parametrize("schedule", ["shuffle", "random"])
def test_k_clusters_equal_k_independent_inner_optimizers(key, schedule):
    cls, name = inner_class(key)
    kwargs, lr, K = INNERS[key], lr_for(key), 4
    ref_params, our_params = make_params(), make_params()
    refs = [cls(groups_of(ref_params, lr), lr=lr, **kwargs) for _ in range(K)]
    ours = LoliClustered(groups_of(our_params, lr), inner=name, clusters=K, schedule=schedule, seed=7, lr=lr, **kwargs)
    seen = []
    for step in range(3 * K + 1):
        k = ours.current_cluster
        seen.append(k)
        set_grads(step, ref_params)
        set_grads(step, our_params)
        refs[k].step()
        ours.step()
        for a, b in zip(ref_params, our_params):
            assert torch.equal(a, b), f"{key}: step {step} (cluster {k}) differs from an independent inner optimizer"
    assert len(set(seen)) > 1
    # group-level running values (Prodigy's d, k, ...) are per cluster, like the independent optimizers'
    for k in range(K):
        ours._position(k)
        for g_ref, g_ours in zip(refs[k].param_groups, ours.param_groups):
            for key_, value in g_ref.items():
                if key_ != "params":
                    assert g_ours[key_] == value or (
                        isinstance(value, torch.Tensor) and torch.equal(value, g_ours[key_])
                    ), key_


def test_prodigy_d_is_banked_per_cluster():
    pytest.importorskip("prodigyopt")
    params = make_params()
    opt = LoliClustered(groups_of(params, 1.0), inner="Prodigy", clusters=3, schedule="round_robin")
    for step in range(30):
        set_grads(step, params)
        opt.step()
    assert {"d", "d_max", "d_numerator", "k"} <= opt._banked_keys[0]
    assert opt.bank_steps == [10, 10, 10]
    # each cluster has taken ten steps, so each has Prodigy's step counter k == 10, not 30,
    # and its own estimate of d from its own gradients
    ds = set()
    for k in range(3):
        opt._position(k)
        assert opt.param_groups[0]["k"] == 10
        ds.add(opt.param_groups[0]["d"])
    assert len(ds) == 3


def test_param_groups_are_shared_and_lr_is_never_banked():
    params = make_params()
    opt = LoliClustered(groups_of(params), clusters=3)
    assert opt.param_groups is opt.inner.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for step in range(4):
        set_grads(step, params)
        opt.step()
        sched.step()
        assert opt.inner.param_groups[0]["lr"] == pytest.approx(1e-2 * 0.5 ** (step + 1))
    assert "lr" not in set().union(*opt._banked_keys)


def test_state_is_swapped_by_reference_not_copied():
    params = make_params()
    opt = LoliClustered(params, clusters=2, schedule="round_robin")
    set_grads(0, params)
    opt.step()  # cluster 0
    set_grads(1, params)
    opt.step()  # cluster 1
    bank0 = opt.bank(0)
    exp_avg = bank0[params[0]]["exp_avg"]
    opt.step()  # cluster 0 again: the same tensor object is updated in place
    assert opt.bank(0)[params[0]]["exp_avg"] is exp_avg
    assert opt.state is opt.inner.state is opt.bank(opt.current_cluster)


def _roundtrip(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("key", ["AdamW", "Prodigy", "SGD", "AdamW8bit"])
def test_resume_equals_uninterrupted(key):
    cls, name = inner_class(key)
    kwargs, lr, K = INNERS[key], lr_for(key), 5
    straight_params, resumed_params = make_params(), make_params()
    straight = LoliClustered(groups_of(straight_params, lr), inner=name, clusters=K, **kwargs)
    for step in range(2 * STEPS):
        set_grads(step, straight_params)
        straight.step()

    first = LoliClustered(groups_of(resumed_params, lr), inner=name, clusters=K, **kwargs)
    for step in range(STEPS):
        set_grads(step, resumed_params)
        first.step()
    saved = _roundtrip(first.state_dict())
    del first
    second = LoliClustered(groups_of(resumed_params, lr * 10), inner=name, clusters=K, **kwargs)
    second.load_state_dict(saved)
    assert second.param_groups[0]["lr"] == lr  # saved hyper-parameters win, as in torch
    assert second.current_cluster == straight.schedule.cluster_at(STEPS)
    for step in range(STEPS, 2 * STEPS):
        set_grads(step, resumed_params)
        second.step()
    for a, b in zip(straight_params, resumed_params):
        assert torch.equal(a, b)
    assert second.bank_steps == straight.bank_steps
    assert second.schedule.step == straight.schedule.step


def test_never_stepped_bank_round_trips():
    params = make_params()
    opt = LoliClustered(params, clusters=5, schedule="round_robin")
    for step in range(2):
        set_grads(step, params)
        opt.step()
    sd = _roundtrip(opt.state_dict())
    assert {k for per_param in sd["state"].values() for k in per_param} == {0, 1}
    again = LoliClustered(make_params(), clusters=5, schedule="round_robin")
    again.load_state_dict(sd)
    assert again.bank_steps == [1, 1, 0, 0, 0]
    assert len(again.bank(3)) == 0 and len(again.bank(0)) == len(params)
    assert _roundtrip(again.state_dict())["loli"] == sd["loli"]


def test_state_dict_keeps_torch_layout_and_loads_weights_only():
    params = make_params()
    opt = LoliClustered(groups_of(params), clusters=3)
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    assert set(sd["state"]) <= {0, 1, 2, 3}
    assert [g["params"] for g in sd["param_groups"]] == [[0, 1], [2, 3]]
    loaded = _roundtrip(sd)  # weights_only=True: tensors and plain containers only
    assert loaded["loli"]["clusters"] == 3


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(clusters=4), "clusters=3"),
        (dict(inner="SGD", momentum=0.9), "inner='AdamW'"),
        (dict(seed=1), "seed=0"),
    ],
)
def test_load_rejects_other_configuration_and_leaves_optimizer_untouched(change, message):
    params = make_params()
    opt = LoliClustered(params, clusters=3)
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    kwargs = {"clusters": 3, "inner": "AdamW", "seed": 0, **change}
    other_params = make_params()
    other = LoliClustered(other_params, **kwargs)
    set_grads(0, other_params)
    other.step()
    before = _roundtrip(other.state_dict())
    with pytest.raises(LoliStateError, match=message):
        other.load_state_dict(sd)
    after = other.state_dict()
    assert after["loli"] == before["loli"]
    assert all(
        torch.equal(before["state"][i][k][n], after["state"][i][k][n])
        for i in before["state"]
        for k in before["state"][i]
        for n in before["state"][i][k]
    )


def test_load_rejects_plain_optimizer_state_and_truncated_state():
    params = make_params()
    plain = torch.optim.AdamW(params)
    opt = LoliClustered(params, clusters=2)
    with pytest.raises(LoliStateError, match="not saved by LoliClustered"):
        opt.load_state_dict(plain.state_dict())
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    del sd["param_groups"]
    with pytest.raises(LoliStateError, match="incomplete"):
        opt.load_state_dict(sd)
    sd = opt.state_dict()
    sd["param_groups"] = sd["param_groups"][:0]
    with pytest.raises(LoliStateError, match="does not fit"):
        opt.load_state_dict(sd)
    set_grads(1, params)
    opt.step()  # still usable after the failed loads


def test_gradient_accumulation_window_keeps_one_cluster():
    params = make_params()
    opt = LoliClustered(params, clusters=4, seed=3)
    clusters_seen = []
    for window in range(8):
        k = opt.current_cluster
        for micro in range(3):
            assert opt.current_cluster == k
            set_grads(window * 3 + micro, params)
        clusters_seen.append(k)
        opt.step()
        opt.zero_grad()
    assert clusters_seen == opt.schedule.peek(0) + [opt.schedule.cluster_at(i) for i in range(8)]


def test_accelerate_prepare_and_clipping():
    accelerate = pytest.importorskip("accelerate")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    ref_model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))
    ref_model.load_state_dict(model.state_dict())
    opt = LoliClustered(model.parameters(), clusters=1, lr=1e-2)
    ref_opt = torch.optim.AdamW(ref_model.parameters(), lr=1e-2)
    accelerator = accelerate.Accelerator(cpu=True, gradient_accumulation_steps=2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.9**s)
    model, opt_p, sched_p = accelerator.prepare(model, opt, sched)
    ref_sched = torch.optim.lr_scheduler.LambdaLR(ref_opt, lambda s: 0.9**s)
    data = torch.randn(8, 4, 8, generator=torch.Generator().manual_seed(1))
    for i, x in enumerate(data):
        with accelerator.accumulate(model):
            loss = model(x).pow(2).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), 1.0)
            opt_p.step()
            sched_p.step()
            opt_p.zero_grad()
        ref_loss = ref_model(x).pow(2).mean() / 2
        ref_loss.backward()
        if i % 2 == 1:
            torch.nn.utils.clip_grad_norm_(ref_model.parameters(), 1.0)
            ref_opt.step()
            ref_sched.step()
            ref_opt.zero_grad()
    assert opt.schedule.step == 4
    for a, b in zip(accelerator.unwrap_model(model).parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert opt_p.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])


def test_bad_options_are_refused_with_the_option_named():
    params = make_params()
    for bad in (0, -1, 2.5, "ten", True):
        with pytest.raises(LoliConfigError, match="clusters"):
            LoliClustered(params, clusters=bad)
    with pytest.raises(LoliConfigError, match="unknown inner optimizer inner='AdamQ'"):
        LoliClustered(params, inner="AdamQ")
    with pytest.raises(LoliConfigError, match="schedule"):
        LoliClustered(params, schedule="sorted")
    with pytest.raises(LoliConfigError, match="schedule-free"):
        LoliClustered(params, inner="AdamWScheduleFree")
    schedulefree = pytest.importorskip("schedulefree")
    with pytest.raises(LoliConfigError, match="schedule-free"):
        LoliClustered(params, inner=schedulefree.AdamWScheduleFree)
    with pytest.raises(LoliConfigError, match="schedule-free"):
        LoliClustered(params, inner="schedulefree.SGDScheduleFree")


def test_missing_optional_package_names_the_pip_package(monkeypatch):
    import sys

    # None in sys.modules makes `import bitsandbytes` raise ModuleNotFoundError, as if not installed
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(LoliDependencyError, match="pip install bitsandbytes"):
        LoliClustered(make_params(), inner="AdamW8bit")


def test_inner_by_class_callable_and_dotted_path():
    for inner in (torch.optim.SGD, "torch.optim.SGD", "torch.optim:SGD", lambda p, **kw: torch.optim.SGD(p, **kw)):
        opt = LoliClustered(make_params(), inner=inner, clusters=2, lr=0.1, momentum=0.9)
        assert isinstance(opt.inner, torch.optim.SGD)
    with pytest.raises(LoliConfigError, match="has no attribute"):
        LoliClustered(make_params(), inner="torch.optim.NoSuchOpt")


def test_sgdnesterov_name_implies_its_defaults_and_user_overrides():
    opt = LoliClustered(make_params(), inner="SGDNesterov", lr=0.1)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    opt = LoliClustered(make_params(), inner="SGDNesterov", lr=0.1, momentum=0.5)
    assert opt.param_groups[0]["momentum"] == 0.5


def test_wrap_an_existing_optimizer():
    params = make_params()
    inner = torch.optim.AdamW(params, lr=1e-2)
    opt = LoliClustered.wrap(inner, clusters=2, name="AdamW")
    assert opt.inner is inner and opt.param_groups is inner.param_groups
    set_grads(0, params)
    opt.step()
    used = torch.optim.AdamW(make_params(), lr=1e-2)
    set_grads(0, used.param_groups[0]["params"])
    used.step()
    with pytest.raises(LoliConfigError, match="freshly built"):
        LoliClustered.wrap(used, clusters=2)


def test_add_param_group_reaches_the_inner_optimizer():
    params = make_params()
    opt = LoliClustered(params[:2], clusters=2, lr=1e-2)
    opt.add_param_group({"params": params[2:], "lr": 1e-3})
    assert len(opt.inner.param_groups) == 2 and opt.param_groups is opt.inner.param_groups
    for step in range(3):
        set_grads(step, params)
        opt.step()
    assert all(p in opt.bank(0) or p in opt.bank(1) for p in params)


def test_step_hooks_and_closure():
    params = make_params()
    opt = LoliClustered(params, clusters=2)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        set_grads(0, params)
        return torch.tensor(1.5)

    assert opt.step(closure).item() == 1.5
    assert calls == ["pre", "post"]


def test_beta_horizon_rescales_betas_and_is_a_no_op_at_k1():
    params = make_params()
    opt = LoliClustered(params, inner="AdamW", clusters=10, beta_horizon=True, betas=(0.9, 0.999), lr=1e-2)
    b1, b2 = opt.param_groups[0]["betas"]
    assert b1 == pytest.approx(0.0, abs=1e-12) and b2 == pytest.approx(0.99)
    one = LoliClustered(make_params(), inner="AdamW", clusters=1, beta_horizon=True, betas=(0.9, 0.999), lr=1e-2)
    assert one.param_groups[0]["betas"] == pytest.approx((0.9, 0.999))


def test_warm_start_copies_the_last_stepped_bank_into_a_new_one():
    params = make_params()
    opt = LoliClustered(params, inner="AdamW", clusters=3, schedule="round_robin", warm_start=True, lr=1e-2)
    set_grads(0, params)
    opt.step()  # bank 0
    snapshot = {p: {k: v.clone() for k, v in st.items()} for p, st in opt.bank(0).items()}
    set_grads(1, params)
    opt.step()  # bank 1 starts from bank 0's state, then takes its step
    for p in params:
        assert opt.bank(1)[p]["step"].item() == 2.0  # continued bias correction: 1 copied + 1 own
        assert not torch.equal(opt.bank(1)[p]["exp_avg"], snapshot[p]["exp_avg"])  # its own update went in
        assert torch.equal(opt.bank(0)[p]["exp_avg"], snapshot[p]["exp_avg"])  # the source is untouched


def test_beta_horizon_applies_to_groups_added_later():
    params = make_params()
    opt = LoliClustered(params[:2], inner="AdamW", clusters=10, beta_horizon=True, betas=(0.9, 0.999), lr=1e-2)
    opt.add_param_group({"params": params[2:3]})  # the inner's default betas
    opt.add_param_group({"params": params[3:], "betas": (0.95, 0.999)})  # the user's own
    assert opt.param_groups[1]["betas"] == pytest.approx((0.0, 0.99), abs=1e-12)
    assert opt.param_groups[2]["betas"] == pytest.approx((0.5, 0.99), abs=1e-12)
    plain = LoliClustered(make_params()[:2], inner="AdamW", clusters=10, betas=(0.9, 0.999), lr=1e-2)
    plain.add_param_group({"params": make_params()[2:]})
    assert plain.param_groups[1]["betas"] == (0.9, 0.999)


def test_format_1_checkpoint_of_an_earlier_release_resumes_exactly():
    import pathlib

    saved = torch.load(pathlib.Path(__file__).parent / "data" / "format1_adamw_k3.pt", weights_only=True)
    assert saved["optimizer"]["loli"]["format"] == 1
    params = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    opt = LoliClustered(params, inner="AdamW", clusters=3, schedule="shuffle", seed=0, lr=1e-2, weight_decay=0.01)
    opt.load_state_dict(saved["optimizer"])
    for step in range(5, 10):  # the gradients make_format1_fixture.py used
        g = torch.Generator().manual_seed(500 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, saved["params_after_10"]))
    assert opt.state_dict()["loli"]["format"] == 1  # full banks still write format 1: older releases read it


@pytest.mark.parametrize(
    "error", [OSError("disk read failed"), KeyboardInterrupt(), MemoryError(), ValueError("shape")]
)
@pytest.mark.parametrize("offload", [None, "cpu"])
def test_failed_load_restores_and_only_mismatches_are_relabelled(error, offload, monkeypatch):
    params = make_params()
    opt = LoliClustered(params, clusters=3, offload=offload, lr=1e-2)
    for step in range(4):
        set_grads(step, params)
        opt.step()
    before = _roundtrip(opt.state_dict())
    other = LoliClustered(make_params(1), clusters=3, lr=1e-2)
    for step in range(5):
        set_grads(step, other.param_groups[0]["params"])
        other.step()
    incoming = other.state_dict()
    calls = []
    original = type(opt.inner).load_state_dict

    def failing_load(inner, state_dict):
        calls.append(1)
        if len(calls) == 2:  # the second bank: the first one is already loaded
            raise error
        return original(inner, state_dict)

    monkeypatch.setattr(type(opt.inner), "load_state_dict", failing_load)
    expected = LoliStateError if isinstance(error, ValueError) else type(error)
    with pytest.raises(expected) as info:
        opt.load_state_dict(incoming)
    assert isinstance(info.value, LoliStateError) == isinstance(error, ValueError)
    if not isinstance(error, ValueError):
        assert info.value is error  # re-raised as it is, not wrapped as "does not fit"
    monkeypatch.undo()
    after = opt.state_dict()
    assert after["loli"] == before["loli"]
    for idx, per_cluster in before["state"].items():
        for k, st in per_cluster.items():
            assert all(torch.equal(v, after["state"][idx][k][key]) for key, v in st.items())
    if offload:
        assert opt._offloader.resident == {opt.current_cluster}  # the active bank came home, the rest stay parked
    set_grads(4, params)
    opt.step()  # still usable
