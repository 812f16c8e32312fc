"""offload="cpu": inactive banks parked off the parameters' device, bit-identical training, at most two
resident banks, and a state_dict that does not depend on the offload (CPU on both sides here; the
copies are real new tensors, so the mechanics are exercised)."""

from __future__ import annotations

import io

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError

from .test_clustered import make_params, set_grads


def run(inner, offload, steps=24, clusters=4, **kw):
    params = make_params()
    opt = LoliClustered(params, inner=inner, clusters=clusters, offload=offload, lr=1e-2, **kw)
    resident = []
    for s in range(steps):
        set_grads(s, params)
        opt.step()
        opt.zero_grad()
        if offload:
            stepped = {k for k in range(clusters) if opt.bank_steps[k]}
            resident.append(len(opt._offloader.resident & stepped))
    return params, opt, resident


def same_state(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            if not same_state(x, y):
                return False
        elif isinstance(x, torch.Tensor):
            if not torch.equal(x, y):
                return False
        elif isinstance(x, list) and x and isinstance(x[0], dict):
            if not all(same_state(p, q) for p, q in zip(x, y)):
                return False
        elif x != y:
            return False
    return True


@pytest.mark.parametrize(
    "inner, kw",
    [("AdamW", {}), ("AdamW", {"foreach": True}), ("Prodigy", {}), ("SGD", {"momentum": 0.9}), ("AdamW8bit", {})],
)
def test_offload_is_bit_identical_and_keeps_two_banks_resident(inner, kw):
    if inner == "Prodigy":
        pytest.importorskip("prodigyopt")
    if inner == "AdamW8bit":
        pytest.importorskip("bitsandbytes")
    p0, o0, _ = run(inner, None, **kw)
    p1, o1, resident = run(inner, "cpu", **kw)
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert same_state(o0.state_dict(), o1.state_dict())
    assert max(resident) <= 2 and resident[-1] >= 1


def test_parked_banks_are_moved_not_aliased():
    params, opt, _ = run("AdamW", "cpu", steps=8)
    active = opt.current_cluster
    parked = [k for k in range(4) if k != active and k not in opt._offloader.resident]
    assert parked, "some banks must be parked"
    before = [t for st in opt.bank(parked[0]).values() for t in st.values() if torch.is_tensor(t)]  # kept alive
    opt._offloader.fetch(parked[0], opt.bank(parked[0]), wait=True)
    after = [t for st in opt.bank(parked[0]).values() for t in st.values() if torch.is_tensor(t)]
    assert len(before) == len(after) > 0
    assert all(a is not b and torch.equal(a, b) for a, b in zip(before, after))  # fetched copies, same values


def test_resume_and_accelerate_prepare_keep_banks_parked():
    from accelerate import Accelerator

    p0, o0, _ = run("AdamW", None, steps=16)
    params = make_params()
    opt = LoliClustered(params, inner="AdamW", clusters=4, offload="cpu", lr=1e-2)
    for s in range(8):
        set_grads(s, params)
        opt.step()
        opt.zero_grad()
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)

    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    resumed = LoliClustered(params2, inner="AdamW", clusters=4, offload="cpu", lr=1e-2)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    stepped = {k for k in range(4) if resumed.bank_steps[k]}
    assert len(resumed._offloader.resident & stepped) <= 1  # only the active bank is home after a load
    wrapped = Accelerator(cpu=True).prepare(resumed)  # saves and reloads the whole state_dict
    assert len(resumed._offloader.resident & stepped) <= 1
    for s in range(8, 16):
        set_grads(s, params2)
        wrapped.step()
        wrapped.zero_grad()
    assert all(torch.equal(a, b) for a, b in zip(p0, params2))


def test_unknown_offload_target():
    with pytest.raises(LoliConfigError, match="offload='cuda' is not supported"):
        LoliClustered(make_params(), offload="cuda")


@pytest.mark.parametrize("inner", ["AdamW", "AdamWClusteredSecondMoment"])
@pytest.mark.parametrize("used", [False, True], ids=["fresh optimizer", "optimizer with state"])
def test_resume_loads_and_parks_bank_by_bank(inner, used, monkeypatch):
    """At most two banks are at home (the active one and the one being loaded) at any time during a
    load with offload='cpu'. On CPU both sides are CPU memory, so a tensor counts as parked when
    BankOffloader.park produced it."""
    from loli_plugin.offload import BankOffloader

    K = 6
    _, saved_opt, _ = run(inner, None, steps=3 * K, clusters=K)
    saved = saved_opt.state_dict()
    params = make_params()
    opt = LoliClustered(params, inner=inner, clusters=K, offload="cpu", lr=1e-2)
    if used:
        for s in range(K):
            set_grads(s, params)
            opt.step()
    banks, counts = list(opt._banks), []
    parked_ids = {
        id(v)
        for k, bank in enumerate(banks)
        if k not in opt._offloader.resident
        for st in bank.values()
        for v in st.values()
    }

    def at_home() -> int:
        return sum(
            any(
                torch.is_tensor(v) and id(v) not in parked_ids and key not in opt._shared_keys
                for st in bank.values()
                for key, v in st.items()
            )
            for bank in {id(b): b for b in banks}.values()
        )

    original_park, original_load = BankOffloader.park, type(opt.inner).load_state_dict

    def park(self, k, bank):
        original_park(self, k, bank)
        parked_ids.update(id(v) for st in bank.values() for v in st.values() if torch.is_tensor(v))
        counts.append(at_home())

    def load(inner_opt, state_dict):
        original_load(inner_opt, state_dict)
        banks.append(inner_opt.state)
        counts.append(at_home())

    monkeypatch.setattr(BankOffloader, "park", park)
    monkeypatch.setattr(type(opt.inner), "load_state_dict", load)
    opt.load_state_dict(saved)
    monkeypatch.undo()
    assert max(counts) <= 2
    assert at_home() == 1  # only the active bank stays
    stepped = [k for k in range(K) if opt.bank_steps[k]]
    assert opt._offloader.resident & set(stepped) == {opt.current_cluster}
