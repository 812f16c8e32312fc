"""--loss_type loli through musubi-tuner's real compute_loss (base, Ideogram 4's and HiDream-O1's), the
cosine axis per family, the per-cluster logs through extra_step_logs into accelerate's TensorBoard
tracker, and --save_state / --resume through musubi's own save and resume functions."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from loli_plugin import LoliClustered, loli_loss
from loli_plugin.adapters.musubi import ADAPTER as adapter
from loli_plugin.errors import LoliUnsupportedTrainerError

from .conftest import import_family

WEIGHTS = {"mse": 0.3, "l1": 0.5, "cos": 0.2}


def pred_target(shape=(2, 16, 1, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, requires_grad=True), torch.randn(*shape, generator=g)


def call_compute_loss(trainer, args, pred, target, timesteps=None):
    from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler
    from musubi_tuner.training.trainer_base import DiTOutput

    sched = FlowMatchDiscreteScheduler(shift=1.0, reverse=True, solver="euler")
    timesteps = torch.tensor([100.0, 900.0]) if timesteps is None else timesteps
    return trainer.compute_loss(
        args, DiTOutput(pred=pred, target=target), timesteps, sched, torch.float32, torch.float32, 0
    )


def activate_loss(trainer, parse, *argv, family="qwen_image_train_network"):
    args = parse(
        "--optimizer_type",
        "AdamW",
        "--loss_type",
        "loli",
        "--loli_loss_weights",
        "mse=0.3,l1=0.5,cos=0.2",
        *argv,
        family=family,
    )
    trainer.get_optimizer(args, [torch.nn.Parameter(torch.zeros(1))])
    assert adapter.run is not None and adapter.run.loss_weights == WEIGHTS
    return args


def test_loli_loss_through_compute_loss(musubi, parse, trainer):
    t = trainer()
    pred, target = pred_target()
    plain_args = parse("--optimizer_type", "AdamW")
    stock, metrics = call_compute_loss(t, plain_args, pred, target)  # before any activation: musubi's own
    assert torch.equal(stock, F.mse_loss(pred, target, reduction="none").mean()) and metrics == {}
    args = activate_loss(t, parse)
    loss, metrics = call_compute_loss(t, args, pred, target)
    assert torch.equal(loss, loli_loss(pred, target, weights=WEIGHTS, dim=1).mean()) and metrics == {}
    loss.backward()
    assert torch.isfinite(pred.grad).all()


def test_loli_loss_keeps_musubis_weighting_scheme(musubi, parse, trainer):
    from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler
    from musubi_tuner.training.timesteps import compute_loss_weighting_for_sd3

    t = trainer()
    args = activate_loss(t, parse, "--weighting_scheme", "sigma_sqrt")
    pred, target = pred_target()
    timesteps = torch.tensor([100.0, 900.0])
    loss, _ = call_compute_loss(t, args, pred, target, timesteps)
    sched = FlowMatchDiscreteScheduler(shift=1.0, reverse=True, solver="euler")
    weighting = compute_loss_weighting_for_sd3("sigma_sqrt", sched, timesteps, "cpu", torch.float32)
    assert torch.allclose(loss, (loli_loss(pred, target, weights=WEIGHTS, dim=1) * weighting).mean())


@pytest.mark.parametrize(
    "family, shape, argv, dim",
    [
        ("kandinsky5_train_network", (2, 3, 16, 4, 4), [], 2),  # (B, F, C, H, W)
        ("qwen_image_train_network", (2, 3, 16, 4, 4), ["--model_version", "layered"], 2),  # layered: (B, L, C, H, W)
        (
            "hidream_o1_train_network",
            (2, 16, 48),
            [],
            -1,
        ),  # pixel-patch sequence; super().compute_loss, then its DINO term
        ("flux_2_train_network", (2, 128, 4, 4), [], 1),
    ],
)
def test_cosine_runs_along_each_familys_channel_axis(musubi, parse, trainer, family, shape, argv, dim):
    from musubi_tuner.training.trainer_base import DiTOutput

    t = trainer(family)
    args = activate_loss(t, parse, *argv, family=family)
    assert adapter.run.loss_dim == dim
    pred, target = pred_target(shape)
    extra = {"pixel_grid_hw": (2, 2)} if family.startswith("hidream") else {}
    loss, _ = t.compute_loss(
        args,
        DiTOutput(pred=pred, target=target, extra=extra),
        torch.tensor([100.0, 900.0]),
        None,
        torch.float32,
        torch.float32,
        0,
    )
    assert torch.equal(loss, loli_loss(pred, target, weights=WEIGHTS, dim=dim).mean())
    assert not torch.equal(loss, loli_loss(pred, target, weights=WEIGHTS, dim=1 if dim != 1 else -1).mean())


def test_ideogram4_own_compute_loss(musubi, parse, trainer):
    t = trainer("ideogram4_train_network")
    args = activate_loss(t, parse, "--log_loss_stats", family="ideogram4_train_network")
    pred, target = pred_target((2, 16, 4, 4))
    loss, metrics = call_compute_loss(t, args, pred, target)
    assert torch.equal(loss, loli_loss(pred, target, weights=WEIGHTS, dim=1).mean())
    # its diagnostics keep using the real mse_loss
    assert metrics["loss/flipped_pred"] == pytest.approx(F.mse_loss(-pred.detach(), target).item())


def test_a_compute_loss_without_mse_loss_is_refused(musubi, parse, trainer):
    t = trainer()
    args = activate_loss(t, parse)

    def other_loss(args, output, timesteps, noise_scheduler, dit_dtype, network_dtype, global_step):
        return (output.pred - output.target).abs().mean(), {}

    pred, target = pred_target()
    with pytest.raises(LoliUnsupportedTrainerError, match="without torch.nn.functional.mse_loss"):
        musubi.patches.compute_loss(
            adapter,
            other_loss,
            t,
            (args, type("O", (), {"pred": pred, "target": target})(), None, None, None, None, 0),
            {},
        )


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = {p.parent for p in folder.rglob("events.out.tfevents*")}
    ea = EventAccumulator(str(run_dir))
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def tiny_trainer(family="qwen_image_train_network", cls="QwenImageNetworkTrainer"):
    """A family's trainer whose ``call_dit`` is a one-layer model (no DiT to load): everything else, from
    process_batch to compute_loss, is musubi's own."""
    from musubi_tuner.training.trainer_base import DiTOutput

    base = getattr(import_family(family), cls)

    class Tiny(base):
        def call_dit(
            self,
            args,
            accelerator,
            transformer,
            latents,
            batch,
            noise,
            noisy_model_input,
            timesteps,
            network_dtype,
            **kw,
        ):
            pred = transformer(noisy_model_input.squeeze(2)).unsqueeze(2)
            return DiTOutput(pred=pred, target=noise - latents)

    return Tiny()


def train_steps(t, args, accelerator, model, opt, steps, gen, sched):
    """musubi's loop body (trainer_base.py _run_training_loop): process_batch, backward, step, logs."""
    logs = []
    for _ in range(steps):
        latents = torch.randn(2, 4, 1, 8, 8, generator=gen)
        with accelerator.accumulate(model):
            noise = torch.randn(latents.shape, generator=gen)
            loss, metrics = t.process_batch(
                args,
                accelerator,
                model,
                None,
                {"timesteps": None},
                latents,
                noise,
                sched,
                torch.float32,
                torch.float32,
                None,
                0,
            )
            accelerator.backward(loss)
            opt.step()
            opt.zero_grad(set_to_none=True)
        step_logs = {"loss/current": loss.item(), **metrics}
        step_logs.update(t.extra_step_logs(args, step_logs))
        logs.append(step_logs)
        accelerator.log(step_logs, step=len(logs))
    return logs


def test_per_cluster_logs_reach_musubis_trackers(musubi, parse, tmp_path):
    from accelerate import Accelerator
    from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler

    accelerator = Accelerator(
        cpu=True, log_with="tensorboard", project_dir=str(tmp_path)
    )  # musubi's --log_with tensorboard
    t = tiny_trainer()
    args = parse(
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "clusters=3",
        "--loss_type",
        "loli",
        "--timestep_sampling",
        "shift",
    )
    model = torch.nn.Conv2d(4, 4, 3, padding=1)
    _, _, opt, _, _ = t.get_optimizer(args, [{"params": list(model.parameters()), "lr": 1e-3}])
    model, opt = accelerator.prepare(model, opt)
    accelerator.init_trackers("network_train")
    logs = train_steps(
        t,
        args,
        accelerator,
        model,
        opt,
        12,
        torch.Generator().manual_seed(0),
        FlowMatchDiscreteScheduler(shift=1.0, reverse=True, solver="euler"),
    )
    accelerator.end_training()
    assert {"loss/cluster_00", "loss/cluster_01", "loss/cluster_02", "loss/normalized", "loli/cluster"} <= set(logs[-1])
    scalars = tensorboard_scalars(tmp_path)
    assert {
        "loss/current",
        "loss/cluster_00",
        "loss/cluster_01",
        "loss/cluster_02",
        "loss/normalized",
        "loli/cluster",
    } <= set(scalars)
    assert sorted({int(v) for _, v in scalars["loli/cluster"]}) == [0, 1, 2]


def test_self_flow_logs_override_gets_the_per_cluster_scalars(musubi, parse):
    t = import_family("flux_2_train_network_self_flow").Flux2SelfFlowNetworkTrainer()
    args = parse(
        "--optimizer_type", "LoliClustered", "--optimizer_args", "clusters=3", family="flux_2_train_network_self_flow"
    )
    _, _, opt, _, _ = t.get_optimizer(args, [torch.nn.Parameter(torch.zeros(1))])
    adapter.run.drawn_cluster = 1
    adapter.run.record_loss(torch.tensor(2.0))
    logs = t.extra_step_logs(args, {"loss/current": 2.0})
    assert logs["loss/cluster_01"] == 2.0 and logs["loli/cluster"] == 1.0 and opt.clusters == 3


def test_save_state_and_resume_equal_an_uninterrupted_run(musubi, parse, tmp_path):
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler
    from musubi_tuner.utils import train_utils

    sched = FlowMatchDiscreteScheduler(shift=1.0, reverse=True, solver="euler")
    argv = (
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "clusters=4",
        "--loss_type",
        "loli",
        "--timestep_sampling",
        "sigmoid",
        "--output_dir",
        str(tmp_path),
        "--output_name",
        "lora",
        "--save_every_n_steps",
        "3",
    )

    def fresh(*extra):
        set_seed(0)
        accelerator = Accelerator(cpu=True)
        t, args = tiny_trainer(), parse(*argv, *extra)
        model = torch.nn.Conv2d(4, 4, 3, padding=1)
        _, _, opt, _, _ = t.get_optimizer(args, [{"params": list(model.parameters()), "lr": 1e-2}])
        model, opt = accelerator.prepare(model, opt)
        return t, args, accelerator, model, opt

    t, args, accelerator, model, opt = fresh()
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    straight_logs = train_steps(t, args, accelerator, model, opt, 8, gen, sched)
    straight = [p.detach().clone() for p in model.parameters()]
    straight_monitor = adapter.run.monitor.state_dict()
    adapter.deactivate()

    t, args, accelerator, model, opt = fresh()
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(2)
    train_steps(t, args, accelerator, model, opt, 3, gen, sched)
    saved_monitor = adapter.run.monitor.state_dict()
    train_utils.save_and_remove_state_stepwise(args, accelerator, 3)  # what --save_state calls every 3 steps
    gen_state, rng_state = gen.get_state(), torch.get_rng_state()
    adapter.deactivate()

    t, args, accelerator, model, opt = fresh("--resume", str(tmp_path / "lora-step00000003-state"))
    assert t.resume_from_local_or_hf_if_specified(accelerator, args)  # what --resume calls
    assert opt.optimizer.schedule.step == 3 and sum(opt.optimizer.bank_steps) == 3
    assert repr(adapter.run.monitor.state_dict()) == repr(saved_monitor)  # repr: NaN == NaN
    gen.set_state(gen_state)
    torch.set_rng_state(rng_state)
    resumed_logs = train_steps(t, args, accelerator, model, opt, 5, gen, sched)
    assert all(torch.equal(a, b) for a, b in zip(straight, model.parameters()))
    assert [log["loli/cluster"] for log in resumed_logs] == [log["loli/cluster"] for log in straight_logs[3:]]
    resumed_monitor = adapter.run.monitor.state_dict()
    assert resumed_monitor["step"] == straight_monitor["step"] == 8
    assert resumed_monitor["ema"] == pytest.approx(straight_monitor["ema"], nan_ok=True)


def test_a_state_saved_with_other_clusters_is_refused(musubi, parse, tmp_path):
    from accelerate import Accelerator

    from loli_plugin import LoliStateError

    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 2)
    accelerator.prepare(model, LoliClustered(model.parameters(), clusters=4, lr=1e-3))
    accelerator.save_state(str(tmp_path / "state"))
    t = tiny_trainer()
    args = parse(
        "--optimizer_type", "LoliClustered", "--optimizer_args", "clusters=5", "--resume", str(tmp_path / "state")
    )
    _, _, opt5, _, _ = t.get_optimizer(args, [{"params": list(model.parameters()), "lr": 1e-3}])
    accelerator = Accelerator(cpu=True)
    model, opt5 = accelerator.prepare(model, opt5)
    with pytest.raises(LoliStateError, match="clusters"):
        t.resume_from_local_or_hf_if_specified(accelerator, args)
