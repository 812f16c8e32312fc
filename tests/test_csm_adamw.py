"""AdamWClusteredSecondMoment: exact AdamW at K=1, the clustered math against an independent reference,
banking of only the per-cluster half inside LoliClustered, resume, offload and bad input; and its
``momentum="normalized"`` variant (bounded steps, not AdamW at K=1)."""

from __future__ import annotations

import io
import math

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError, LoliStateError
from loli_plugin.clustered_second_moment import AdamWClusteredSecondMoment
from loli_plugin.offload import BankOffloader

NAME = "AdamWClusteredSecondMoment"
SHAPES = [(16, 8), (8,), (64, 16), (5,)]


def make_params(dtype=torch.float32, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g, dtype=torch.float64).to(dtype)) for s in shapes]


def set_grads(step, params, skip_last_every=0):
    """Cluster-like scale swings; with ``skip_last_every`` the last parameter gets no gradient on some steps,
    so per-parameter step counts differ (a frozen module, a text encoder that stops training)."""
    g = torch.Generator().manual_seed(1000 + step)
    scale = 10.0 ** torch.empty(()).uniform_(-2, 1, generator=g).item()
    for i, p in enumerate(params):
        grad = scale * ((p.detach().double() - 1.0) + 0.3 * torch.randn(p.shape, generator=g, dtype=torch.float64))
        skip = skip_last_every and i == len(params) - 1 and step % skip_last_every == 1
        p.grad = None if skip else grad.to(p.dtype)


def roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ---------------------------------------------------------------------------------------- K = 1
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("maximize", [False, True])
@pytest.mark.parametrize("host", ["alone", "LoliClustered K=1"])
def test_k1_is_bit_identical_to_torch_adamw(dtype, foreach, maximize, host):
    # eps=1e-8 is 0 in float16 (torch's AdamW divides by zero there too), so float16 runs with a larger eps
    eps = 1e-3 if dtype == torch.float16 else 1e-8
    ref_params, our_params = make_params(dtype), make_params(dtype)

    def groups(params):  # two groups, as kohya's UNet / text encoder split; one without weight decay
        return [{"params": params[:2], "lr": 1e-2}, {"params": params[2:], "lr": 5e-3, "weight_decay": 0.0}]

    kwargs = dict(weight_decay=0.01, eps=eps, foreach=foreach, maximize=maximize)
    ref = torch.optim.AdamW(groups(ref_params), **kwargs)
    if host == "alone":
        ours = AdamWClusteredSecondMoment(groups(our_params), **kwargs)
    else:
        ours = LoliClustered(groups(our_params), inner=NAME, clusters=1, **kwargs)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)) for o in (ref, ours)]
    for step in range(12):
        set_grads(step, ref_params)
        set_grads(step, our_params)
        ref.step()
        ours.step()
        for sched in schedulers:
            sched.step()
    for a, b in zip(ref_params, our_params):
        assert torch.equal(a, b)
    for p_ref, p_ours in zip(ref_params, our_params):
        st_ref, st_ours = ref.state[p_ref], ours.state[p_ours]
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert st_ours[key].dtype == st_ref[key].dtype and torch.equal(st_ours[key], st_ref[key]), key
        assert st_ours["shared_step"].dtype == torch.float32 and st_ours["shared_step"].device.type == "cpu"
        assert torch.equal(st_ours["shared_step"], st_ref["step"])


# ---------------------------------------------------------------------------------------- K clusters
class Reference:
    """The algorithm written out element by element in Python floats, independently of the optimizer's
    tensor ops: one first moment over all steps, one second moment per cluster, each with its own count.
    ``normalized``: momentum="normalized", where each gradient is divided by its own cluster's
    bias-corrected second moment (updated with it first) before it enters the shared momentum."""

    def __init__(self, params, clusters, lr, betas, eps, weight_decay, normalized=False):
        self.normalized = normalized
        self.p = [p.detach().double().flatten().tolist() for p in params]
        self.lr, (self.b1, self.b2), self.eps, self.wd = lr, betas, eps, weight_decay
        self.m = [[0.0] * len(p) for p in self.p]
        self.t = [0] * len(self.p)
        self.v = [[[0.0] * len(p) for p in self.p] for _ in range(clusters)]
        self.tk = [[0] * len(self.p) for _ in range(clusters)]

    def step(self, k, grads):
        for i, grad in enumerate(grads):
            if grad is None:
                continue
            self.t[i] += 1
            self.tk[k][i] += 1
            p, m, v = self.p[i], self.m[i], self.v[k][i]
            for j, gj in enumerate(grad.double().flatten().tolist()):
                p[j] *= 1.0 - self.lr * self.wd
                v[j] = self.b2 * v[j] + (1.0 - self.b2) * gj * gj
                v_hat = v[j] / (1.0 - self.b2 ** self.tk[k][i])
                if self.normalized:
                    m[j] = self.b1 * m[j] + (1.0 - self.b1) * gj / (math.sqrt(v_hat) + self.eps)
                    p[j] -= self.lr * m[j] / (1.0 - self.b1 ** self.t[i])
                else:
                    m[j] = self.b1 * m[j] + (1.0 - self.b1) * gj
                    m_hat = m[j] / (1.0 - self.b1 ** self.t[i])
                    p[j] -= self.lr * m_hat / (math.sqrt(v_hat) + self.eps)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("K, schedule", [(3, "shuffle"), (3, "random"), (1, "shuffle")])
@pytest.mark.parametrize("momentum", ["raw", "normalized"])
def test_k_clusters_follow_the_reference(foreach, K, schedule, momentum):
    lr, betas, eps, wd = 1e-2, (0.9, 0.99), 1e-8, 0.01
    params = make_params(torch.float64, shapes=[(3, 2), (4,), (2,)])
    ref = Reference(params, K, lr, betas, eps, wd, normalized=momentum == "normalized")
    opt = LoliClustered(
        params,
        inner=NAME,
        clusters=K,
        schedule=schedule,
        seed=3,
        lr=lr,
        betas=betas,
        eps=eps,
        weight_decay=wd,
        foreach=foreach,
        momentum=momentum,
    )
    for step in range(15):
        k = opt.current_cluster
        set_grads(step, params, skip_last_every=4)
        ref.step(k, [p.grad for p in params])
        opt.step()
        for p, expected in zip(params, ref.p):
            torch.testing.assert_close(
                p.detach().flatten(), torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-14
            )
    assert sorted(set(opt.bank_steps)) != [0] and len([n for n in opt.bank_steps if n]) == K
    # the counts behind the bias corrections: global per parameter, and per cluster
    for i, p in enumerate(params):
        for k in range(K):
            assert opt.bank(k)[p]["step"].item() == ref.tk[k][i]
        assert opt.bank(0)[p]["shared_step"].item() == ref.t[i]


def test_only_the_second_moment_is_banked_and_state_dtypes_follow_torch():
    params = make_params(torch.bfloat16)
    opt = LoliClustered(params, inner=NAME, clusters=4, schedule="round_robin", lr=1e-2)
    for step in range(4):
        set_grads(step, params)
        opt.step()
    for p in params:
        banks = [opt.bank(k)[p] for k in range(4)]
        assert all(b["exp_avg"] is banks[0]["exp_avg"] and b["shared_step"] is banks[0]["shared_step"] for b in banks)
        assert len({id(b["exp_avg_sq"]) for b in banks}) == 4 and len({id(b["step"]) for b in banks}) == 4
        assert banks[0]["exp_avg"].dtype == banks[0]["exp_avg_sq"].dtype == torch.bfloat16
        assert banks[0]["step"].dtype == banks[0]["shared_step"].dtype == torch.float32
        assert banks[0]["shared_step"].item() == 4 and banks[0]["step"].item() == 1


def unique_state_bytes(opt) -> int:
    tensors = {
        id(v): v
        for k in range(opt.clusters)
        for st in opt.bank(k).values()
        for v in st.values()
        if isinstance(v, torch.Tensor) and v.dim() > 0
    }  # moments only, not the step counts
    return sum(v.numel() * v.element_size() for v in tensors.values())


@pytest.mark.parametrize("K", [1, 4, 10])
@pytest.mark.parametrize("momentum", ["raw", "normalized"])
def test_state_memory_is_one_plus_k_over_2k_of_full_banks(K, momentum):
    full_params, our_params = make_params(), make_params()
    full = LoliClustered(full_params, inner="AdamW", clusters=K, schedule="round_robin", lr=1e-2)
    ours = LoliClustered(our_params, inner=NAME, clusters=K, schedule="round_robin", lr=1e-2, momentum=momentum)
    for step in range(K):
        set_grads(step, full_params)
        set_grads(step, our_params)
        full.step()
        ours.step()
    assert unique_state_bytes(ours) * 2 * K == unique_state_bytes(full) * (1 + K)


def test_beta_horizon_rescales_only_the_per_cluster_beta():
    opt = LoliClustered(make_params(), inner=NAME, clusters=10, beta_horizon=True, betas=(0.9, 0.999), lr=1e-2)
    b1, b2 = opt.param_groups[0]["betas"]
    assert b1 == 0.9 and b2 == pytest.approx(0.99)


def test_warm_start_copies_the_per_cluster_part_and_keeps_the_shared_part_shared():
    params = make_params()
    opt = LoliClustered(params, inner=NAME, clusters=3, schedule="round_robin", warm_start=True, lr=1e-2)
    set_grads(0, params)
    opt.step()
    set_grads(1, params)
    opt.step()  # bank 1 starts from bank 0's second moment
    for p in params:
        assert opt.bank(1)[p]["step"].item() == 2.0 and opt.bank(0)[p]["step"].item() == 1.0
        assert opt.bank(1)[p]["exp_avg"] is opt.bank(0)[p]["exp_avg"]
        assert opt.bank(1)[p]["shared_step"].item() == 2.0


# ---------------------------------------------------------------------------------------- persistence
def test_state_dict_saves_the_shared_part_once_and_resumes_exactly():
    K, steps = 4, 16
    straight_params, resumed_params = make_params(), make_params()
    straight = LoliClustered(straight_params, inner=NAME, clusters=K, lr=1e-2)
    for step in range(2 * steps):
        set_grads(step, straight_params, skip_last_every=5)
        straight.step()
    first = LoliClustered(resumed_params, inner=NAME, clusters=K, lr=1e-2)
    for step in range(steps):
        set_grads(step, resumed_params, skip_last_every=5)
        first.step()
    saved = roundtrip(first.state_dict())
    assert saved["loli"]["format"] == 2
    for entry in saved["state"].values():
        assert set(entry["shared"]) == {"exp_avg", "shared_step"}
        assert all(set(entry[k]) == {"step", "exp_avg_sq"} for k in entry if k != "shared")
    second = LoliClustered(resumed_params, inner=NAME, clusters=K, lr=1e-2)
    second.load_state_dict(saved)
    for step in range(steps, 2 * steps):
        set_grads(step, resumed_params, skip_last_every=5)
        second.step()
    assert all(torch.equal(a, b) for a, b in zip(straight_params, resumed_params))
    for p in resumed_params:  # loaded once, and every bank that stepped since refers to it
        shared = second._shared[p]["exp_avg"]
        assert all(second.bank(k)[p]["exp_avg"] is shared for k in range(K) if p in second.bank(k))
    assert second.bank_steps == straight.bank_steps


def test_global_step_count_stays_float32_for_bf16_parameters():
    # torch casts every saved state tensor except "step" to the parameter's dtype; bf16 cannot hold 257
    params = make_params(torch.bfloat16)
    opt = AdamWClusteredSecondMoment(params, lr=1e-2)
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    for entry in sd["state"].values():
        entry["shared_step"] = torch.tensor(257.0)
    again = AdamWClusteredSecondMoment(make_params(torch.bfloat16), lr=1e-2)
    again.load_state_dict(roundtrip(sd))
    for st in again.state.values():
        assert st["shared_step"].dtype == torch.float32 and st["shared_step"].item() == 257.0
        assert st["exp_avg"].dtype == torch.bfloat16


@pytest.mark.parametrize("momentum", ["raw", "normalized"])
def test_offload_parks_only_the_per_cluster_part_and_is_bit_identical(monkeypatch, momentum):
    moved = set()
    original_park = BankOffloader.park

    def park(self, k, bank):
        moved.update(key for _, _, key, _ in self._tensors(bank))
        return original_park(self, k, bank)

    monkeypatch.setattr(BankOffloader, "park", park)
    runs = {}
    for offload in (None, "cpu"):
        params = make_params()
        opt = LoliClustered(params, inner=NAME, clusters=4, offload=offload, lr=1e-2, momentum=momentum)
        resident = []
        for step in range(20):
            set_grads(step, params)
            opt.step()
            if offload:
                resident.append(len(opt._offloader.resident & {k for k in range(4) if opt.bank_steps[k]}))
        runs[offload] = (params, opt, resident)
    (p0, o0, _), (p1, o1, resident) = runs[None], runs["cpu"]
    assert all(torch.equal(a, b) for a, b in zip(p0, p1))
    assert moved == {"step", "exp_avg_sq"}
    assert max(resident) <= 2
    for p in p1:  # parked banks still refer to the one shared first moment, which never moved
        assert all(o1.bank(k)[p]["exp_avg"] is o1._shared[p]["exp_avg"] for k in range(4))
    a, b = o0.state_dict(), roundtrip(o1.state_dict())
    for idx in a["state"]:
        for k, entry in a["state"][idx].items():
            assert all(torch.equal(v, b["state"][idx][k][key]) for key, v in entry.items())


# ---------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(amsgrad=True), "amsgrad"),
        (dict(fused=True), "fused"),
        (dict(capturable=True), "capturable"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(betas=(0.9,)), "betas"),
        (dict(lr=-1.0), "lr"),
        (dict(lr=torch.tensor(1e-3)), "lr"),
        (dict(eps=-1e-8), "eps"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(momentum=0.9), "momentum must be 'raw'"),
        (dict(momentum="nesterov"), "momentum must be 'raw'"),
    ],
)
def test_bad_options_name_the_option(kwargs, message):
    with pytest.raises(LoliConfigError, match=message):
        LoliClustered(make_params(), inner=NAME, clusters=2, **kwargs)


def test_name_resolves_case_insensitively_and_refuses_sparse_or_complex():
    opt = LoliClustered(make_params(), inner=NAME.lower(), clusters=2)
    assert isinstance(opt.inner, AdamWClusteredSecondMoment) and opt.inner_name == NAME.lower()
    z = torch.nn.Parameter(torch.randn(3, dtype=torch.complex64))
    z.grad = torch.randn(3, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="dense real"):
        AdamWClusteredSecondMoment([z]).step()


def test_shared_state_in_a_file_for_an_inner_without_it_is_refused():
    params = make_params()
    opt = LoliClustered(params, inner=NAME, clusters=2, lr=1e-2)
    set_grads(0, params)
    opt.step()
    sd = opt.state_dict()
    sd["loli"]["inner"] = "AdamW"
    other = LoliClustered(make_params(), inner="AdamW", clusters=2, lr=1e-2)
    with pytest.raises(LoliStateError, match="shared across clusters"):
        other.load_state_dict(sd)


# ---------------------------------------------------------------------------------------- momentum="normalized"
# (its math against the reference: test_k_clusters_follow_the_reference)
def test_normalized_at_k1_takes_adamws_first_step_and_then_differs_from_adamw():
    """Documented: at K=1 the normalized momentum is NOT AdamW. Its first step is AdamW's (g / (|g| + eps)
    both ways); afterwards each past gradient keeps the second moment of its own step instead of today's."""
    adamw_params, ours_params = make_params(torch.float64), make_params(torch.float64)
    adamw = torch.optim.AdamW(adamw_params, lr=1e-2, weight_decay=0.0)
    ours = AdamWClusteredSecondMoment(ours_params, lr=1e-2, weight_decay=0.0, momentum="normalized")
    start = [p.detach().clone() for p in adamw_params]
    for step in range(10):
        set_grads(step, adamw_params)
        set_grads(step, ours_params)
        adamw.step()
        ours.step()
        moved = [
            torch.cat([(p - s).flatten() for p, s in zip(params, start)]) for params in (adamw_params, ours_params)
        ]
        if step == 0:
            torch.testing.assert_close(moved[1], moved[0], rtol=1e-12, atol=0)
    # the gradients' scale swings by up to 1000x between steps (set_grads), so the two drift far apart
    assert (moved[1] - moved[0]).norm() > 0.1 * moved[0].norm()


def step_sizes_on_the_small_gradient_clusters_turns(momentum, ratio, steps=200, lr=1e-3):
    """Mean |step| / lr over the second half, on the turns of the cluster whose gradients are ``ratio``
    times smaller (two clusters taking turns, a consistent direction plus noise)."""
    p = torch.nn.Parameter(torch.zeros(512, dtype=torch.float64))
    opt = LoliClustered([p], inner=NAME, clusters=2, schedule="round_robin", lr=lr, weight_decay=0.0, momentum=momentum)
    g = torch.Generator().manual_seed(1)
    small = []
    for step in range(steps):
        scale = 1.0 if step % 2 == 0 else 1.0 / ratio
        p.grad = scale * (1.0 + torch.randn(512, generator=g, dtype=torch.float64))
        before = p.detach().clone()
        opt.step()
        if step % 2 == 1 and step >= steps // 2:
            small.append(((p.detach() - before).abs() / lr).mean().item())
    return sum(small) / len(small)


def test_normalized_step_does_not_grow_with_the_clusters_scale_ratio():
    raw = {ratio: step_sizes_on_the_small_gradient_clusters_turns("raw", ratio) for ratio in (1, 100)}
    normalized = {ratio: step_sizes_on_the_small_gradient_clusters_turns("normalized", ratio) for ratio in (1, 100)}
    assert raw[100] > 10 * raw[1]  # the failure the normalized variant exists for
    assert normalized[100] < 1.5 * normalized[1] and normalized[100] < 1.5


def test_normalized_state_dict_resumes_exactly():
    K, steps = 3, 12
    kwargs = dict(inner=NAME, clusters=K, lr=1e-2, momentum="normalized")
    straight_params, resumed_params = make_params(), make_params()
    straight = LoliClustered(straight_params, **kwargs)
    for step in range(2 * steps):
        set_grads(step, straight_params, skip_last_every=5)
        straight.step()
    first = LoliClustered(resumed_params, **kwargs)
    for step in range(steps):
        set_grads(step, resumed_params, skip_last_every=5)
        first.step()
    saved = roundtrip(first.state_dict())
    assert all(g["momentum"] == "normalized" for g in saved["param_groups"])
    second = LoliClustered(resumed_params, **kwargs)
    second.load_state_dict(saved)
    for step in range(steps, 2 * steps):
        set_grads(step, resumed_params, skip_last_every=5)
        second.step()
    assert all(torch.equal(a, b) for a, b in zip(straight_params, resumed_params))


@pytest.mark.parametrize("saved_kind, resumed_kind", [("raw", "normalized"), ("normalized", "raw")])
def test_resuming_with_the_other_momentum_is_refused_and_leaves_the_optimizer_untouched(saved_kind, resumed_kind):
    params = make_params()
    opt = LoliClustered(params, inner=NAME, clusters=2, lr=1e-2, momentum=saved_kind)
    set_grads(0, params)
    opt.step()
    other_params = make_params()
    other = LoliClustered(other_params, inner=NAME, clusters=2, lr=1e-2, momentum=resumed_kind)
    with pytest.raises(LoliStateError, match=f"made with momentum='{saved_kind}'.*set momentum='{saved_kind}'"):
        other.load_state_dict(roundtrip(opt.state_dict()))
    assert other.param_groups[0]["momentum"] == resumed_kind and not any(other.bank(k) for k in range(2))


def test_a_state_saved_before_the_momentum_option_resumes_as_raw():
    params = make_params()
    opt = AdamWClusteredSecondMoment(params, lr=1e-2)
    set_grads(0, params)
    opt.step()
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["momentum"]  # what releases before the option saved
    raw = AdamWClusteredSecondMoment(make_params(), lr=1e-2)
    raw.load_state_dict(roundtrip(old))
    assert raw.param_groups[0]["momentum"] == "raw"
    with pytest.raises(LoliStateError, match="momentum='raw'"):
        AdamWClusteredSecondMoment(make_params(), lr=1e-2, momentum="normalized").load_state_dict(roundtrip(old))
