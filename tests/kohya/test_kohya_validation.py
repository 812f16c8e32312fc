"""The validation in sd-scripts, through the real ``NetworkTrainer.process_batch`` (a tiny U-Net stands in for
the model call, as in test_kohya_probe.py) and accelerate's real TensorBoard tracker, driven the way
train_network.py's validation loop drives them: each held-out batch handed over once per fixed timestep of
sd-scripts' own (``args.min_timestep = args.max_timestep = t``), then ``loss/validation/epoch_average`` logged
with the epoch as the step. The real train_network.py runs: test_kohya_validation_e2e.py."""

from __future__ import annotations

import json

import pytest
import torch

from loli_plugin.adapters.kohya import ADAPTER as adapter

from .test_kohya_probe import TinyUnet

K = 3
SD_TIMESTEPS = (200, 400, 600, 800)  # train_network.py's NUM_VALIDATION_TIMESTEPS = 4 over [0, 1000)


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util import tensor_util

    (run,) = [p.parent for p in folder.rglob("events.out.tfevents*")]
    ea = EventAccumulator(str(run), size_guidance={"tensors": 0, "scalars": 0})
    ea.Reload()
    out = {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}
    records = [
        json.loads(tensor_util.make_ndarray(e.tensor_proto).reshape(-1)[0])
        for tag in ea.Tags()["tensors"]
        for e in ea.Tensors(tag)
    ]
    return out, records


@pytest.fixture
def harness(kohya, parse, tmp_path):
    """run(*argv, epochs, lr) -> (training losses, sd-scripts' own validation losses, the U-Net, the log dir)."""
    from accelerate import Accelerator
    from diffusers import DDPMScheduler

    class Trainer(kohya.train_network.NetworkTrainer):
        def call_unet(self, args, accelerator, unet, noisy_latents, timesteps, text_conds, batch, weight_dtype, **kw):
            return unet(noisy_latents, timesteps)

    scheduler = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    g = torch.Generator().manual_seed(1)

    def batch(n):
        return {
            "latents": torch.randn(n, 4, 8, 8, generator=g),
            "text_encoder_outputs_list": [torch.zeros(n, 3, 8)],
            "loss_weights": torch.ones(n),
            "captions": ["a"] * n,
        }

    training, held_out = [batch(2) for _ in range(2)], [batch(1) for _ in range(3)]
    count = [0]

    def run(*argv, epochs=2, lr="1e-2", held=None):
        adapter.deactivate()
        count[0] += 1
        log_dir = tmp_path / f"run{count[0]}"
        args = parse(
            "--optimizer_type",
            "LoliClustered",
            "--optimizer_args",
            f"clusters={K}",
            "--logging_dir",
            str(log_dir),
            *argv,
        )
        args.learning_rate = float(lr)
        torch.manual_seed(0)
        unet = TinyUnet()
        _, _, opt = kohya.train_util.get_optimizer(args, list(unet.parameters()))
        accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(log_dir))
        accelerator.init_trackers("run")
        tracker = accelerator.get_tracker("tensorboard")  # what train_network.py's accelerator_logging calls
        trainer, losses, own = Trainer(), [], []

        def process(b, is_train):
            return trainer.process_batch(
                b, [], unet, unet, None, scheduler, torch.float32, torch.float32, accelerator, args, None, None,
                is_train=is_train, train_text_encoder=False, train_unet=True,
            )  # fmt: skip

        torch.manual_seed(123)
        step = 0
        for epoch in range(epochs):
            for b in training:
                unet.train()
                loss = process(b, True)
                loss.backward()
                opt.step()
                opt.zero_grad()
                step += 1
                losses.append(loss.item())
                tracker.log({"loss/current": losses[-1]}, step=step)  # step_logging
            if args.validate_every_n_epochs is not None and (epoch + 1) % args.validate_every_n_epochs:
                continue
            # EPOCH VALIDATION, as train_network.py runs it: its RNG switched to the validation seed
            state = torch.get_rng_state()
            torch.manual_seed(args.validation_seed or args.seed or 0)
            unet.eval()
            with torch.no_grad():
                for b in held_out if held is None else held:
                    for t in SD_TIMESTEPS:
                        args.min_timestep = args.max_timestep = t
                        trainer.on_step_start(args, accelerator, unet, [], unet, b, torch.float32, is_train=False)
                        own.append(process(b, False).item())
            torch.set_rng_state(state)
            args.min_timestep = args.max_timestep = None
            if held is None or held:  # sd-scripts logs its epoch validation only when it has a validation set
                tracker.log({"loss/validation/epoch_average": sum(own[-12:]) / 12}, step=epoch + 1)
        accelerator.end_training()
        return losses, own, unet, log_dir

    run.held_out = held_out
    return run


def test_the_plugin_measures_sd_scripts_validation_batches_and_logs_at_the_optimizer_step(harness):
    _, _, _, log_dir = harness()
    logs, records = events(log_dir)
    tags = {f"val/cluster_{k:02d}" for k in range(K)} | {"val/mean", "val/normalized"}
    assert tags <= set(logs)
    # one pass per epoch, at the optimizer step of the last step log (sd-scripts logs the epoch as the step)
    assert [s for s, _ in logs["val/mean"]] == [2, 4] and logs["val/normalized"][0][1] == 1.0
    assert [s for s, _ in logs["loss/validation/epoch_average"]] == [1, 2]
    (record,) = records  # once per run
    assert record["clusters"] == K and record["samples"] == 3
    mids = [row[1] for row in record["timesteps"]]
    assert mids == [166.0, 500.0, 833.0]  # DiscreteUniform(0, 1000) at (k + 1/2) / 3
    assert [row[0] for row in record["timesteps"]] == [0.0, 333.0, 666.0]


def test_sd_scripts_own_validation_and_the_training_are_untouched(harness):
    losses, own, unet, _ = harness()
    plain_losses, plain_own, plain_unet, log_dir = harness("--loli_validation", "off")
    assert losses == plain_losses and own == plain_own  # bit for bit
    assert all(torch.equal(a, b) for a, b in zip(unet.parameters(), plain_unet.parameters()))
    assert not any(t.startswith("val/") for t in events(log_dir)[0])


def test_unchanged_weights_give_bit_identical_passes(harness):
    _, _, _, log_dir = harness(lr="0")
    logs, _ = events(log_dir)
    for k in range(K):
        first, second = (v for _, v in logs[f"val/cluster_{k:02d}"])
        assert first == second
    assert len({v for tag, values in logs.items() if tag.startswith("val/cluster") for _, v in values[:1]}) == K


def test_the_order_of_the_held_out_batches_does_not_change_the_values(harness):
    _, _, _, straight = harness(lr="0", epochs=1)
    _, _, _, backwards = harness(lr="0", epochs=1, held=list(reversed(harness.held_out)))
    a, b = events(straight)[0], events(backwards)[0]
    for k in range(K):  # the same noise for each sample: only the order of the sum differs
        assert b[f"val/cluster_{k:02d}"][0][1] == pytest.approx(a[f"val/cluster_{k:02d}"][0][1], rel=1e-6)


def test_the_end_of_training_is_measured_when_sd_scripts_schedule_skips_it(harness):
    _, _, _, log_dir = harness("--validate_every_n_epochs", "2", epochs=3)
    logs, _ = events(log_dir)
    # sd-scripts validates after epoch 2 (step 4) only; the plugin adds the end of training (step 6) with the
    # held-out batches it kept from that pass
    assert [s for s, _ in logs["loss/validation/epoch_average"]] == [2]
    assert [s for s, _ in logs["val/mean"]] == [4, 6]
    _, _, _, every_epoch = harness(epochs=3)
    assert [s for s, _ in events(every_epoch)[0]["val/mean"]] == [2, 4, 6]  # nothing added: the end was measured


def test_a_run_without_a_validation_set_says_so_at_its_end_when_validation_was_asked_for(harness, capsys):
    _, _, _, log_dir = harness("--loli_validation", "on", held=[], epochs=1)
    assert not any(t.startswith("val/") for t in events(log_dir)[0])
    assert "sd-scripts never validated in this run" in capsys.readouterr().err
    harness(held=[], epochs=1)  # auto (LoliClustered): most runs have no validation set, and hear nothing of it
    assert "never validated" not in capsys.readouterr().err


def test_validation_alone_with_any_optimizer(kohya, parse):
    adapter.deactivate()
    args = parse("--optimizer_type", "AdamW", "--loli_validation", "on", "--loli_probe_clusters", "4")
    _, _, opt = kohya.train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])
    assert isinstance(opt, torch.optim.AdamW) and adapter.run.validation.clusters == 4 and not adapter.run.stratify
    assert "loli_validation" in opt.state_dict()  # rides in AdamW's state: --save_state / --resume carry it
    from loli_plugin.patches.kohya import requests_validation

    loli = ("--optimizer_type", "LoliClustered")
    assert requests_validation(parse(*loli, "--logging_dir", "x")) and not requests_validation(parse(*loli))
    assert not requests_validation(parse(*loli, "--logging_dir", "x", "--loli_validation", "off"))
    assert not requests_validation(parse("--optimizer_type", "AdamW", "--logging_dir", "x"))
