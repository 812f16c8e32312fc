"""Every --timestep_sampling of musubi-tuner's real NetworkTrainer.get_noisy_model_input_and_timesteps
draws from the optimizer's cluster, keeps musubi's own distribution overall (KS test against the
unpatched method, per mode), its shift, [min, max] scaling and --preserve_distribution_shape, composes
with --num_timestep_buckets; Wan's and HiDream-O1's overrides too."""

import pytest
import torch
from scipy import stats

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.adapters.musubi import ADAPTER as adapter
from loli_plugin.errors import LoliUnsupportedTrainerError

from .conftest import import_family

K = 5
STEPS, BATCH = 700, 16  # 11200 draws per distribution


def optimizer(clusters=K):
    return LoliClustered([torch.nn.Parameter(torch.zeros(1))], inner="SGD", clusters=clusters, lr=0.0)


def activate(trainer, args, clusters=K):
    opt = optimizer(clusters)  # built outside get_optimizer: activate the run explicitly
    adapter.deactivate()
    adapter.activate(trainer, args, opt)
    return opt


def scheduler(args):
    from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler

    # as NetworkTrainer._run_training_loop builds it
    return FlowMatchDiscreteScheduler(shift=args.discrete_flow_shift, reverse=True, solver="euler")


def sampler(trainer, args, shape=(BATCH, 4, 1, 16, 16), handed=None):
    """One call of the trainer's real sampler, as process_batch makes it; returns the timesteps."""
    sched = scheduler(args)
    latents = torch.randn(shape)

    def draw():
        noise = torch.randn_like(latents)
        values = handed() if handed is not None else None
        noisy, t = trainer.get_noisy_model_input_and_timesteps(
            args, noise, latents, values, sched, "cpu", torch.float32
        )
        assert noisy.shape == latents.shape and torch.isfinite(noisy).all()
        return t

    return draw


def per_cluster(fn, opt, steps=STEPS):
    """Call ``fn`` once per optimizer step; returns {cluster: timesteps}."""
    out = {k: [] for k in range(opt.clusters)}
    for _ in range(steps):
        out[opt.current_cluster].append(fn().double().flatten())
        opt.step()
    return {k: torch.cat(v) for k, v in out.items()}


def check_same_distribution(clustered: torch.Tensor, plain: torch.Tensor, what: str):
    p = stats.ks_2samp(clustered.numpy(), plain.numpy()).pvalue
    assert p > 1e-3, f"{what}: the overall distribution differs from musubi's own sampler (KS p={p:.2e})"


def check_ordered(by_k: dict, what: str):
    """Clusters are ordered slices: every timestep of cluster k is <= every timestep of cluster k+1."""
    for k in range(len(by_k) - 1):
        assert by_k[k].max() <= by_k[k + 1].min() + 1e-3, (what, k, by_k[k].max(), by_k[k + 1].min())


MODES = [
    ["--timestep_sampling", "sigma"],
    ["--timestep_sampling", "sigma", "--weighting_scheme", "logit_normal", "--logit_mean", "0.2"],
    ["--timestep_sampling", "sigma", "--weighting_scheme", "mode", "--mode_scale", "1.29"],
    ["--timestep_sampling", "sigma", "--weighting_scheme", "cosmap", "--min_timestep", "100", "--max_timestep", "900"],
    ["--timestep_sampling", "uniform"],
    ["--timestep_sampling", "uniform", "--min_timestep", "200", "--max_timestep", "800"],
    ["--timestep_sampling", "sigmoid", "--sigmoid_scale", "1.5"],
    ["--timestep_sampling", "shift", "--discrete_flow_shift", "3.1582"],
    ["--timestep_sampling", "shift", "--discrete_flow_shift", "2.0", "--sigmoid_scale", "-1.0"],  # a falling map
    ["--timestep_sampling", "flux_shift"],
    ["--timestep_sampling", "flux2_shift"],
    ["--timestep_sampling", "qwen_shift"],
    ["--timestep_sampling", "krea2_shift"],
    ["--timestep_sampling", "ideogram4_shift"],
    ["--timestep_sampling", "logsnr", "--logit_mean", "-0.5"],
    ["--timestep_sampling", "qinglong_flux"],
    ["--timestep_sampling", "qinglong_qwen"],
    [
        "--timestep_sampling",
        "shift",
        "--discrete_flow_shift",
        "3.0",
        "--preserve_distribution_shape",
        "--min_timestep",
        "200",
        "--max_timestep",
        "700",
    ],
    [
        "--timestep_sampling",
        "logsnr",
        "--preserve_distribution_shape",
        "--min_timestep",
        "100",
        "--max_timestep",
        "600",
    ],
    ["--timestep_sampling", "uniform", "--preserve_distribution_shape", "--max_timestep", "500"],
]


@pytest.mark.parametrize("options", MODES, ids=["-".join(o).replace("--", "") for o in MODES])
def test_every_sampling_draws_from_its_cluster(musubi, parse, trainer, options):
    t = trainer()
    args = parse(*options)
    fn = sampler(t, args)
    torch.manual_seed(0)
    plain = torch.cat([fn().double() for _ in range(STEPS)])
    opt = activate(t, args)
    by_k = per_cluster(fn, opt)
    clustered = torch.cat(list(by_k.values()))
    check_same_distribution(clustered, plain, " ".join(options))
    if args.timestep_sampling.startswith("qinglong"):
        # a mixture sliced by the uniform that drives each of its samplers: the rising one carries most draws
        medians = [float(by_k[k].median()) for k in range(K)]
        assert medians == sorted(medians), medians
    else:
        check_ordered(by_k, " ".join(options))
    lo = (args.min_timestep or 0) + 1  # musubi's timesteps are t * 1000 + 1
    hi = (1000 if args.max_timestep is None else args.max_timestep) + 1
    assert clustered.min() >= lo - 1e-3 and clustered.max() <= hi + 1e-3


def test_buckets_place_each_draw_inside_its_cluster(musubi, parse, trainer):
    # --num_timestep_buckets: musubi hands stratified uniforms (its BucketBatchManager's pool, or the trainer's
    # get_bucketed_timestep for Wan and --preserve_distribution_shape); each one positions the draw in the cluster
    t = trainer()
    t.num_timestep_buckets = 4
    args = parse("--timestep_sampling", "uniform", "--num_timestep_buckets", "4")
    handed = []

    def bucketed():
        handed.append([t.get_bucketed_timestep() for _ in range(BATCH)])
        return handed[-1]

    fn = sampler(t, args, handed=bucketed)
    torch.manual_seed(0)
    plain = torch.cat([fn().double() for _ in range(STEPS)])
    opt = activate(t, args)
    handed.clear()
    clusters = []
    draws = []
    for _ in range(STEPS):
        clusters.append(opt.current_cluster)
        draws.append(fn().double())
        opt.step()
    for k, v, ts in zip(clusters, handed, draws):  # uniform: t = (k + value) / K exactly
        assert torch.allclose((ts - 1) / 1000, (k + torch.tensor(v, dtype=torch.float64)) / K, atol=1e-6)
    check_same_distribution(torch.cat(draws), plain, "uniform with 4 buckets")


def test_wan_high_low_training_redraws_inside_the_cluster(musubi, parse):
    wan = import_family("wan_train_network")
    t = wan.WanNetworkTrainer()
    t.high_low_training, t.timestep_boundary = True, 0.875  # --dit_high_noise with Wan 2.2's T2V boundary
    args = parse("--timestep_sampling", "shift", "--discrete_flow_shift", "5.0", family="wan_train_network")
    fn = sampler(t, args, shape=(2, 16, 1, 8, 8))
    torch.manual_seed(0)
    plain = torch.cat([fn().double() for _ in range(STEPS)])
    opt = activate(t, args)
    by_k = {k: [] for k in range(K)}
    for _ in range(STEPS):
        ts = fn().double()
        high = ts / 1000 >= 0.875
        assert high.all() or not high.any()  # one model (high- or low-noise) per step, as Wan's override wants
        by_k[opt.current_cluster].append(ts)
        opt.step()
    by_k = {k: torch.cat(v) for k, v in by_k.items()}
    check_ordered(by_k, "wan high/low")
    check_same_distribution(torch.cat(list(by_k.values())), plain, "wan high/low")


@pytest.mark.parametrize(
    "options",
    [
        ["--timestep_sampling", "uniform"],  # HiDream-O1's own branch: draws itself unless handed uniforms
        [
            "--timestep_sampling",
            "uniform",
            "--preserve_distribution_shape",
            "--min_timestep",
            "300",
            "--max_timestep",
            "900",
        ],
        ["--timestep_sampling", "shift", "--discrete_flow_shift", "3.0"],  # through super()
    ],
)
def test_hidream_override_draws_from_its_cluster(musubi, parse, trainer, options):
    t = trainer("hidream_o1_train_network")
    args = parse(*options, family="hidream_o1_train_network")
    fn = sampler(t, args, shape=(BATCH, 16, 48))  # HiDream-O1 trains on pixel-patch sequences (B, L, D)
    torch.manual_seed(0)
    plain = torch.cat([fn().double() for _ in range(STEPS)])
    opt = activate(t, args)
    by_k = per_cluster(fn, opt)
    check_ordered(by_k, " ".join(options))
    check_same_distribution(torch.cat(list(by_k.values())), plain, " ".join(options))


def test_a_range_without_mass_is_refused(musubi, parse, trainer):
    t = trainer()
    args = parse(
        "--timestep_sampling",
        "shift",
        "--discrete_flow_shift",
        "3.0",
        "--sigmoid_scale",
        "0.01",
        "--preserve_distribution_shape",
        "--min_timestep",
        "10",
        "--max_timestep",
        "20",
    )
    opt = activate(t, args)  # noqa: F841 - the run follows it while it lives
    with pytest.raises(LoliConfigError, match="puts no timesteps in that range"):
        sampler(t, args)()


def test_a_sampler_that_ignores_the_handed_uniforms_is_refused(musubi, parse, trainer):
    # a musubi-tuner whose sampler stopped using `timesteps` would train stock timesteps under cluster banks
    t = trainer()
    args = parse("--timestep_sampling", "uniform")
    opt = activate(t, args)  # noqa: F841 - the run follows it while it lives

    def stock(args, noise, latents, timesteps, noise_scheduler, device, dtype):
        return noise, torch.rand(noise.shape[0]) * 1000 + 1

    torch.manual_seed(0)
    with pytest.raises(LoliUnsupportedTrainerError, match="did not use the uniforms"):
        for _ in range(5):  # K=5: some draw falls outside the cluster's fifth
            musubi.patches.sample_from_cluster(
                adapter,
                stock,
                t,
                (args, torch.zeros(8, 4, 8, 8), torch.zeros(8, 4, 8, 8), None, None, "cpu", torch.float32),
                {},
            )


def test_sigma_sampling_that_draws_nothing_is_refused(musubi, parse, trainer, monkeypatch):
    # musubi's own test suite mocks the density; an active run refuses a draw it cannot restrict
    t = trainer()
    args = parse("--timestep_sampling", "sigma")
    opt = activate(t, args)  # noqa: F841 - the run follows it while it lives
    monkeypatch.setattr(
        musubi.trainer_base, "compute_density_for_timestep_sampling", lambda **kw: torch.full((BATCH,), 0.5)
    )
    with pytest.raises(LoliUnsupportedTrainerError, match="made no timestep draw"):
        sampler(t, args)()


def test_show_timesteps_and_plain_runs_are_stock(musubi, parse, trainer):
    # no run: the sampler is musubi's own, bit for bit
    t = trainer()
    args = parse("--timestep_sampling", "shift")
    fn = sampler(t, args)
    torch.manual_seed(3)
    a = fn()
    torch.manual_seed(3)
    b = fn()
    assert torch.equal(a, b) and not musubi.patches.TRAINING.instrumented
