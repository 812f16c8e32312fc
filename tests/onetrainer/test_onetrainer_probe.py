"""The progress probe's timesteps in the real OneTrainer sampler: for every TimestepDistribution, the
probe's timestep of cluster k is the (k + 1/2)/K quantile of OneTrainer's own distribution, the same for
every sample; a probe-only run (any optimizer) leaves the training draws OneTrainer's own. (TensorBoard,
backups, the training run with and without it: tests in test_onetrainer_e2e.py.)"""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from loli_plugin.adapters.onetrainer import ADAPTER as adapter

from .test_onetrainer_core import collection
from .test_onetrainer_timesteps_loss import CASES, draws, setups, timestep_config  # noqa: F401 - setups: a fixture

K = 5


@pytest.mark.parametrize("distribution, values", CASES, ids=[f"{d}-{v}" for d, v in CASES])
def test_probe_timesteps_are_the_cluster_midpoints(ot, setups, distribution, values):  # noqa: F811 - the fixture
    cfg = timestep_config(ot, distribution, values)
    cfg.optimizer.optimizer = ot.Optimizer.ADAMW  # a probe-only run: the probe with OneTrainer's own optimizer
    cfg.loli_probe, cfg.loli_probe_clusters = "on", K
    stock = draws(setups, cfg, 3000)[-1].numpy()
    opt = ot.create.create_optimizer(collection(ot), None, cfg)
    assert isinstance(opt, torch.optim.AdamW) and adapter.run.probe.clusters == K and not adapter.run.stratify
    setup, midpoints = setups(), []
    for k in range(K):
        with adapter.run.probing(k):
            t = setup._get_timestep_discrete(1000, False, torch.Generator().manual_seed(k), 4, cfg)
        assert torch.all(t == t[0]), t
        midpoints.append(t[0].item())
    for k, t in enumerate(midpoints):
        below = ((stock < t).mean() + (stock <= t).mean()) / 2  # mid-rank: integer timesteps have ties
        assert abs(below - (k + 0.5) / K) < 0.03, (k, t, below)
    assert midpoints == sorted(midpoints)  # cluster 0 holds the lowest timesteps
    training = draws(setups, cfg, 3000)[-1].numpy()
    assert stats.ks_2samp(stock, training).pvalue > 1e-3  # training draws of a probe-only run: OneTrainer's own


def test_auto_means_on_with_loli_clustered(ot):
    from loli_plugin.patches.onetrainer import requests_probe

    from .test_onetrainer_core import make_config

    cfg = make_config(ot)
    assert requests_probe(cfg)
    cfg.loli_probe = "off"
    assert not requests_probe(cfg)
    cfg.optimizer.optimizer, cfg.loli_probe = ot.Optimizer.ADAMW, "auto"
    assert not requests_probe(cfg)
    cfg.loli_probe = "on"
    assert requests_probe(cfg)


class TinyUnet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.dropout = torch.nn.Dropout(0.3)  # active in train mode only: the probe must run in eval mode

    def forward(self, x, t):
        return self.dropout(self.conv(x)) * (1 + t.float().view(-1, 1, 1, 1) / 1000)


@pytest.fixture
def harness(ot, setups):  # noqa: F811 - setups: the fixture imported above
    """A model setup built on OneTrainer's own mixins whose predict does what OneTrainer's do: a noise
    generator seeded from the TrainProgress step, the timestep sampler, a draw from the global RNG
    (OneTrainer's caption and text-encoder dropout use it), the forward; calculate_loss is
    _diffusion_losses. report_to_tensorboard is OneTrainer's own (the probe runs in it)."""
    from types import SimpleNamespace

    from modules.modelSetup.BaseModelSetup import BaseModelSetup
    from modules.util.TrainProgress import TrainProgress

    class Setup(setups):
        train_device = torch.device("cpu")

        def predict(self, model, batch, config, train_progress, *, deterministic=False):
            generator = torch.Generator().manual_seed(train_progress.global_step)
            x0 = batch["latent_image"]
            t = self._get_timestep_discrete(1000, deterministic, generator, x0.shape[0], config)
            noise = torch.randn(x0.shape, generator=generator)
            keep = (torch.rand(x0.shape[0]) > 0.1).float().view(-1, 1, 1, 1)  # like a caption dropout draw
            noisy = x0 + noise * t.float().view(-1, 1, 1, 1) / 1000
            return {
                "predicted": model.unet(noisy, t) * keep,
                "target": noise * keep,
                "loss_type": "target",
                "timestep": t,
            }

        def calculate_loss(self, model, batch, data, config):
            return self._diffusion_losses(batch, data, config, self.train_device).mean()

    g = torch.Generator().manual_seed(2)
    batches = [{"latent_image": torch.randn(2, 4, 8, 8, generator=g), "loss_weight": torch.ones(2)} for _ in range(3)]

    def run(probe="auto", lr=1e-2, steps=4):
        from .test_onetrainer_core import make_config

        adapter.deactivate()
        cfg = make_config(ot)
        cfg.loli_probe, cfg.loli_probe_every, cfg.loli_probe_samples = probe, 1, 2
        cfg.mse_strength, cfg.learning_rate = 1.0, lr
        unet = TinyUnet()
        from modules.util.NamedParameterGroup import NamedParameterGroup, NamedParameterGroupCollection

        coll = NamedParameterGroupCollection()
        coll.add_group(NamedParameterGroup("unet", list(unet.parameters()), lr))
        opt = ot.create.create_optimizer(coll, None, cfg)
        model = SimpleNamespace(unet=unet, optimizer=opt, parameters=coll, train_progress=TrainProgress())
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        setup, losses, written = Setup(), [], []
        tb = SimpleNamespace(add_scalar=lambda tag, value, step: written.append((step, tag, value)))
        torch.manual_seed(5)
        for step in range(steps):
            unet.train()
            batch = batches[step % len(batches)]
            loss = setup.calculate_loss(model, batch, setup.predict(model, batch, cfg, model.train_progress), cfg)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            model.train_progress.global_step += 1
            BaseModelSetup.report_to_tensorboard(setup, model, cfg, sched, tb)
        probes = {}
        for step, tag, value in written:
            if tag.startswith("probe/cluster_"):
                probes.setdefault(step, []).append(value)
        return losses, probes, unet

    return run


def test_the_training_run_is_the_same_with_and_without_the_probe(harness):
    with_probe, probes, unet_a = harness()
    without, none, unet_b = harness(probe="off")
    assert len(probes) == 4 and none == {}
    assert with_probe == without  # every step's training loss, bit for bit
    assert all(torch.equal(a, b) for a, b in zip(unet_a.parameters(), unet_b.parameters()))
    assert unet_a.training


def test_probes_are_bit_identical_with_unchanged_weights_and_move_with_training(harness):
    _, frozen, _ = harness(lr=0.0)
    values = list(frozen.values())
    assert len(values) == 4 and all(v == values[0] for v in values) and len(set(values[0])) == 4
    _, moving, _ = harness()
    assert list(moving.values())[0] != list(moving.values())[1]
