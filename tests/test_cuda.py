"""What only a CUDA GPU can show (marker ``cuda``; skipped with the reason where there is none):
offload's side-stream copies, peak device memory during a resume, where fused/capturable AdamW keep
their state after a resume, bitsandbytes' 8-bit inner and AdamWClusteredSecondMoment's exactness on
CUDA kernels."""

from __future__ import annotations

import io

import pytest
import torch

from loli_plugin import LoliClustered

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False here)"
    ),
]

CUDA = torch.device("cuda")


def make_params(seed=0, dtype=torch.float32, shapes=((256, 64), (64,), (512, 128), (128,))):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(CUDA, dtype)) for s in shapes]


def set_grads(step, params):
    g = torch.Generator().manual_seed(1000 + step)
    scale = 10.0 ** torch.empty(()).uniform_(-2, 1, generator=g).item()
    for p in params:
        p.grad = (scale * torch.randn(p.shape, generator=g)).to(CUDA, p.dtype)


def roundtrip_to_cpu(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf, map_location="cpu", weights_only=True)


def train(opt, params, steps, start=0, work=None):
    for s in range(start, start + steps):
        if work is not None:  # a real kernel queue between steps, for the prefetch to overlap with
            work()
        set_grads(s, params)
        opt.step()
        opt.zero_grad()


def test_offload_side_stream_copies_are_bit_identical_and_keep_two_banks_home():
    a = torch.randn(2048, 2048, device=CUDA)
    work = lambda: a @ a  # noqa: E731
    p0, p1 = make_params(), make_params()
    o0 = LoliClustered(p0, inner="AdamW", clusters=4, lr=1e-2, foreach=True)
    o1 = LoliClustered(p1, inner="AdamW", clusters=4, offload="cpu", lr=1e-2, foreach=True)
    resident = []
    for s in range(24):
        work()
        for params, opt in ((p0, o0), (p1, o1)):
            set_grads(s, params)
            opt.step()
            opt.zero_grad()
        resident.append(len(o1._offloader.resident & {k for k in range(4) if o1.bank_steps[k]}))
    torch.cuda.synchronize()
    assert all(torch.equal(x, y) for x, y in zip(p0, p1))
    assert max(resident) <= 2
    for k in range(4):  # banks at home are on the GPU, parked ones in pinned CPU memory
        tensors = [v for st in o1.bank(k).values() for v in st.values() if torch.is_tensor(v) and v.numel() > 1]
        if k in o1._offloader.resident:
            assert all(v.is_cuda for v in tensors)
        else:
            assert all(v.device.type == "cpu" and v.is_pinned() for v in tensors)


@pytest.mark.parametrize("inner", ["AdamW", "AdamWClusteredSecondMoment"])
def test_resume_with_offload_peaks_at_two_banks(inner):
    K = 6
    params = make_params(shapes=((2048, 1024),))  # 8 MiB per moment: the banks dominate the peak
    opt = LoliClustered(params, inner=inner, clusters=K, offload="cpu", lr=1e-3, foreach=True)
    train(opt, params, 2 * K)
    bank = sum(
        v.numel() * v.element_size()
        for st in opt.bank(0).values()
        for key, v in st.items()
        if torch.is_tensor(v) and key not in opt._shared_keys
    )
    saved = roundtrip_to_cpu(opt.state_dict())
    del opt
    peaks = {}
    for offload in (None, "cpu"):
        resumed = LoliClustered(params, inner=inner, clusters=K, offload=offload, lr=1e-3, foreach=True)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        resumed.load_state_dict(saved)
        torch.cuda.synchronize()
        peaks[offload] = torch.cuda.max_memory_allocated() - base
        del resumed
    shared = 4 * params[0].numel() if inner == "AdamWClusteredSecondMoment" else 0  # the shared first moment stays home
    assert peaks["cpu"] <= 2 * bank + shared + 2**20
    assert peaks[None] >= (K - 1) * bank  # the measurement sees banks: without offload all K come home


@pytest.mark.parametrize("kwargs", [dict(fused=True), dict(capturable=True, foreach=True), dict(foreach=True)], ids=str)
@pytest.mark.parametrize("offload", [None, "cpu"])
def test_fused_and_capturable_adamw_state_placement_after_resume(kwargs, offload):
    K = 3
    straight_params, resumed_params = make_params(), make_params()
    straight = LoliClustered(straight_params, inner="AdamW", clusters=K, offload=offload, lr=1e-2, **kwargs)
    train(straight, straight_params, 12)
    first = LoliClustered(resumed_params, inner="AdamW", clusters=K, offload=offload, lr=1e-2, **kwargs)
    train(first, resumed_params, 6)
    saved = roundtrip_to_cpu(first.state_dict())  # on CPU, as accelerate loads it
    del first
    second = LoliClustered(resumed_params, inner="AdamW", clusters=K, offload=offload, lr=1e-2, **kwargs)
    second.load_state_dict(saved)
    # torch's policy: fused/capturable keep 'step' as a float32 tensor on the parameter's device, the
    # for-loop/foreach path keeps it on the CPU; the moments are on the parameter's device
    on_device = bool(kwargs.get("fused") or kwargs.get("capturable"))
    for k in range(K):
        second._position(k)
        for st in second.bank(k).values():
            assert st["step"].dtype == torch.float32 and st["step"].is_cuda == on_device
            assert st["exp_avg"].is_cuda and st["exp_avg_sq"].is_cuda
    second._position(second.schedule.current)
    train(second, resumed_params, 6, start=6)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(straight_params, resumed_params))


def test_adamw8bit_inner_on_cuda():
    bnb = pytest.importorskip("bitsandbytes")
    ref_params, one_params = make_params(), make_params()
    ref = bnb.optim.AdamW8bit(ref_params, lr=1e-2)
    one = LoliClustered(one_params, inner="AdamW8bit", clusters=1, lr=1e-2)
    train(ref, ref_params, 10)
    train(one, one_params, 10)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(ref_params, one_params))
    assert one.bank(0)[one_params[2]]["state1"].dtype == torch.uint8  # the 8-bit path ran, not the 32-bit fallback

    # K banks: resume (state loaded from CPU) and offload give the uninterrupted run's parameters
    straight_params, resumed_params = make_params(), make_params()
    straight = LoliClustered(straight_params, inner="AdamW8bit", clusters=3, lr=1e-2)
    train(straight, straight_params, 12)
    first = LoliClustered(resumed_params, inner="AdamW8bit", clusters=3, offload="cpu", lr=1e-2)
    train(first, resumed_params, 6)
    saved = roundtrip_to_cpu(first.state_dict())
    second = LoliClustered(resumed_params, inner="AdamW8bit", clusters=3, offload="cpu", lr=1e-2)
    second.load_state_dict(saved)
    train(second, resumed_params, 6, start=6)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(straight_params, resumed_params))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("foreach", [False, True])
def test_clustered_second_moment_k1_is_torch_adamw_on_cuda(dtype, foreach):
    from loli_plugin.clustered_second_moment import AdamWClusteredSecondMoment

    ref_params, our_params = make_params(dtype=dtype), make_params(dtype=dtype)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, foreach=foreach)
    ours = AdamWClusteredSecondMoment(our_params, lr=1e-2, foreach=foreach)
    train(ref, ref_params, 12)
    train(ours, our_params, 12)
    torch.cuda.synchronize()
    assert all(torch.equal(a, b) for a, b in zip(ref_params, our_params))
