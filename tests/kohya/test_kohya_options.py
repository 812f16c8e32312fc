"""The real sd-scripts parser and get_optimizer with the plugin's options."""

import subprocess
import sys
import types

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.adapters.kohya import ADAPTER as adapter
from loli_plugin.errors import LoliUnsupportedTrainerError

from ..drift_support import check_uninstrument_restores_originals


def params():
    torch.manual_seed(0)
    unet = {f"u{i}": torch.nn.Parameter(torch.randn(8, 4)) for i in range(3)}
    te = {f"t{i}": torch.nn.Parameter(torch.randn(4)) for i in range(2)}
    # train_network.py passes each group's params as dict_values, with per-group learning rates
    return [{"params": unet.values(), "lr": 1e-3}, {"params": te.values(), "lr": 5e-4}]


def test_wheel_install_brings_the_pth_hook(kohya):
    # A fresh interpreter of this venv: the hook is registered at start, without importing torch.
    code = "import sys; print('_loli_plugin_autoload' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]
    # and LOLI_PLUGIN_DISABLE=1 turns it off
    env = {"LOLI_PLUGIN_DISABLE": "1", "PATH": ""}
    code = "import _loli_plugin_autoload as a; print(a.INSTALLED)"
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip() == "False"
    )


def test_parser_accepts_loli_options(kohya, parse):
    args = parse(
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "inner=AdamW8bit",
        "clusters=4",
        "--loss_type",
        "loli",
        "--loli_loss_weights",
        "mse=0.5,l1=0.5",
    )
    assert args.loss_type == "loli" and args.loli_loss_weights == "mse=0.5,l1=0.5"
    # the stock choices are all still there
    action = next(a for a in kohya.train_network.setup_parser()._actions if "--loss_type" in a.option_strings)
    assert action.choices == ["l1", "l2", "huber", "smooth_l1", "loli"]


@pytest.mark.parametrize(
    "optimizer_type, optimizer_args",
    [
        ("LoliClustered", ["inner=AdamW", "clusters=4", "schedule=round_robin", "weight_decay=0.01"]),  # bare names
        ("loliclustered", ["inner='AdamW'", "clusters=4", "schedule='round_robin'", "weight_decay=0.01"]),
        ("loli_plugin.LoliClustered", ["inner='AdamW'", "clusters=4", "schedule='round_robin'", "weight_decay=0.01"]),
    ],
)
def test_real_get_optimizer_builds_loli_clustered(kohya, parse, optimizer_type, optimizer_args):
    args = parse("--optimizer_type", optimizer_type, "--optimizer_args", *optimizer_args)
    name, arg_text, opt = kohya.train_util.get_optimizer(args, params())
    assert isinstance(opt, LoliClustered) and name == "loli_plugin.clustered.LoliClustered"
    assert opt.clusters == 4 and opt.inner_name == "AdamW" and opt.schedule.strategy == "round_robin"
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-4] and opt.param_groups[0]["weight_decay"] == 0.01
    assert "clusters=4" in arg_text
    run = adapter.run
    assert run is not None and run.optimizer is opt and run.stratify
    # kohya's own LR scheduler factory accepts it and drives the shared param_groups
    sched = kohya.train_util.get_scheduler_fix(args, opt, 1)
    assert sched.get_last_lr() == [1e-3, 5e-4]


def test_k1_through_kohya_is_bit_exact_with_kohyas_adamw(kohya, parse):
    a = parse("--optimizer_type", "LoliClustered", "--optimizer_args", "inner=AdamW", "clusters=1")
    b = parse("--optimizer_type", "AdamW")
    pa, pb = params(), params()
    _, _, oa = kohya.train_util.get_optimizer(a, pa)
    adapter.deactivate()
    _, _, ob = kohya.train_util.get_optimizer(b, pb)
    ta = [p for g in pa for p in g["params"]]
    tb = [p for g in pb for p in g["params"]]
    for step in range(5):
        for x, y in zip(ta, tb):
            g = torch.sin(x.detach() * (step + 1))
            x.grad, y.grad = g.clone(), g.clone()
        oa.step(), ob.step()
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))


def test_loss_alone_activates_without_the_optimizer(kohya, parse):
    args = parse("--optimizer_type", "AdamW", "--loss_type", "loli", "--loli_loss_weights", "mse=1,cos=0.5")
    _, _, opt = kohya.train_util.get_optimizer(args, params())
    assert isinstance(opt, torch.optim.AdamW)
    run = adapter.run
    assert run.loss_weights == {"mse": 1.0, "cos": 0.5} and not run.stratify


def test_plain_runs_are_not_touched(kohya, parse):
    args = parse("--optimizer_type", "AdamW")
    kohya.train_util.get_optimizer(args, params())
    assert adapter.run is None and not kohya.patches.TRAINING.instrumented


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizer_args", "clusters=0"], "clusters must be >= 1"),
        (["--optimizer_args", "inner=NoSuchOpt"], "NoSuchOpt"),
        (["--optimizer_args", "inner=AdamWScheduleFree"], "schedule-free"),
        (["--loss_type", "loli", "--loli_loss_weights", "mse=-1"], "--loli_loss_weights"),
        (["--min_timestep", "100", "--max_timestep", "105"], "clusters=10 is larger than the 5 timesteps"),
        (["--deepspeed", "--zero_stage", "3", "--offload_optimizer_device", "nvme"], "--offload_optimizer_device"),
        (["--deepspeed", "--offload_optimizer_device", "cpu"], "could not reach accelerate's DeepSpeed config"),
    ],
)
def test_bad_options_fail_before_training(kohya, parse, argv, match):
    args = parse("--optimizer_type", "LoliClustered", *argv)
    with pytest.raises((LoliConfigError, ImportError, ValueError), match=match):
        kohya.train_util.get_optimizer(args, params())


class _Accelerator:
    """What the adapter reads of accelerate's Accelerator under --deepspeed: the DeepSpeed plugin's config
    (library/deepspeed_utils.py prepare_deepspeed_plugin), and after prepare() the engine."""

    def __init__(self, config, basic_optimizer=None, processes=1):
        self.num_processes = processes
        self.state = types.SimpleNamespace(deepspeed_plugin=types.SimpleNamespace(deepspeed_config=config))
        engine = types.SimpleNamespace(basic_optimizer=basic_optimizer, optimizer=basic_optimizer)
        self.deepspeed_engine_wrapped = types.SimpleNamespace(engine=engine)


def test_deepspeed_configs_the_banks_cannot_work_under_are_refused_at_get_optimizer(kohya, parse, monkeypatch):
    args = parse("--optimizer_type", "LoliClustered", "--deepspeed")
    monkeypatch.setattr(adapter, "accelerator", _Accelerator({"optimizer": {"type": "AdamW"}}))
    with pytest.raises(LoliConfigError, match="'optimizer' section"):
        kohya.train_util.get_optimizer(args, params())
    assert adapter.run is None
    full_fp16 = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    full_fp16["fp16"] = {"enabled": True, "fp16_master_weights_and_grads": True}
    monkeypatch.setattr(adapter, "accelerator", _Accelerator(full_fp16))
    with pytest.raises(LoliConfigError, match="--full_fp16 / --fp16_master_weights_and_gradients"):
        kohya.train_util.get_optimizer(args, params())


def test_save_state_under_deepspeed_is_refused(kohya, parse, monkeypatch):
    """Every sd-scripts script saves the last state after ``accelerator.end_training()``, which accelerate 1.6.0
    ends with the process group destroyed: measured, ``train_network.py --deepspeed --save_state`` on one process
    stops in DeepSpeed's save_checkpoint (its barrier) before writing the final LoRA. With a later accelerate,
    NetworkTrainer.train still saves on the main process only, while DeepSpeed's save_checkpoint waits for every
    rank (tests/multiprocess/zero_loop.py saving on rank 0 alone hangs)."""
    from loli_plugin.adapters import kohya as kohya_adapter

    adapter.deactivate()
    args = parse("--optimizer_type", "LoliClustered", "--deepspeed", "--save_state")
    monkeypatch.setattr(adapter, "accelerator", _Accelerator({"zero_optimization": {"stage": 2}}, processes=1))
    assert kohya_adapter._end_training_destroys_process_group()  # sd-scripts' accelerate 1.6.0
    with pytest.raises(LoliConfigError, match="destroys the process group"):
        kohya.train_util.get_optimizer(args, params())
    assert adapter.run is None
    monkeypatch.setattr(kohya_adapter, "_end_training_destroys_process_group", lambda: False)  # a later accelerate
    kohya.train_util.get_optimizer(args, params())  # one process: it saves on every rank there is
    assert adapter.run is not None
    adapter.deactivate()
    monkeypatch.setattr(adapter, "accelerator", _Accelerator({"zero_optimization": {"stage": 2}}, processes=2))
    with pytest.raises(LoliConfigError, match="would hang at its first save"):
        kohya.train_util.get_optimizer(args, params())


def test_gradient_accumulation_under_deepspeed_on_several_processes_is_refused_where_accelerate_would_crash(
    kohya, parse, monkeypatch
):
    """sd-scripts' accelerate 1.6.0 steps the engine inside DeepSpeed's no_sync (DeepSpeed 0.16.0 on), which
    stops every stage at the first micro-batch (measured: tests/kohya/test_kohya_deepspeed_e2e.py's docstring)."""
    pytest.importorskip(
        "deepspeed", reason="DeepSpeed is not installed in this venv: DS_BUILD_OPS=0 pip install deepspeed"
    )
    adapter.deactivate()
    accelerator = _Accelerator({"zero_optimization": {"stage": 1}}, processes=2)
    monkeypatch.setattr(adapter, "accelerator", accelerator)
    args = parse("--optimizer_type", "LoliClustered", "--deepspeed", "--gradient_accumulation_steps", "2")
    with pytest.raises(LoliConfigError, match="--gradient_accumulation_steps 1"):
        kohya.train_util.get_optimizer(args, params())
    assert adapter.run is None
    kohya.train_util.get_optimizer(parse("--optimizer_type", "LoliClustered", "--deepspeed"), params())  # 1: fine
    adapter.deactivate()
    # accelerate's sync_each_batch keeps accumulate() out of no_sync: nothing to refuse
    accelerator.gradient_state = types.SimpleNamespace(plugin_kwargs={"sync_each_batch": True})
    kohya.train_util.get_optimizer(args, params())
    assert adapter.run is not None


def test_deepspeed_cpu_offload_keeps_loliclustered_and_the_engine_is_checked_at_the_first_draw(
    kohya, parse, monkeypatch
):
    config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    accelerator = _Accelerator(config)
    monkeypatch.setattr(adapter, "accelerator", accelerator)
    args = parse("--optimizer_type", "LoliClustered", "--deepspeed", "--offload_optimizer_device", "cpu")
    _, _, opt = kohya.train_util.get_optimizer(args, params())
    assert config["zero_force_ds_cpu_optimizer"] is False  # accelerate keeps it (no DeepSpeedCPUAdam)
    # the engine accelerate built steps something else: the first draw stops the run, before any step
    accelerator.deepspeed_engine_wrapped.engine.basic_optimizer = torch.optim.AdamW(params())
    with pytest.raises(LoliConfigError, match="steps AdamW, not LoliClustered"):
        adapter.run.take_cluster()
    assert opt.schedule.step == 0


def test_unsupported_sd_scripts_version_fails_loudly(kohya, parse, monkeypatch):
    # An older sd-scripts (v0.9.x) had conditional_loss(model_pred, target, reduction, loss_type, huber_c).
    def old_conditional_loss(model_pred, target, reduction, loss_type, huber_c=None):
        raise AssertionError("must not be called")

    monkeypatch.setattr(kohya.train_util, "conditional_loss", old_conditional_loss)
    args = parse("--optimizer_type", "LoliClustered")
    with pytest.raises(
        LoliUnsupportedTrainerError, match=r"conditional_loss: expected parameters .*v0\.10\.0 or newer"
    ):
        kohya.train_util.get_optimizer(args, params())


def test_doctor_reports_the_checkout(kohya, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "doctor", str(kohya.dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    assert "kohya-ss/sd-scripts at" in out.stdout and "48d368f" in out.stdout
    assert (
        "library.train_util.get_optimizer: ok" in out.stdout
        and "library.flux_train_utils.get_noisy_model_input_and_timesteps: ok" in out.stdout
    )
    assert "accelerate.tracking.TensorBoardTracker.log: ok" in out.stdout
    assert "start-up hook: active (pth)" in out.stdout and out.stdout.strip().endswith("result: every patch fits")


def test_doctor_without_the_trainers_dependencies_says_wrong_venv(kohya, tmp_path):
    """The real sd-scripts seen from an interpreter that cannot import torchvision (a None entry in
    sys.modules: what a venv without it gives), as when doctor runs from another venv: "wrong venv",
    with what to do, not "incompatible trainer"."""
    code = (
        "import sys; sys.modules['torchvision'] = None; from loli_plugin.cli import main; "
        "raise SystemExit(main(['doctor', sys.argv[1]]))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(kohya.dir)], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
    result = out.stdout.strip().splitlines()[-1]
    assert result.startswith("result: wrong venv:") and "(torchvision)" in result, result
    assert "library.train_util.get_optimizer: not checked" in out.stdout
    assert "incompatible" not in out.stdout


@pytest.mark.parametrize(
    "script, toml", [("sdxl_train_network", "sdxl_lora_loli.toml"), ("flux_train_network", "flux_lora_loli.toml")]
)
def test_example_toml_configs_build_the_optimizer(kohya, script, toml, monkeypatch):
    import importlib
    from pathlib import Path

    example = Path(__file__).resolve().parents[2] / "examples" / "kohya" / toml
    parser = importlib.import_module(script).setup_parser()
    monkeypatch.setattr(sys, "argv", [script, "--config_file", str(example)])  # read_config_from_file re-parses argv
    args = parser.parse_args()
    args = kohya.train_util.read_config_from_file(args, parser)
    assert args.optimizer_type == "LoliClustered" and args.loss_type == "loli"
    name, _, opt = kohya.train_util.get_optimizer(args, params())
    assert isinstance(opt, LoliClustered) and opt.inner_name == "AdamW8bit" and opt.clusters == 10
    assert adapter.run.loss_weights == {"mse": 0.4, "l1": 0.4, "cos": 0.2}


def test_uninstrument_puts_every_original_object_back(kohya):
    # parser, get_optimizer, prepare_accelerator, loss, SD timesteps, 3 families (5 patches), 7 trackers
    assert check_uninstrument_restores_originals(adapter) >= 15


@pytest.mark.parametrize("inner", ["AdamWClusteredSecondMoment", "AdaFactor"])
def test_other_inners_through_the_real_get_optimizer(kohya, parse, inner):
    """inner=AdamWClusteredSecondMoment (shared first moment, per-cluster second moment) and
    inner=AdaFactor (driven by --learning_rate; sd-scripts' relative_step default does not apply)."""
    args = parse("--optimizer_type", "LoliClustered", "--optimizer_args", f"inner={inner}", "clusters=3")
    _, _, opt = kohya.train_util.get_optimizer(args, params())
    assert isinstance(opt, LoliClustered) and opt.inner_name == inner and opt.clusters == 3
    flat = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in flat]
    for s in range(3):
        for p in flat:
            p.grad = torch.sin(p.detach() * (s + 1)) + 0.1
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, flat))
    assert opt.bank_steps == [1, 1, 1]


def test_the_dotted_route_without_the_hook_is_refused(kohya, tmp_path):
    """--optimizer_type loli_plugin.LoliClustered reaches sd-scripts' own dotted-class branch even when
    the start-up hook did not run; the optimizer then refuses to be built, saying why and how to fix it,
    instead of training with sd-scripts' stock timesteps."""
    code = (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(kohya.dir)!r})\n"
        "from library import train_util\n"
        "import train_network\n"
        "args = train_network.setup_parser().parse_args(['--optimizer_type', 'loli_plugin.LoliClustered'])\n"
        "train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])\n"
    )
    env = {"LOLI_PLUGIN_DISABLE": "1", "PATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=kohya.dir)
    assert proc.returncode != 0 and "LoliUnsupportedTrainerError" in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("LoliUnsupportedTrainerError") :]
    assert "being built inside kohya-ss/sd-scripts" in message and "start-up hook did not run" in message
    assert "python -m loli_plugin.launch" in message and "LOLI_PLUGIN_DISABLE" in message
