"""ProgressProbe: fixed timesteps (cluster midpoints), fixed samples and noise; same values while the
weights stay, new values after a step; the host's random streams untouched; resumable."""

import random

import numpy as np
import pytest
import torch

from loli_plugin import LoliConfigError, LoliStateError
from loli_plugin.probe import ProgressProbe, midpoint_timesteps
from loli_plugin.sampling import DiscreteUniform, LogitNormal, Shift


def model_and_loss():
    """A tiny denoiser on 4-dim samples: predicts the noise from (noisy sample, t)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))

    def loss_fn(x0, noise, t):
        t = t.float().view(-1, 1) / (1000.0 if not t.is_floating_point() else 1.0)
        xt = (1 - t) * x0 + t * noise
        return ((model(torch.cat([xt, t], dim=1)) - noise) ** 2).mean(dim=1)

    return model, loss_fn


SAMPLES = torch.linspace(-1, 1, 24).view(6, 4)


@pytest.mark.parametrize("dist", [LogitNormal(0.0, 1.0), Shift(LogitNormal(), 3.0), DiscreteUniform(0, 1000)], ids=repr)
def test_timesteps_are_the_cluster_midpoints(dist):
    t = midpoint_timesteps(dist, 5)
    expected = dist.quantile(torch.tensor([0.1, 0.3, 0.5, 0.7, 0.9], dtype=torch.float64))
    assert torch.equal(t, expected.to(t.dtype))
    assert t.dtype == (torch.long if dist.discrete else torch.get_default_dtype())
    for k in range(5):
        lo, hi = dist.cluster_range(k, 5)
        assert lo <= t[k].item() <= hi
    assert torch.equal(midpoint_timesteps(dist.quantile, 5), t)  # a bare quantile function works too


def test_bad_cluster_counts():
    with pytest.raises(LoliConfigError, match="clusters must be >= 1"):
        midpoint_timesteps(LogitNormal(), 0)
    with pytest.raises(LoliConfigError, match="larger than the 3 distinct timesteps"):
        midpoint_timesteps(DiscreteUniform(0, 3), 4)


def test_unchanged_weights_give_bit_identical_values_and_normalized_starts_at_one():
    model, loss_fn = model_and_loss()
    probe = ProgressProbe(SAMPLES, LogitNormal(), clusters=4, seed=3)
    first = probe(loss_fn, model)
    assert first == probe(loss_fn, model)  # exact: same samples, noise, timesteps, eval mode (no dropout)
    assert first["probe/normalized"] == 1.0
    assert sorted(first) == [
        "probe/cluster_00",
        "probe/cluster_01",
        "probe/cluster_02",
        "probe/cluster_03",
        "probe/mean",
        "probe/normalized",
    ]
    assert model.training  # put back


def test_one_optimizer_step_on_the_probe_samples_changes_it():
    model, loss_fn = model_and_loss()
    probe = ProgressProbe(SAMPLES, LogitNormal(), clusters=4)
    before = probe(loss_fn, model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.eval()
    loss_fn(probe.samples, probe.noise, probe.timesteps[1].expand(len(SAMPLES))).mean().backward()
    opt.step()
    model.train()
    after = probe(loss_fn, model)
    assert after["probe/cluster_01"] < before["probe/cluster_01"]
    assert after["probe/normalized"] != 1.0


def draws():
    return torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)]


def test_random_streams_continue_exactly_as_without_the_probe():
    model, loss_fn = model_and_loss()
    probe = ProgressProbe(SAMPLES, LogitNormal(), clusters=4)

    def greedy_loss_fn(x0, noise, t):  # a host forward that draws from every generator
        torch.rand(7), np.random.rand(7), random.random()
        return loss_fn(x0, noise, t)

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    without = draws()
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    probe(greedy_loss_fn, model)
    assert draws() == without


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_random_stream_continues():
    probe = ProgressProbe(SAMPLES.cuda(), LogitNormal(), clusters=2)
    torch.cuda.manual_seed(1)
    without = torch.rand(3, device="cuda")
    torch.cuda.manual_seed(1)
    probe(lambda x0, noise, t: torch.rand(len(x0), device="cuda"))
    assert torch.equal(torch.rand(3, device="cuda"), without)


def test_state_round_trip_keeps_the_probe_set_and_first_values():
    model, loss_fn = model_and_loss()
    probe = ProgressProbe(SAMPLES, LogitNormal(), clusters=4, seed=3)
    first = probe(loss_fn, model)
    with torch.no_grad():
        model[0].weight.mul_(0.9)  # training went on
    state = probe.state_dict()

    resumed = ProgressProbe(
        SAMPLES.flip(0) * 2, LogitNormal(0.5, 2.0), clusters=4, seed=99
    )  # what a restart would pick
    resumed.load_state_dict(state)
    assert resumed(loss_fn, model) == probe(loss_fn, model)
    assert resumed.reference == [first[f"probe/cluster_{k:02d}"] for k in range(4)]

    with pytest.raises(LoliStateError, match="clusters=4; this one format 1, clusters=3"):
        ProgressProbe(SAMPLES, LogitNormal(), clusters=3).load_state_dict(state)
