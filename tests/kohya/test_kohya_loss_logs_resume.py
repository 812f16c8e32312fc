"""--loss_type loli through the real conditional_loss, the per-cluster logs in kohya's accelerator.log,
and resume through accelerate's save_state / load_state."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loli_plugin import loli_loss
from loli_plugin.adapters.kohya import ADAPTER as adapter


def pred_target(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g, requires_grad=True), torch.randn(2, 4, 8, 8, generator=g)


def test_loli_loss_through_conditional_loss(kohya, parse):
    args = parse("--optimizer_type", "AdamW", "--loss_type", "loli", "--loli_loss_weights", "mse=0.3,l1=0.5,cos=0.2")
    originals = {t: kohya.train_util.conditional_loss for t in ("l2",)}  # the unpatched function, before activation
    kohya.train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(1))])
    pred, target = pred_target()
    got = kohya.train_util.conditional_loss(pred, target, "loli", "none", None)
    want = loli_loss(pred, target, weights={"mse": 0.3, "l1": 0.5, "cos": 0.2})
    assert got.shape == pred.shape and torch.equal(got, want)
    assert torch.equal(kohya.train_util.conditional_loss(pred, target, "loli", "mean", None), want.mean())
    # other loss types are the original function's result, bit for bit
    huber_c = torch.full((2,), 0.1)
    for loss_type in ("l2", "l1", "huber", "smooth_l1"):
        for reduction in ("none", "mean"):
            a = kohya.train_util.conditional_loss(pred, target, loss_type, reduction, huber_c)
            b = kohya.train_util.conditional_loss.__wrapped__(pred, target, loss_type, reduction, huber_c)
            assert torch.equal(a, b)
    assert torch.equal(originals["l2"](pred, target, "l2", "none", None), F.mse_loss(pred, target, reduction="none"))


def test_loli_loss_composes_with_masks_snr_and_v_pred_scaling(kohya, parse):
    from diffusers import DDPMScheduler
    from library import custom_train_functions as ctf
    from library.custom_train_functions import prepare_scheduler_for_custom_training

    args = parse("--optimizer_type", "AdamW", "--loss_type", "loli")
    kohya.train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(1))])
    sched = DDPMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000, clip_sample=False
    )
    prepare_scheduler_for_custom_training(sched, "cpu")
    pred, target = pred_target(1)
    timesteps = torch.tensor([10, 900])
    loss = kohya.train_util.conditional_loss(pred, target, "loli", "none", None)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4] = 1.0  # only the top half counts
    loss = ctf.apply_masked_loss(loss, {"alpha_masks": mask.permute(0, 2, 3, 1)[..., 0]})
    loss = loss.mean([1, 2, 3])
    loss = ctf.apply_snr_weight(loss, timesteps, sched, 5.0, False)
    loss = ctf.scale_v_prediction_loss_like_noise_prediction(loss, timesteps, sched)
    loss = ctf.apply_debiased_estimation(loss, timesteps, sched, False)
    loss.mean().backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[:, :, 4:].abs().max() == 0 and pred.grad[:, :, :4].abs().max() > 0


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = {p.parent for p in folder.rglob("events.out.tfevents*")}
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def test_per_cluster_logs_reach_kohyas_trackers(kohya, parse, tmp_path):
    from accelerate import Accelerator

    # sd-scripts' --log_with tensorboard: accelerate's own TensorBoardTracker, whose log() the plugin patches
    accelerator = Accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path))
    args = parse("--optimizer_type", "LoliClustered", "--optimizer_args", "clusters=3", "--max_timestep", "999")
    _, _, opt = kohya.train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])
    accelerator.init_trackers("network_train")  # as train_network.py does, after get_optimizer
    tracker = accelerator.get_tracker("tensorboard", unwrap=False)
    pred, target = pred_target()
    for step in range(12):  # 4 steps per cluster: past the monitor's 3-step warm-up
        t = kohya.train_util.get_timesteps(0, 999, 2, "cpu")  # the training draw remembers its cluster
        k = opt.current_cluster
        assert (t // 333 == k).all()
        kohya.train_util.conditional_loss(pred * 0 + k + 1.0, target * 0, "l1", "none", None)  # loss = k + 1
        opt.step()
        tracker.log({"loss/current": 0.0, "loss/average": 0.0}, step=step + 1)  # NetworkTrainer.accelerator_logging
    # validation: fixed timestep (handed to kohya), its loss is not recorded, its logs pass untouched
    kohya.train_util.get_timesteps(500, 500, 2, "cpu")
    with torch.no_grad():
        kohya.train_util.conditional_loss(pred * 0 + 100.0, target * 0, "l1", "none", None)
    accelerator.log({"loss/validation/step_current": 0.5}, step=13)  # fine_tune.py's route: Accelerator.log
    tracker.log({"loss/current": 0.0}, step=14)
    accelerator.end_training()
    scalars = tensorboard_scalars(tmp_path)
    assert {"loss/cluster_00", "loss/cluster_01", "loss/cluster_02", "loss/normalized", "loli/cluster"} <= set(scalars)
    at_12 = {tag: dict(values)[12] for tag, values in scalars.items() if 12 in dict(values)}
    assert [at_12[f"loss/cluster_{k:02d}"] for k in range(3)] == pytest.approx([1.0, 2.0, 3.0])
    assert at_12["loss/normalized"] == pytest.approx(1.0)
    assert scalars["loss/validation/step_current"] == [(13, 0.5)] and 13 not in dict(scalars["loss/cluster_00"])
    assert dict(scalars["loss/cluster_00"])[14] == pytest.approx(1.0)  # the validation loss did not enter


def train_some(kohya, args, opt, model, steps, gen):
    for _ in range(steps):
        x0 = torch.randn(2, 4, 4, 4, generator=gen)
        t = kohya.train_util.get_timesteps(0, 1000, 2, "cpu")
        pred = model(x0 * (1 - t.view(-1, 1, 1, 1) / 1000))
        loss = kohya.train_util.conditional_loss(pred, x0, args.loss_type, "none", None).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_save_state_and_resume_equal_an_uninterrupted_run(kohya, parse, tmp_path):
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    argv = ("--optimizer_type", "LoliClustered", "--optimizer_args", "clusters=4", "--loss_type", "loli")

    def fresh():
        set_seed(0)
        accelerator = Accelerator(cpu=True)
        args = parse(*argv)
        model = torch.nn.Conv2d(4, 4, 3, padding=1)
        _, _, opt = kohya.train_util.get_optimizer(args, [{"params": model.parameters(), "lr": 1e-2}])
        model, opt = accelerator.prepare(model, opt)
        return accelerator, args, model, opt

    accelerator, args, model, opt = fresh()
    train_some(kohya, args, opt, model, 8, torch.Generator().manual_seed(1))
    straight = [p.detach().clone() for p in model.parameters()]
    straight_monitor = adapter.run.monitor.state_dict()
    adapter.deactivate()

    accelerator, args, model, opt = fresh()
    gen = torch.Generator().manual_seed(1)
    train_some(kohya, args, opt, model, 3, gen)
    saved_monitor = adapter.run.monitor.state_dict()  # 3 recorded losses, travelling with the state
    accelerator.save_state(str(tmp_path / "state"))  # what kohya's --save_state calls
    gen_state = gen.get_state()
    adapter.deactivate()

    accelerator, args, model, opt = fresh()
    accelerator.load_state(str(tmp_path / "state"))  # what kohya's --resume calls (weights_only loads)
    assert opt.optimizer.schedule.step == 3 and sum(opt.optimizer.bank_steps) == 3
    assert repr(adapter.run.monitor.state_dict()) == repr(saved_monitor)  # repr: NaN == NaN
    gen.set_state(gen_state)
    train_some(kohya, args, opt, model, 5, gen)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))
    resumed_monitor = adapter.run.monitor.state_dict()
    assert resumed_monitor["step"] == straight_monitor["step"] == 8
    assert resumed_monitor["ema"] == pytest.approx(straight_monitor["ema"], nan_ok=True)
