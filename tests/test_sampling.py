"""Cluster sampling: each draw lies in its cluster's quantile range, and drawing every cluster
equally often reproduces the trainer's plain sampler (KS / chi-square on 100k draws, fixed seeds)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from loli_plugin import LoliConfigError
from loli_plugin.sampling import (
    MODE_SCALE_MAX,
    CosMap,
    Discrete,
    DiscreteUniform,
    Discretized,
    LogitNormal,
    ModeScale,
    Shift,
    TimeShift,
    Uniform,
    cluster_bounds,
    cluster_uniform,
)

# One entry per family the trainers use, with non-default parameters where they matter.
FAMILIES = {
    "uniform": Uniform(),
    "uniform_min_max": Uniform(0.2, 0.9),
    "logit_normal": LogitNormal(),
    "sigmoid_scale": LogitNormal(0.0, 2.5),
    "logit_normal_biased": LogitNormal(-0.5, 0.8),
    "sd3_shift": Shift(LogitNormal(), 3.0),
    "shift_below_one": Shift(Uniform(), 0.5),
    "flux_time_shift": TimeShift(LogitNormal(), mu=1.15),
    "mode": ModeScale(1.29),
    "mode_negative": ModeScale(-0.8),
    "cosmap": CosMap(),
    "discrete_uniform": DiscreteUniform(0, 1000),
    "discrete_min_max": DiscreteUniform(200, 800),
    "discretized_logit_normal": Discretized(LogitNormal(), 1000),
    "discrete_pmf": Discrete(torch.linspace(2.0, 0.1, 1000) ** 2),
}

K = 10
N = 100_000


def clustered_draws(dist, n=N, clusters=K, seed=1):
    # The shuffle schedule visits every cluster once per K steps, so over whole cycles each cluster
    # holds exactly n/K of the draws; drawing them cluster by cluster is the same multiset.
    g = torch.Generator().manual_seed(seed)
    return torch.cat(
        [dist.sample_cluster(n // clusters, k, clusters, generator=g, dtype=torch.float64) for k in range(clusters)]
    )


@pytest.mark.parametrize("name", FAMILIES)
def test_draws_lie_in_their_cluster_range(name):
    dist = FAMILIES[name]
    g = torch.Generator().manual_seed(0)
    previous_hi = -math.inf
    for k in range(K):
        lo, hi = dist.cluster_range(k, K)
        assert lo <= hi and lo >= previous_hi - (1 if dist.discrete else 0)  # ranges move up with k
        previous_hi = hi
        t = dist.sample_cluster(2000, k, K, generator=g, dtype=torch.float64)
        assert t.min().item() >= lo and t.max().item() <= hi, (k, lo, hi, t.min(), t.max())


@pytest.mark.parametrize("name", FAMILIES)
def test_overall_distribution_matches_plain_sampler_ks(name):
    dist = FAMILIES[name]
    clustered = clustered_draws(dist).numpy()
    plain = dist.sample(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64).numpy()
    # Two-sample KS against the trainer-style sampler; it is conservative for discrete data (ties),
    # which the chi-square test below covers exactly.
    p = stats.ks_2samp(clustered, plain).pvalue
    assert p > 1e-3, f"{name}: clustered draws differ from the plain sampler (KS p={p:.2e})"


@pytest.mark.parametrize("name", [n for n, d in FAMILIES.items() if d.discrete])
def test_discrete_families_match_their_pmf_chi_square(name):
    dist = FAMILIES[name]
    clustered = clustered_draws(dist)
    plain = dist.sample(N, generator=torch.Generator().manual_seed(2))
    # Compare counts in 20 coarse bins (so every expected count is large) with a 2-sample chi-square.
    edges = torch.quantile(plain.double(), torch.linspace(0, 1, 21, dtype=torch.float64)).unique()
    a = torch.bucketize(clustered.double(), edges[1:-1], right=True).bincount(minlength=edges.numel() - 1)
    b = torch.bucketize(plain.double(), edges[1:-1], right=True).bincount(minlength=edges.numel() - 1)
    p = stats.chi2_contingency(torch.stack([a, b]).numpy())[1]
    assert p > 1e-3, f"{name}: chi-square p={p:.2e}"


@pytest.mark.parametrize("name", ["logit_normal", "sd3_shift", "mode", "discrete_pmf"])
def test_the_statistical_test_has_power(name):
    """Negative controls: the same tests reject a sampler that is subtly wrong."""
    dist = FAMILIES[name]
    plain = dist.sample(N, generator=torch.Generator().manual_seed(2), dtype=torch.float64).numpy()
    g = torch.Generator().manual_seed(1)
    # 1. one cluster short: 9 of 10 clusters drawn, the top tenth of the distribution missing
    missing = torch.cat(
        [dist.sample_cluster(N // K, k, K, generator=g, dtype=torch.float64) for k in range(K - 1)]
    ).numpy()
    assert stats.ks_2samp(missing, plain).pvalue < 1e-6
    # 2. equal-width bins in t instead of equal-probability bins
    if not dist.discrete:
        width = torch.cat([(k + torch.rand(N // K, generator=g, dtype=torch.float64)) / K for k in range(K)]).numpy()
        assert stats.ks_2samp(width, plain).pvalue < 1e-6


def test_cluster_bounds_and_uniforms():
    assert cluster_bounds(3, 10) == (0.3, 0.4)
    assert cluster_bounds(0, 1) == (0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    u = cluster_uniform(8, 3, 10, generator=g)
    assert u.shape == (8,) and u.dtype == torch.float64
    assert ((u >= 0.3) & (u < 0.4)).all()
    # the same generator state gives the same draws (every rank seeds alike)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(cluster_uniform(16, 2, 4, generator=g1), cluster_uniform(16, 2, 4, generator=g2))


def test_float32_rounding_never_reaches_the_next_cluster(monkeypatch):
    # (k + U)/K with U = 1 - 2**-53 rounds to (k+1)/K in float32; the clamp must keep it below.
    real_rand = torch.rand
    monkeypatch.setattr(torch, "rand", lambda n, **kw: torch.full((n,), 1 - 2**-53, dtype=kw.get("dtype")))
    for k, clusters in [(9, 10), (2, 3), (0, 7)]:
        u = cluster_uniform(4, k, clusters, dtype=torch.float32)
        assert u.dtype == torch.float32
        assert (u < torch.tensor((k + 1) / clusters, dtype=torch.float32)).all()
        assert (u >= torch.tensor(k / clusters, dtype=torch.float32)).all()
    monkeypatch.setattr(torch, "rand", real_rand)
    # the last cluster of a logit-normal never returns t = 1 (ndtri(1) = inf)
    t = LogitNormal().sample_cluster(10_000, 9, 10, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(t).all() and (t < 1).all()


def test_output_dtypes_follow_the_host():
    g = torch.Generator().manual_seed(0)
    assert LogitNormal().sample_cluster(4, 0, 10, generator=g).dtype == torch.get_default_dtype()
    assert LogitNormal().sample(4, generator=g).dtype == torch.get_default_dtype()
    assert DiscreteUniform().sample_cluster(4, 0, 10, generator=g).dtype == torch.long
    assert Discretized(CosMap()).sample(4, generator=g).dtype == torch.long
    assert Uniform().sample_cluster(4, 0, 10, generator=g, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_decreasing_map_keeps_largest_timesteps_in_the_last_cluster():
    d = ModeScale(1.29)
    los = [d.cluster_range(k, 5)[0] for k in range(5)]
    assert los == sorted(los) and los[0] == pytest.approx(0.0, abs=1e-12)
    assert d.cluster_range(4, 5)[1] == pytest.approx(1.0)


def test_integer_timesteps_bins_are_non_empty_and_k_is_bounded():
    d = DiscreteUniform(100, 110)  # 10 admissible timesteps
    g = torch.Generator().manual_seed(0)
    # K equal to the number of timesteps: each cluster owns exactly one timestep
    for k in range(10):
        assert d.sample_cluster(50, k, 10, generator=g).unique().tolist() == [100 + k]
    # K below it: every cluster reaches at least one timestep and together they cover all
    reached = [set(d.sample_cluster(500, k, 4, generator=g).tolist()) for k in range(4)]
    assert all(reached) and set().union(*reached) == set(range(100, 110))
    with pytest.raises(LoliConfigError, match=r"clusters=11 is larger than the 10 distinct timesteps"):
        d.sample_cluster(1, 0, 11)
    # zero-weight timesteps do not count as admissible and are never drawn
    pmf = Discrete([0, 1, 0, 1, 1], values=[10, 20, 30, 40, 50])
    assert pmf.admissible == 3
    assert set(pmf.sample_cluster(1000, 0, 3, generator=g).tolist()) == {20}
    assert set(torch.cat([pmf.sample_cluster(300, k, 3, generator=g) for k in range(3)]).tolist()) == {20, 40, 50}
    with pytest.raises(LoliConfigError, match="clusters=4"):
        pmf.sample_cluster(1, 0, 4)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: Uniform(0.5, 0.5), "low < high"),
        (lambda: LogitNormal(0, 0), "std must be > 0"),
        (lambda: LogitNormal(float("nan"), 1), "mean must be a finite number"),
        (lambda: Shift(Uniform(), -1.0), "shift must be > 0"),
        (lambda: ModeScale(2.0), "mode_scale=2.0 makes the mode map non-monotone"),
        (lambda: ModeScale(-1.5), "non-monotone"),
        (lambda: Discrete([1, -1]), ">= 0"),
        (lambda: Discrete([0, 0]), "not all zero"),
        (lambda: Discrete([1, 1], values=[3, 2]), "strictly increasing"),
        (lambda: DiscreteUniform(5, 5), "low < high"),
        (lambda: Discretized(DiscreteUniform(), 10), "continuous base"),
        (lambda: cluster_bounds(10, 10), r"outside \[0, 10\)"),
        (lambda: cluster_bounds(0, 0), "clusters must be >= 1"),
        (lambda: cluster_uniform(3, 1.5, 10), "cluster index must be an integer"),
    ],
)
def test_bad_parameters_raise_clear_errors(make, match):
    with pytest.raises(LoliConfigError, match=match):
        make()


def test_mode_scale_edges_are_accepted():
    for s in (-1.0, 0.0, MODE_SCALE_MAX):
        d = ModeScale(s)
        u = torch.linspace(0, 1, 10_001, dtype=torch.float64)
        assert (d.quantile(u).diff() >= -1e-15).all()


@settings(max_examples=60, deadline=None)
@given(
    clusters=st.integers(1, 64),
    data=st.data(),
    name=st.sampled_from(sorted(FAMILIES)),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_membership_and_monotone_quantile(clusters, data, name, seed):
    dist = FAMILIES[name]
    if dist.admissible is not None:
        clusters = min(clusters, dist.admissible)
    k = data.draw(st.integers(0, clusters - 1))
    lo, hi = dist.cluster_range(k, clusters)
    t = dist.sample_cluster(64, k, clusters, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    assert ((t >= lo) & (t <= hi)).all()
    q = dist.quantile(
        torch.sort(torch.rand(256, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)).values
    )
    assert (q.diff() >= 0).all()
