"""``ClusterLossNormalizer``: each cluster's loss divided by its own bias-corrected running mean."""

from __future__ import annotations

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.weighting import ClusterLossNormalizer


def reference_mean(values: list[float], decay: float) -> float:
    """The bias-corrected EMA written out: sum_i (1 - d) d^(n-1-i) x_i / (1 - d^n)."""
    n = len(values)
    return sum((1 - decay) * decay ** (n - 1 - i) * x for i, x in enumerate(values)) / (1 - decay**n)


def test_a_clusters_first_loss_is_divided_by_itself():
    norm = ClusterLossNormalizer(3)
    out = norm(torch.tensor(0.37), 1)
    assert out.item() == pytest.approx(1.0, rel=1e-12)
    assert norm.count == [0, 1, 0]


def test_running_mean_is_the_bias_corrected_ema_of_each_clusters_own_losses():
    norm = ClusterLossNormalizer(2, decay=0.8)
    seen = {0: [], 1: []}
    g = torch.Generator().manual_seed(0)
    for step in range(25):
        k = step % 3 % 2
        value = float(torch.rand((), generator=g)) * (10.0 if k else 0.1)
        seen[k].append(value)
        out = norm(torch.tensor(value, dtype=torch.float64), k)
        assert out.item() == pytest.approx(value / reference_mean(seen[k], 0.8), rel=1e-12)
    assert norm.mean(0) == pytest.approx(reference_mean(seen[0], 0.8), rel=1e-12)


def test_scaling_one_clusters_loss_leaves_its_normalised_loss_unchanged():
    a, b = ClusterLossNormalizer(2), ClusterLossNormalizer(2)
    for value in (0.5, 0.2, 0.9, 0.4):
        x = torch.tensor(value, dtype=torch.float64)
        assert a(x, 0).item() == pytest.approx(b(100.0 * x, 0).item(), rel=1e-12)


def test_the_weight_is_a_constant_in_the_backward_pass():
    norm = ClusterLossNormalizer(1)
    norm(torch.tensor(2.0), 0)  # running mean 2.0 after the first loss
    w = torch.tensor(3.0, requires_grad=True)
    loss = w * w  # 9; running mean becomes (0.1 * 2 * 0.9 + 0.1 * 9) / (1 - 0.81)
    out = norm(loss, 0)
    out.backward()
    m = (0.9 * 0.1 * 2.0 + 0.1 * 9.0) / (1 - 0.9**2)
    assert out.item() == pytest.approx(9.0 / m) and w.grad.item() == pytest.approx(6.0 / m)


def test_state_round_trips_and_refuses_another_cluster_count():
    norm = ClusterLossNormalizer(4, decay=0.5)
    for k, v in ((0, 1.0), (3, 2.0), (3, 4.0)):
        norm.update(k, v)
    again = ClusterLossNormalizer(4, decay=0.5)
    again.load_state_dict(norm.state_dict())
    assert again.mean(3) == norm.mean(3) and again.count == norm.count
    with pytest.raises(LoliConfigError, match="clusters=4"):
        ClusterLossNormalizer(5).load_state_dict(norm.state_dict())


@pytest.mark.parametrize("decay", [1.0, -0.1, "0.9", True])
def test_bad_decay_is_refused(decay):
    with pytest.raises(LoliConfigError, match="decay"):
        ClusterLossNormalizer(2, decay=decay)


def test_cluster_out_of_range_and_clusters_zero_are_refused():
    with pytest.raises(LoliConfigError, match="outside"):
        ClusterLossNormalizer(2)(torch.tensor(1.0), 2)
    with pytest.raises(LoliConfigError, match="clusters"):
        ClusterLossNormalizer(0)


def test_inside_adam_banks_a_constant_per_cluster_scale_changes_nothing_but_eps():
    """Why the normaliser is for a single optimizer state: Adam divides the first moment by the root of
    the second, so a cluster whose gradients are all scaled by c takes the same steps (exactly with eps=0,
    up to float rounding)."""

    def run(scales):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.zeros(16))
        opt = LoliClustered([p], inner="AdamW", clusters=2, schedule="round_robin", lr=1e-2, eps=0.0)
        g = torch.Generator().manual_seed(1)
        for step in range(12):
            p.grad = scales[step % 2] * torch.randn(16, generator=g)
            opt.step()
        return p.detach().clone()

    torch.testing.assert_close(run((1.0, 1.0)), run((1.0, 37.0)), rtol=1e-6, atol=1e-7)
    # a single AdamW state is not invariant: the large cluster's gradients dominate the shared second moment
    single = []
    for scales in ((1.0, 1.0), (1.0, 37.0)):
        p = torch.nn.Parameter(torch.zeros(16))
        opt = torch.optim.AdamW([p], lr=1e-2, eps=0.0)
        g = torch.Generator().manual_seed(1)
        for step in range(12):
            p.grad = scales[step % 2] * torch.randn(16, generator=g)
            opt.step()
        single.append(p.detach().clone())
    assert (single[0] - single[1]).abs().max() > 1e-3
