"""The real ModelSetupNoiseMixin sampler for every TimestepDistribution, the cosine loss strength in the
real loss mixin, and the per-cluster TensorBoard scalars."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from loli_plugin import LoliConfigError
from loli_plugin.adapters.onetrainer import ADAPTER as adapter

from .test_onetrainer_core import collection, make_config

K = 5
CASES = [
    ("UNIFORM", {}),
    ("UNIFORM", {"min_noising_strength": 0.2, "max_noising_strength": 0.8, "timestep_shift": 3.0}),
    ("LOGIT_NORMAL", {}),
    ("LOGIT_NORMAL", {"noising_weight": 0.5, "noising_bias": -0.3, "timestep_shift": 2.0}),
    ("HEAVY_TAIL", {"noising_weight": 1.0}),
    ("HEAVY_TAIL", {"noising_weight": -0.5}),
    ("BETA", {"noising_weight": 0.5, "noising_bias": 1.0}),  # beta == 1: u ** (1/alpha)
    ("BETA", {"noising_weight": 1.0, "noising_bias": 3.0}),  # alpha == 1: 1 - u ** (1/beta), decreasing
    ("BETA", {"noising_weight": 2.0, "noising_bias": 3.0}),  # general case: torch.distributions.Beta
    ("COS_MAP", {}),
    ("SIGMOID", {"noising_weight": 3.0, "noising_bias": 0.2, "timestep_shift": 2.0}),
    ("INVERTED_PARABOLA", {"noising_weight": 4.0}),
]


@pytest.fixture
def setups(ot):
    from modules.modelSetup.mixin.ModelSetupDiffusionLossMixin import ModelSetupDiffusionLossMixin
    from modules.modelSetup.mixin.ModelSetupNoiseMixin import ModelSetupNoiseMixin

    class Setup(ModelSetupNoiseMixin, ModelSetupDiffusionLossMixin):  # what every model setup mixes in
        def __init__(self):
            ModelSetupNoiseMixin.__init__(self)
            ModelSetupDiffusionLossMixin.__init__(self)

    return Setup


def timestep_config(ot, distribution, values):
    from modules.util.enum.TimestepDistribution import TimestepDistribution

    cfg = make_config(ot, clusters=K)
    cfg.timestep_distribution = TimestepDistribution[distribution]
    for key, value in values.items():
        setattr(cfg, key, value)
    return cfg


def draws(setups, cfg, steps, opt=None, continuous=False, batch=4):
    """One call per optimizer step with OneTrainer's per-step generator seeding; {cluster: timesteps}."""
    setup, out = setups(), {}
    for s in range(steps):
        g = torch.Generator().manual_seed(s)
        k = opt.current_cluster if opt is not None else -1
        if continuous:
            t = setup._get_timestep_continuous(False, g, batch, cfg)
        else:
            t = setup._get_timestep_discrete(1000, False, g, batch, cfg)
        out.setdefault(k, []).append(t.double())
        if opt is not None:
            opt.step()
    return {k: torch.cat(v) for k, v in out.items()}


@pytest.mark.parametrize("distribution, values", CASES, ids=[f"{d}-{v}" for d, v in CASES])
def test_every_distribution_one_cluster_per_step_same_overall_distribution(ot, setups, distribution, values):
    cfg = timestep_config(ot, distribution, values)
    plain = draws(setups, cfg, 2000)[-1]  # no LOLI run active: OneTrainer's own sampler
    opt = ot.create.create_optimizer(collection(ot), None, cfg)
    by_k = draws(setups, cfg, 2000, opt)
    assert sorted(by_k) == list(range(K))
    for k in range(K - 1):  # ordered slices: cluster 0 holds the lowest timesteps
        assert by_k[k].max() <= by_k[k + 1].min(), (k, by_k[k].max(), by_k[k + 1].min())
    clustered = torch.cat(list(by_k.values()))
    p = stats.ks_2samp(clustered.numpy(), plain.numpy()).pvalue
    assert p > 1e-3, f"{distribution}: overall distribution differs from OneTrainer's own (KS p={p:.2e})"


def test_continuous_variant(ot, setups):
    cfg = timestep_config(ot, "LOGIT_NORMAL", {})
    plain = draws(setups, cfg, 1500, continuous=True)[-1]
    opt = ot.create.create_optimizer(collection(ot), None, cfg)
    by_k = draws(setups, cfg, 1500, opt, continuous=True)
    assert all(by_k[k].max() <= by_k[k + 1].min() for k in range(K - 1))
    assert stats.ks_2samp(torch.cat(list(by_k.values())).numpy(), plain.numpy()).pvalue > 1e-3


def test_validation_and_the_ui_preview_are_untouched(ot, setups):
    from modules.ui.TimestepDistributionWindowController import TimestepGenerator
    from modules.util.enum.TimestepDistribution import TimestepDistribution

    cfg = timestep_config(ot, "UNIFORM", {})
    ot.create.create_optimizer(collection(ot), None, cfg)
    t = setups()._get_timestep_discrete(1000, True, torch.Generator().manual_seed(0), 4, cfg)
    assert t.tolist() == [499]  # deterministic: OneTrainer's fixed mid timestep
    preview = TimestepGenerator(TimestepDistribution.UNIFORM, 0.0, 1.0, 0.0, 0.0, 1.0)
    a = preview._get_timestep_discrete(1000, False, torch.Generator().manual_seed(1), 1000, cfg)
    adapter.deactivate()
    b = preview._get_timestep_discrete(1000, False, torch.Generator().manual_seed(1), 1000, cfg)
    assert torch.equal(a, b)


def test_heavy_tail_outside_its_monotone_range_is_refused(ot, setups):
    cfg = timestep_config(ot, "HEAVY_TAIL", {"noising_weight": 2.0})
    ot.create.create_optimizer(collection(ot), None, cfg)
    with pytest.raises(LoliConfigError, match="Noising Weight with the HEAVY_TAIL"):
        setups()._get_timestep_discrete(1000, False, torch.Generator().manual_seed(0), 4, cfg)


def test_too_many_clusters_for_the_noising_range(ot, setups):
    cfg = timestep_config(ot, "UNIFORM", {"min_noising_strength": 0.5, "max_noising_strength": 0.503})
    ot.create.create_optimizer(collection(ot), None, cfg)
    with pytest.raises(LoliConfigError, match="Timestep Clusters"):
        setups()._get_timestep_discrete(1000, False, torch.Generator().manual_seed(0), 4, cfg)


# ----------------------------------------------------------------------------- loss
def loss_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    pred[0, :, 0, 0] = 0.0  # a zero vector: the cosine term stays finite
    return pred, target


def cosine_run(ot, cfg):
    """Start a cosine-only run as OneTrainer's create_optimizer does for it (its own ADAMW, the loss
    patches applied); without a run the loss mixin is OneTrainer's own."""
    plain = make_config(ot)
    plain.optimizer.optimizer = ot.Optimizer.ADAMW
    plain.cos_strength = cfg.cos_strength
    ot.create.create_optimizer(collection(ot), None, plain)
    assert ot.patches.TRAINING.instrumented


def test_without_a_run_the_loss_is_onetrainers_own(ot, setups):
    cfg = ot.TrainConfig.default_values()
    cfg.mse_strength, cfg.cos_strength = 1.0, 0.5
    pred, target = loss_inputs()
    data = {"predicted": pred, "target": target, "loss_type": "target", "timestep": torch.tensor([10, 500])}
    got = setups()._diffusion_losses({"loss_weight": torch.ones(2)}, data, cfg, torch.device("cpu"))
    assert not ot.patches.TRAINING.instrumented
    assert torch.equal(got, ((pred - target) ** 2).mean((1, 2, 3)))


@pytest.mark.parametrize("masked", [False, True])
def test_cosine_strength_matches_the_direct_formula(ot, setups, masked):
    cfg = ot.TrainConfig.default_values()
    cfg.mse_strength, cfg.mae_strength, cfg.cos_strength = 0.4, 0.4, 0.2
    cosine_run(ot, cfg)
    pred, target = loss_inputs()
    mask = (torch.arange(8)[None, None, :, None] < 4).float().expand(2, 1, 8, 8)
    batch = {"latent_mask": mask, "loss_weight": torch.ones(2)}
    data = {"predicted": pred, "target": target, "loss_type": "target", "timestep": torch.tensor([10, 500])}
    cfg.masked_training, cfg.unmasked_weight, cfg.normalize_masked_area_loss = masked, 0.1, False
    got = setups()._diffusion_losses(batch, data, cfg, torch.device("cpu"))
    cos = 1 - F.cosine_similarity(pred, target, dim=1, eps=0.0).nan_to_num(0.0)  # (B, H, W); 0 where a vector is 0
    weight = torch.clamp(mask, 0.1, 1) if masked else torch.ones_like(mask)
    want = (((pred - target) ** 2 * 0.4 + (pred - target).abs() * 0.4) * weight).mean((1, 2, 3)) + (
        cos[:, None] * weight
    ).expand(2, 4, 8, 8).mean((1, 2, 3)) * 0.2
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6)
    cfg.cos_strength = 0.0  # without it the result is OneTrainer's own
    base = setups()._diffusion_losses(batch, data, cfg, torch.device("cpu"))
    assert torch.allclose(got - base, (cos[:, None] * weight).expand(2, 4, 8, 8).mean((1, 2, 3)) * 0.2, atol=1e-6)


def test_cosine_strength_with_min_snr_weighting_and_gradients(ot, setups):
    from modules.util.enum.LossWeight import LossWeight

    cfg = ot.TrainConfig.default_values()
    cfg.mse_strength, cfg.cos_strength, cfg.loss_weight_fn = 1.0, 0.5, LossWeight.MIN_SNR_GAMMA
    cosine_run(ot, cfg)
    pred, target = loss_inputs(1)
    pred.requires_grad_(True)
    betas = torch.linspace(0.00085, 0.012, 1000) ** 2
    data = {"predicted": pred, "target": target, "loss_type": "target", "timestep": torch.tensor([10, 900])}
    loss = setups()._diffusion_losses({"loss_weight": torch.ones(2)}, data, cfg, torch.device("cpu"), betas=betas)
    loss.mean().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    cfg.cos_strength = 0.0  # the cosine term went through OneTrainer's min-SNR weighting, so it is in the loss
    without = setups()._diffusion_losses({"loss_weight": torch.ones(2)}, data, cfg, torch.device("cpu"), betas=betas)
    assert (loss.detach() > without.detach()).all()


# ----------------------------------------------------------------------------- tensorboard
def test_per_cluster_scalars_reach_tensorboard(ot, setups):
    from modules.modelSetup.BaseModelSetup import BaseModelSetup
    from modules.util.TrainProgress import TrainProgress

    cfg = timestep_config(ot, "UNIFORM", {})
    cfg.cos_strength = 0.2
    cfg.loli_probe = "off"  # the probe needs a real model setup's predict (tests/onetrainer/test_onetrainer_probe.py)
    coll = collection(ot)
    opt = ot.create.create_optimizer(coll, None, cfg)
    setup = setups()
    written = []
    tb = SimpleNamespace(add_scalar=lambda tag, value, step: written.append((tag, step, value)))
    model = SimpleNamespace(optimizer=opt, parameters=coll, train_progress=TrainProgress())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    pred, target = loss_inputs()
    for s in range(2 * K):
        with torch.enable_grad():
            setup._get_timestep_discrete(1000, False, torch.Generator().manual_seed(s), 2, cfg)  # training draw
            k = opt.current_cluster
            data = {"predicted": pred * 0 + (k + 1), "target": torch.zeros_like(pred), "loss_type": "target"}
            cfg.cos_strength, cfg.mse_strength = 0.0, 1.0
            setup._diffusion_losses({"loss_weight": torch.ones(2)}, data, cfg, torch.device("cpu"))  # loss (k+1)^2
        opt.step()
        model.train_progress.global_step = s
        BaseModelSetup.report_to_tensorboard(setup, model, cfg, sched, tb)
    last = {tag: value for tag, step, value in written if step == 2 * K - 1}
    assert {"lr/unet", "lr/text_encoder", "loss/cluster_00", "loss/cluster_04", "loli/cluster"} <= set(last)
    assert [last[f"loss/cluster_{k:02d}"] for k in range(K)] == pytest.approx([(k + 1) ** 2 for k in range(K)])
