"""Property-based fuzzing (hypothesis). CI runs about 10k cases; set LOLI_FUZZ_SCALE=10 (or more) for a
longer profile on demand."""

from __future__ import annotations

import io
import math
import os

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loli_plugin import LoliClustered
from loli_plugin.sampling import (
    MODE_SCALE_MAX,
    Discrete,
    DiscreteUniform,
    Discretized,
    LogitNormal,
    ModeScale,
    Shift,
    TimeShift,
    Uniform,
)

SCALE = float(os.environ.get("LOLI_FUZZ_SCALE", "1"))
SAMPLER_CASES = int(9000 * SCALE)
STATE_CASES = int(1200 * SCALE)

finite = dict(allow_nan=False, allow_infinity=False)


@st.composite
def distributions(draw):
    kind = draw(
        st.sampled_from(
            ["uniform", "logit_normal", "shift", "time_shift", "mode", "discrete_uniform", "discretized", "pmf"]
        )
    )
    if kind == "uniform":
        low = draw(st.floats(0.0, 0.9, **finite))
        return Uniform(low, draw(st.floats(low + 1e-3, 1.0, **finite)))
    if kind == "logit_normal":
        return LogitNormal(draw(st.floats(-3, 3, **finite)), draw(st.floats(0.05, 4, **finite)))
    if kind == "shift":
        return Shift(LogitNormal(0.0, draw(st.floats(0.3, 3, **finite))), draw(st.floats(0.1, 10, **finite)))
    if kind == "time_shift":
        return TimeShift(Uniform(), draw(st.floats(-2, 3, **finite)), draw(st.floats(0.3, 2, **finite)))
    if kind == "mode":
        return ModeScale(draw(st.floats(-1.0, MODE_SCALE_MAX, **finite)))
    if kind == "discrete_uniform":
        low = draw(st.integers(0, 900))
        return DiscreteUniform(low, draw(st.integers(low + 1, 1000)))
    if kind == "discretized":
        return Discretized(LogitNormal(draw(st.floats(-1, 1, **finite)), 1.0), draw(st.integers(1, 1000)))
    weights = draw(st.lists(st.floats(0, 10, **finite), min_size=1, max_size=40))
    if sum(weights) <= 0:
        weights[0] = 1.0
    return Discrete(weights)


@settings(max_examples=SAMPLER_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(dist=distributions(), clusters=st.integers(1, 50), batch=st.integers(1, 64), data=st.data())
def test_sampler_membership_nonempty_bins_and_monotone(dist, clusters, batch, data):
    if dist.admissible is not None:
        clusters = min(clusters, dist.admissible)
    k = data.draw(st.integers(0, clusters - 1))
    g = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1)))
    t = dist.sample_cluster(batch, k, clusters, generator=g, dtype=torch.float64)
    lo, hi = dist.cluster_range(k, clusters)
    assert t.numel() == batch and torch.isfinite(t).all()  # non-empty bin: every draw lands somewhere valid
    assert (t >= lo).all() and (t <= hi).all(), (k, clusters, lo, hi, t.min(), t.max())
    if k + 1 < clusters:  # monotone: the next cluster starts where this one ends (or later)
        assert dist.cluster_range(k + 1, clusters)[0] >= lo


INNERS = {
    "SGD": dict(momentum=0.9),
    "AdamW": {},
    "Adam": dict(amsgrad=True),
    "RMSprop": dict(momentum=0.5),
    "Adagrad": {},
}


@settings(max_examples=STATE_CASES, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    clusters=st.integers(1, 6),
    inner=st.sampled_from(sorted(INNERS)),
    shapes=st.lists(st.lists(st.integers(1, 5), min_size=1, max_size=2), min_size=1, max_size=4),
    groups=st.integers(1, 3),
    steps=st.integers(0, 8),
    schedule=st.sampled_from(["shuffle", "random", "round_robin"]),
)
def test_state_dict_round_trip_continues_identically(clusters, inner, shapes, groups, steps, schedule):
    def build():
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(*s)) for s in shapes]
        param_groups = [{"params": params[i::groups], "lr": 0.01 * (i + 1)} for i in range(groups) if params[i::groups]]
        return params, LoliClustered(param_groups, inner=inner, clusters=clusters, schedule=schedule, **INNERS[inner])

    def run(params, opt, start, n):
        for s in range(start, start + n):
            for p in params:
                p.grad = torch.cos(p.detach() * (s + 1)) + 0.1
            opt.step()

    pa, a = build()
    run(pa, a, 0, steps + 2)
    pb, b = build()
    run(pb, b, 0, steps)
    buf = io.BytesIO()
    torch.save(b.state_dict(), buf)
    buf.seek(0)
    pc, c = build()
    for p, q in zip(pc, pb):
        p.data.copy_(q.data)
    c.load_state_dict(torch.load(buf, weights_only=True))
    assert c.bank_steps == b.bank_steps and c.current_cluster == b.current_cluster
    run(pc, c, steps, 2)
    assert all(torch.equal(x, y) for x, y in zip(pa, pc))
    assert math.isclose(sum(a.bank_steps), steps + 2)
