"""The progress probe in sd-scripts, through the real ``NetworkTrainer.process_batch`` (only the UNet
call is a tiny stand-in, so it runs in seconds), the real SD noise/timestep functions and loss, and
every family's real sampler; the TensorBoard tags and the resume are in the train_network.py e2e test."""

from __future__ import annotations

import pytest
import torch
from scipy import stats

from loli_plugin.adapters.kohya import ADAPTER as adapter

from .test_kohya_timesteps import FLOW_CASES, flow_setup

K = 4


class TinyUnet(torch.nn.Module):
    """Predicts the noise from (noisy latents, timestep); the trainable part of the run."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.t_scale = torch.nn.Parameter(torch.zeros(4))
        self.dropout = torch.nn.Dropout(0.5)  # only active in train mode: the probe must run in eval mode

    def forward(self, x, t):
        return self.dropout(self.conv(x)) * (1 + self.t_scale.view(1, -1, 1, 1) * t.float().view(-1, 1, 1, 1) / 1000)


@pytest.fixture
def harness(kohya, parse):
    """(trainer, unet, run(argv, steps) -> per-step training losses) around the real process_batch."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    class Trainer(kohya.train_network.NetworkTrainer):
        def call_unet(
            self, args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kwargs
        ):
            return unet(noisy_latents, timesteps)

    accelerator = Accelerator(cpu=True)
    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    g = torch.Generator().manual_seed(1)
    batches = [
        {
            "latents": torch.randn(2, 4, 8, 8, generator=g),
            "text_encoder_outputs_list": [torch.zeros(2, 3, 8)],
            "loss_weights": torch.ones(2),
            "captions": ["a", "b"],
        }
        for _ in range(3)
    ]

    def run(*argv, steps=3, lr="1e-2"):
        adapter.deactivate()
        torch.manual_seed(0)
        unet = TinyUnet()
        args = parse(
            "--optimizer_type",
            "LoliClustered",
            "--optimizer_args",
            f"clusters={K}",
            "--loss_type",
            "loli",
            "--logging_dir",
            "unused",
            *argv,
        )
        args.learning_rate = float(lr)
        _, _, opt = kohya.train_util.get_optimizer(args, list(unet.parameters()))
        trainer, losses, probes = Trainer(), [], []
        torch.manual_seed(123)  # the trainer's RNG: noise and timestep draws
        for step in range(steps):
            unet.train()
            loss = trainer.process_batch(
                batches[step % len(batches)],
                [],
                unet,
                unet,
                None,
                scheduler,
                torch.float32,
                torch.float32,
                accelerator,
                args,
                None,
                None,
                is_train=True,
                train_text_encoder=False,
                train_unet=True,
            )
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
            probes.append(adapter.run.logs() if adapter.run is not None else {})
        return losses, probes, unet, opt

    return run


def probe_values(logs):
    return [logs[f"probe/cluster_{k:02d}"] for k in range(K)]


def test_two_probes_with_unchanged_weights_are_bit_identical(harness):
    _, probes, _, _ = harness("--loli_probe_every", "1", "--loli_probe_samples", "2", lr="0")
    # the reference (before any step) is logged with step 1, then a probe after steps 2 and 3
    assert all(f"probe/cluster_{k:02d}" in probes[i] for k in range(K) for i in range(3))
    assert probe_values(probes[0]) == probe_values(probes[1]) == probe_values(probes[2])  # exact floats
    assert probes[2]["probe/normalized"] == 1.0
    assert len(set(probe_values(probes[0]))) == K  # one fixed timestep per cluster: four different values


def test_the_probe_changes_after_an_optimizer_step_on_its_samples(harness):
    _, probes, _, _ = harness("--loli_probe_every", "1", "--loli_probe_samples", "2")
    assert probe_values(probes[0]) != probe_values(probes[1])
    assert probes[0]["probe/normalized"] == 1.0 and probes[1]["probe/normalized"] != 1.0


def test_the_training_run_is_the_same_with_and_without_the_probe(harness):
    with_probe, probes, unet_a, _ = harness("--loli_probe_every", "1", "--loli_probe_samples", "2")
    without, no_probes, unet_b, _ = harness("--loli_probe", "off")
    assert "probe/mean" in probes[1] and not any("probe/mean" in p for p in no_probes)
    assert with_probe == without  # every step's training loss, bit for bit: the RNG streams continued untouched
    assert all(torch.equal(a, b) for a, b in zip(unet_a.parameters(), unet_b.parameters()))
    assert unet_a.training  # the probe put the model back in train mode


def test_the_probe_is_taken_every_n_steps_and_keeps_its_samples(harness):
    _, probes, _, opt = harness("--loli_probe_every", "2", "--loli_probe_samples", "4", steps=5)
    # 4 samples = the first two batches of 2: the first probe (the reference) runs before the second
    # step's batch, i.e. after 1 step; the next ones 2 steps later (after steps 3 and 5)
    taken = [i + 1 for i, p in enumerate(probes) if "probe/mean" in p]  # the step each log follows
    assert taken == [2, 3, 5]
    probe = adapter.run.probe
    assert probe.kept == 4 and len(probe.batches) == 2 and probe.steps == 5
    state = opt.state_dict()["loli_probe"]  # rides in the optimizer's state: --save_state / --resume carry it
    assert state["reference"] == probe.reference and len(state["batches"]) == 2 and state["steps"] == 5


def test_auto_means_on_with_loli_clustered_and_somewhere_to_log(kohya, parse):
    from loli_plugin.patches.kohya import requests_probe

    loli = ("--optimizer_type", "LoliClustered")
    assert requests_probe(parse(*loli, "--logging_dir", "logs")) and requests_probe(parse(*loli, "--log_with", "wandb"))
    assert not requests_probe(parse(*loli))  # no tracker: nothing would show the values
    assert not requests_probe(parse(*loli, "--logging_dir", "logs", "--loli_probe", "off"))
    assert not requests_probe(parse("--optimizer_type", "AdamW", "--logging_dir", "logs"))
    assert requests_probe(parse("--optimizer_type", "AdamW", "--loli_probe", "on"))


def test_the_probe_works_with_any_optimizer(harness, kohya, parse):
    adapter.deactivate()
    unet = TinyUnet()
    args = parse("--optimizer_type", "AdamW", "--loli_probe", "on", "--loli_probe_clusters", "3")
    _, _, opt = kohya.train_util.get_optimizer(args, list(unet.parameters()))
    assert isinstance(opt, torch.optim.AdamW) and adapter.run is not None and adapter.run.probe.clusters == 3
    assert not adapter.run.stratify  # AdamW's timesteps stay sd-scripts' own; only the probe draws fixed ones


def sd_setup(kohya, parse, options):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    args = parse(*options)
    latents = torch.zeros(4, 4, 8, 8)
    return args, lambda: (None, kohya.train_util.get_noise_noisy_latents_and_timesteps(args, sched, latents)[2])


PROBE_CASES = [("sd", ["--min_timestep", "100", "--max_timestep", "900"]), ("sd", [])] + FLOW_CASES


@pytest.mark.parametrize("family, options", PROBE_CASES, ids=[f"{f}-{'-'.join(o)}" for f, o in PROBE_CASES])
def test_probe_timesteps_are_the_cluster_midpoints(kohya, parse, family, options):
    """For each family's real sampler and options: the probe's timestep for cluster k is the (k + 1/2)/K
    quantile of sd-scripts' own distribution (against 20k draws of the unpatched sampler), the same for
    every sample, ordered, and training draws of a probe-only run stay sd-scripts' own."""
    probe_options = ["--optimizer_type", "AdamW", "--loli_probe", "on", "--loli_probe_clusters", str(K), *options]
    args, fn = (
        sd_setup(kohya, parse, probe_options) if family == "sd" else flow_setup(kohya, parse, family, probe_options)
    )
    adapter.deactivate()
    torch.manual_seed(0)
    stock = torch.cat([fn()[1] for _ in range(5000)]).double().numpy()
    kohya.train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])  # a probe-only run
    run = adapter.run
    midpoints = []
    for k in range(K):
        with run.probing(k):
            t = fn()[1]
        assert torch.all(t == t[0]), t  # one fixed timestep for every sample
        midpoints.append(t[0].item())
    for k, t in enumerate(midpoints):
        below = ((stock < t).mean() + (stock <= t).mean()) / 2  # the mid-rank: integer timesteps have ties
        assert abs(below - (k + 0.5) / K) < 0.02, (k, t, below)
    assert midpoints == sorted(midpoints)  # cluster 0 holds the lowest timesteps
    torch.manual_seed(1)
    training = torch.cat([fn()[1] for _ in range(5000)]).double().numpy()
    assert stats.ks_2samp(stock, training).pvalue > 1e-3  # a probe-only run's training draws are sd-scripts' own
