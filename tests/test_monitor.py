"""ClusterLossMonitor: per-cluster EMAs and a normalized loss that shows progress through noise."""

import math

import pytest
import torch
from scipy import stats

from loli_plugin import ClusterLossMonitor


def simulated_losses(steps=600, K=10, seed=0):
    """Loss = cluster scale (spanning 100x, like low vs high noise) x slow progress x noise."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-2, 0, K)
    for step in range(steps):
        k = int(torch.randint(K, (1,), generator=g))
        progress = 1.0 - 0.4 * step / steps  # 40% improvement over the run
        noise = float(torch.empty(()).uniform_(0.7, 1.3, generator=g))
        yield step, k, torch.tensor(float(scales[k]) * progress * noise)


def test_normalized_loss_tracks_progress_when_raw_loss_is_noise():
    mon = ClusterLossMonitor(clusters=10)
    raw, norm, steps = [], [], []
    for step, k, loss in simulated_losses():
        mon.update(k, loss)
        raw.append(float(loss))
        if step % 10 == 9:
            logs = mon.logs()
            if "loss/normalized" in logs:
                steps.append(step)
                norm.append(logs["loss/normalized"])
    raw_rho = stats.spearmanr(range(len(raw)), raw).statistic
    norm_rho = stats.spearmanr(steps, norm).statistic
    assert abs(raw_rho) < 0.2, "the simulated raw loss should look like noise"
    assert norm_rho < -0.9, f"normalized loss should fall steadily, spearman={norm_rho:.2f}"
    assert 0.55 < norm[-1] < 0.85  # true progress is 0.6-0.65 of the start; EMA lags a little


def test_logs_names_ema_and_counts():
    mon = ClusterLossMonitor(clusters=12, ema=0.5, warmup=2)
    for v in (4.0, 2.0, 1.0):
        mon.update(3, torch.tensor(v))
    mon.update(11, 0.5)
    logs = mon.logs()
    assert logs["loss/cluster_03"] == pytest.approx(0.5 * (0.5 * 4 + 0.5 * 2) + 0.5 * 1)
    assert logs["loss/cluster_11"] == 0.5 and "loss/cluster_00" not in logs
    assert mon.count[3] == 3 and mon.reference(3) == pytest.approx(3.0)
    assert logs["loss/normalized"] == pytest.approx(2.0 / 3.0)  # only cluster 3 has its reference
    assert logs["loli/cluster"] == 11.0


def test_update_does_not_read_the_device_until_logs():
    mon = ClusterLossMonitor(clusters=2)
    mon.update(0, torch.tensor(1.0))
    assert mon._pending and mon.count[0] == 0  # nothing read yet
    mon.logs()
    assert not mon._pending and mon.count[0] == 1


def test_nan_losses_are_skipped_and_state_round_trips():
    mon = ClusterLossMonitor(clusters=3, warmup=1)
    mon.update(0, torch.tensor(float("nan")))
    mon.update(0, torch.tensor(2.0))
    mon.update(1, torch.tensor([1.0, 3.0]))  # per-sample losses are averaged
    assert mon.logs()["loss/cluster_00"] == 2.0 and mon.ema[1] == 2.0
    other = ClusterLossMonitor(clusters=3, warmup=1)
    other.load_state_dict(mon.state_dict())
    assert other.logs() == mon.logs() and math.isnan(other.state_dict()["ema"][2])
