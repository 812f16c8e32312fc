"""Every model family's real timestep sampler draws from the optimizer's cluster, keeps kohya's own
distribution overall (KS / chi-square against the unpatched function), and leaves validation alone."""

import importlib

import pytest
import torch
from scipy import stats

from loli_plugin import LoliClustered
from loli_plugin.adapters.kohya import ADAPTER as adapter

K = 5


def optimizer(clusters=K):
    return LoliClustered([torch.nn.Parameter(torch.zeros(1))], inner="SGD", clusters=clusters, lr=0.0)


def activate(args, clusters=K):
    opt = optimizer(clusters)  # built outside get_optimizer: activate the run explicitly
    adapter.deactivate()
    adapter.activate(args, opt)
    return opt


def draws_per_cluster(fn, opt, steps):
    """Call ``fn`` once per optimizer step; returns {cluster: [timesteps]}."""
    out = {k: [] for k in range(opt.clusters)}
    for _ in range(steps):
        k = opt.current_cluster
        out[k].append(fn().double().flatten())
        opt.step()
    return {k: torch.cat(v) for k, v in out.items()}


# ----------------------------------------------------------------------------- SD1/SD2/SDXL
def test_sd_timesteps(kohya, parse):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    args = parse("--min_timestep", "100", "--max_timestep", "900")
    latents = torch.zeros(4, 4, 8, 8)
    fn = lambda: kohya.train_util.get_noise_noisy_latents_and_timesteps(args, sched, latents)[2]  # noqa: E731
    torch.manual_seed(0)
    plain = torch.cat([fn() for _ in range(2500)]).double()
    opt = activate(args)
    by_k = draws_per_cluster(fn, opt, 2500)
    for k, t in by_k.items():  # cluster k owns timesteps [100 + 160k, 100 + 160(k+1))
        assert t.min() >= 100 + 160 * k and t.max() < 100 + 160 * (k + 1)
    clustered = torch.cat(list(by_k.values()))
    assert stats.ks_2samp(clustered.numpy(), plain.numpy()).pvalue > 1e-3
    # validation: kohya sets min_timestep == max_timestep and expects exactly that timestep
    args.min_timestep = args.max_timestep = 250
    assert torch.equal(fn(), torch.full((4,), 250))


# ----------------------------------------------------------------------------- flow families
FLOW_CASES = [
    # (module, parser module, options)
    ("flux", ["--timestep_sampling", "uniform"]),
    ("flux", ["--timestep_sampling", "sigmoid", "--sigmoid_scale", "1.5"]),
    ("flux", ["--timestep_sampling", "shift", "--discrete_flow_shift", "3.1582"]),
    ("flux", ["--timestep_sampling", "flux_shift"]),
    ("flux", ["--timestep_sampling", "sigma", "--weighting_scheme", "logit_normal", "--logit_mean", "0.2"]),
    ("flux", ["--timestep_sampling", "sigma", "--weighting_scheme", "mode", "--mode_scale", "1.29"]),
    ("flux", ["--timestep_sampling", "sigma", "--weighting_scheme", "cosmap"]),
    ("flux", ["--timestep_sampling", "sigmoid", "--ip_noise_gamma", "0.1", "--ip_noise_gamma_random_strength"]),
    ("lumina", ["--timestep_sampling", "nextdit_shift"]),
    ("lumina", ["--timestep_sampling", "shift", "--discrete_flow_shift", "6.0"]),
    ("lumina", ["--timestep_sampling", "sigma", "--weighting_scheme", "mode", "--mode_scale", "-0.5"]),
    ("sd3", ["--weighting_scheme", "logit_normal", "--training_shift", "3.0"]),
    ("sd3", ["--weighting_scheme", "mode", "--mode_scale", "1.29"]),
    ("sd3", ["--weighting_scheme", "uniform", "--min_timestep", "100", "--max_timestep", "800"]),
]
SCRIPTS = {
    "flux": ("flux_train_network", "library.flux_train_utils"),
    "lumina": ("lumina_train_network", "library.lumina_train_util"),
    "sd3": ("sd3_train_network", "library.sd3_train_utils"),
}


def flow_setup(kohya, parse, family, options):
    script, module = SCRIPTS[family]
    parser = importlib.import_module(script).setup_parser()
    args = parse(*options, parser=parser)
    utils = importlib.import_module(module)
    from library import sd3_train_utils

    sched = sd3_train_utils.FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=getattr(args, "discrete_flow_shift", 1.0) or 1.0
    )
    latents = torch.zeros(4, 16, 8, 8)
    noise = torch.randn_like(latents)
    if family == "sd3":
        fn = lambda: utils.get_noisy_model_input_and_timesteps(args, latents, noise, "cpu", torch.float32)  # noqa: E731
    else:
        fn = lambda: utils.get_noisy_model_input_and_timesteps(args, sched, latents, noise, "cpu", torch.float32)  # noqa: E731
    return args, fn


@pytest.mark.parametrize("family, options", FLOW_CASES, ids=[f"{f}-{'-'.join(o)}" for f, o in FLOW_CASES])
def test_flow_family_timesteps(kohya, parse, family, options):
    args, fn = flow_setup(kohya, parse, family, options)
    torch.manual_seed(0)
    plain_out = [fn() for _ in range(3000)]
    plain = torch.cat([o[1] for o in plain_out]).double()
    opt = activate(args)
    by_k = draws_per_cluster(lambda: fn()[1], opt, 3000)
    # clusters are ordered slices: every timestep of cluster k is <= every timestep of cluster k+1
    for k in range(K - 1):
        assert by_k[k].max() <= by_k[k + 1].min(), (k, by_k[k].max(), by_k[k + 1].min())
    clustered = torch.cat(list(by_k.values()))
    p = stats.ks_2samp(clustered.numpy(), plain.numpy()).pvalue
    assert p > 1e-3, f"overall distribution differs from kohya's own sampler (KS p={p:.2e})"
    # the noisy input still follows kohya's formula with the drawn sigma
    noisy, t, sigmas = fn()
    assert noisy.shape == (4, 16, 8, 8) and torch.isfinite(noisy).all()


def test_flow_validation_calls_are_handed_to_kohya(kohya, parse):
    args, fn = flow_setup(kohya, parse, "flux", ["--timestep_sampling", "sigmoid"])
    activate(args)
    args.min_timestep = args.max_timestep = 500  # kohya's validation hack; the flux sampler ignores it
    torch.manual_seed(3)
    a = fn()[1]
    adapter.deactivate()
    torch.manual_seed(3)
    b = fn()[1]
    assert torch.equal(a, b)


def test_the_flux_wrapper_reads_no_more_of_args_than_kohya(kohya, parse):
    """A duck-typed ``args`` with only the fields flux_train_utils.get_noisy_model_input_and_timesteps
    itself reads (no min_timestep / max_timestep): the wrapped sampler works with a Loli run active."""
    from types import SimpleNamespace

    args, fn = flow_setup(kohya, parse, "flux", ["--timestep_sampling", "uniform"])
    opt = activate(args)
    utils = importlib.import_module("library.flux_train_utils")
    from library import sd3_train_utils

    duck = SimpleNamespace(
        **{
            k: getattr(args, k)
            for k in (
                "timestep_sampling",
                "sigmoid_scale",
                "discrete_flow_shift",
                "weighting_scheme",
                "logit_mean",
                "logit_std",
                "mode_scale",
                "ip_noise_gamma",
                "ip_noise_gamma_random_strength",
            )
            if hasattr(args, k)
        }
    )
    assert not hasattr(duck, "min_timestep")
    sched = sd3_train_utils.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    latents = torch.zeros(4, 16, 8, 8)
    _, t, _ = utils.get_noisy_model_input_and_timesteps(
        duck, sched, latents, torch.randn_like(latents), "cpu", torch.float32
    )
    k = opt.current_cluster
    assert ((t >= k * 1000 / K) & (t < (k + 1) * 1000 / K)).all()


def test_gradient_accumulation_keeps_one_cluster(kohya, parse):
    args, fn = flow_setup(kohya, parse, "flux", ["--timestep_sampling", "uniform"])
    opt = activate(args)
    for _ in range(6):
        k = opt.current_cluster
        ts = [fn()[1] for _ in range(3)]  # three micro-batches before the real step
        lo, hi = k * 1000 / K, (k + 1) * 1000 / K
        assert all(((t >= lo) & (t < hi)).all() for t in ts)
        opt.step()


def test_every_rank_uses_the_same_cluster(kohya, parse):
    # Two ranks build their optimizers from the same arguments: the cluster sequence is a function of
    # (seed, step) only, so they agree at every step without communicating.
    args = parse("--optimizer_type", "LoliClustered", "--optimizer_args", "clusters=7")
    seqs = []
    for rank in range(2):
        torch.manual_seed(rank)  # ranks have different torch seeds in practice
        _, _, opt = kohya.train_util.get_optimizer(args, [{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}])
        seq = []
        for _ in range(30):
            seq.append(opt.current_cluster)
            opt.step()
        seqs.append(seq)
        adapter.deactivate()
    assert seqs[0] == seqs[1] and sorted(seqs[0][:7]) == list(range(7))
