"""The real musubi-tuner parsers, NetworkTrainer.get_optimizer and NetworkTrainer.train with the plugin's
options, on every LoRA script; the checks a Loli run gets before anything is loaded."""

import importlib.util
import subprocess
import sys

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError
from loli_plugin.adapters.musubi import ADAPTER as adapter
from loli_plugin.errors import LoliUnsupportedTrainerError

from ..drift_support import check_uninstrument_restores_originals
from .conftest import FAMILIES, PACKAGE, REQUIRED, family_parser, import_family


def params():
    torch.manual_seed(0)
    # network.prepare_optimizer_params: one group per LoRA with its own lr
    return [
        {"params": [torch.nn.Parameter(torch.randn(8, 4)) for _ in range(3)], "lr": 1e-3},
        {"params": [torch.nn.Parameter(torch.randn(4))], "lr": 5e-4},
    ]


def test_wheel_install_brings_the_pth_hook(musubi):
    code = "import sys; print('_loli_plugin_autoload' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False"]


def test_families_are_every_lora_script_of_the_tree(musubi):
    scripts = {p.stem for p in PACKAGE.glob("*_train_network*.py")}
    assert scripts == set(FAMILIES)
    # and every one of them has its channel axis in the plugin's table (the cosine of --loss_type loli)
    for family, (cls, _) in FAMILIES.items():
        trainer_cls = getattr(import_family(family), cls)
        assert musubi.patches.channel_dim(trainer_cls, None) in (1, 2, -1), family


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_lora_script_parses_the_loli_options(musubi, family):
    required = REQUIRED.get(family, [])
    args = family_parser(family).parse_args(
        [
            "--dit",
            "x",
            *required,
            "--optimizer_type",
            "LoliClustered",
            "--optimizer_args",
            "inner=AdamW8bit",
            "clusters=10",
            "--loss_type",
            "loli",
            "--loli_loss_weights",
            "mse=0.5,l1=0.5",
        ]
    )
    assert args.optimizer_type == "LoliClustered" and args.optimizer_args == ["inner=AdamW8bit", "clusters=10"]
    assert args.loss_type == "loli" and args.loli_loss_weights == "mse=0.5,l1=0.5"
    plain = family_parser(family).parse_args(["--dit", "x", *required])
    assert plain.loss_type == "mse" and plain.loli_loss_weights is None


ROUTES = {
    "short": ("LoliClustered", ["inner=AdamW8bit", "clusters=10"]),
    "dotted": ("loli_plugin.LoliClustered", ["inner='AdamW8bit'", "clusters=10"]),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_lora_script_builds_loli_clustered(musubi, parse, trainer, family, route):
    optimizer_type, optimizer_args = ROUTES[route]
    args = parse(
        "--optimizer_type", optimizer_type, "--optimizer_args", *optimizer_args, "weight_decay=0.01", family=family
    )
    name, arg_text, opt, train_fn, eval_fn = trainer(family).get_optimizer(args, params())
    assert isinstance(opt, LoliClustered) and name == "loli_plugin.clustered.LoliClustered"
    assert opt.clusters == 10 and opt.inner_name == "AdamW8bit" and "clusters=10" in arg_text
    assert [g["lr"] for g in opt.param_groups] == [1e-3, 5e-4] and opt.param_groups[0]["weight_decay"] == 0.01
    run = adapter.run
    assert run is not None and run.optimizer is opt and run.stratify
    assert musubi.patches.TRAINING.instrumented
    train_fn(), eval_fn()  # musubi calls them around sampling and saving: no-ops for a non-schedule-free optimizer
    before = [p.detach().clone() for g in opt.param_groups for p in g["params"]]
    for p in (p for g in opt.param_groups for p in g["params"]):
        p.grad = torch.ones_like(p)
    opt.step()  # bitsandbytes' AdamW8bit runs on the CPU
    assert all(not torch.equal(a, p) for a, p in zip(before, (p for g in opt.param_groups for p in g["params"])))


def test_musubis_lr_scheduler_drives_the_shared_groups(musubi, parse, trainer):
    args = parse(
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "clusters=4",
        "--lr_scheduler",
        "cosine",
        "--max_train_steps",
        "10",
    )
    t = trainer()
    _, _, opt, _, _ = t.get_optimizer(args, params())
    sched = t.get_lr_scheduler(args, opt, 1)
    assert sched.get_last_lr() == [1e-3, 5e-4]
    for p in (p for g in opt.param_groups for p in g["params"]):
        p.grad = torch.ones_like(p)
    opt.step(), sched.step()
    assert sched.get_last_lr()[0] < 1e-3 and opt.param_groups[0]["lr"] == sched.get_last_lr()[0]


def test_a_toml_config_file_carries_the_options(musubi, trainer, tmp_path, monkeypatch):
    config = tmp_path / "lora.toml"
    config.write_text(
        'optimizer_type = "LoliClustered"\noptimizer_args = ["inner=AdamW8bit", "clusters=10"]\n'
        'loss_type = "loli"\nloli_loss_weights = "mse=0.4,l1=0.4,cos=0.2"\n'
    )
    parser = family_parser("qwen_image_train_network")
    monkeypatch.setattr(sys, "argv", ["qwen_image_train_network.py", "--dit", "x", "--config_file", str(config)])
    from musubi_tuner.training.parser_common import read_config_from_file

    args = read_config_from_file(parser.parse_args(), parser)  # what main() does; it re-parses sys.argv
    assert args.optimizer_type == "LoliClustered" and args.loss_type == "loli"
    _, _, opt, _, _ = trainer().get_optimizer(args, params())
    assert isinstance(opt, LoliClustered) and opt.inner_name == "AdamW8bit" and opt.clusters == 10
    assert adapter.run.loss_weights == {"mse": 0.4, "l1": 0.4, "cos": 0.2}


def test_k1_is_bit_exact_with_musubis_adamw(musubi, parse, trainer):
    a = parse("--optimizer_type", "LoliClustered", "--optimizer_args", "inner=AdamW", "clusters=1", "weight_decay=0.01")
    b = parse("--optimizer_type", "AdamW", "--optimizer_args", "weight_decay=0.01")
    pa, pb = params(), params()
    _, _, oa, _, _ = trainer().get_optimizer(a, pa)
    adapter.deactivate()
    _, name_b, ob, _, _ = trainer().get_optimizer(b, pb)
    assert isinstance(ob, torch.optim.AdamW)
    ta = [p for g in pa for p in g["params"]]
    tb = [p for g in pb for p in g["params"]]
    for step in range(5):
        for x, y in zip(ta, tb):
            g = torch.sin(x.detach() * (step + 1))
            x.grad, y.grad = g.clone(), g.clone()
        oa.step(), ob.step()
    assert all(torch.equal(x, y) for x, y in zip(ta, tb))


def test_loss_alone_activates_without_the_optimizer(musubi, parse, trainer):
    args = parse("--optimizer_type", "AdamW", "--loss_type", "loli", "--loli_loss_weights", "mse=1,cos=0.5")
    _, _, opt, _, _ = trainer().get_optimizer(args, params())
    assert isinstance(opt, torch.optim.AdamW)
    run = adapter.run
    assert run.loss_weights == {"mse": 1.0, "cos": 0.5} and not run.stratify and run.loss_dim == 1


def test_plain_runs_are_not_touched(musubi, parse, trainer):
    args = parse("--optimizer_type", "AdamW8bit")
    trainer().get_optimizer(args, params())
    assert adapter.run is None and not musubi.patches.TRAINING.instrumented


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--optimizer_args", "clusters=0"], "clusters must be >= 1"),
        (["--optimizer_args", "inner=NoSuchOpt"], "NoSuchOpt"),
        (["--optimizer_args", "inner=AdamWScheduleFree"], "schedule-free"),
        (["--loss_type", "loli", "--loli_loss_weights", "mse=-1"], "--loli_loss_weights"),
        (["--min_timestep", "100", "--max_timestep", "105"], "clusters=10 is larger than the 5 timesteps"),
        (["--timestep_sampling", "qinglong_qwen", "--preserve_distribution_shape"], "--preserve_distribution_shape"),
        (["--weighting_scheme", "mode", "--mode_scale", "3"], "--mode_scale"),
        (
            [
                "--timestep_sampling",
                "shift",
                "--preserve_distribution_shape",
                "--min_timestep",
                "999",
                "--max_timestep",
                "1000",
                "--sigmoid_scale",
                "-8",
            ],
            None,
        ),  # fine here; a range without mass is refused at the first draw (timesteps tests)
    ],
)
def test_bad_options_fail_before_training(musubi, parse, trainer, argv, match):
    args = parse("--optimizer_type", "LoliClustered", *argv)
    if match is None:
        trainer().get_optimizer(args, params())
        return
    with pytest.raises((LoliConfigError, ImportError, ValueError), match=match):
        trainer().get_optimizer(args, params())


def test_accelerate_set_to_deepspeed_is_refused_before_loading_anything(musubi, parse, trainer, monkeypatch):
    """musubi-tuner offers no DeepSpeed; accelerate turns it on from its own config (accelerate launch sets this)."""
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(LoliConfigError, match="musubi-tuner does not offer DeepSpeed"):
        trainer().train(parse("--optimizer_type", "LoliClustered"))
    plain = parse("--optimizer_type", "AdamW")  # not a Loli run: musubi-tuner's own first check
    with pytest.raises(ValueError, match="dataset_config is required"):
        trainer().train(plain)


def test_train_checks_a_loli_run_before_loading_anything(musubi, parse, trainer):
    # musubi's own first check (no --dataset_config) comes after the plugin's
    bad = parse(
        "--optimizer_type", "LoliClustered", "--timestep_sampling", "qinglong_flux", "--preserve_distribution_shape"
    )
    with pytest.raises(LoliConfigError, match="qinglong_flux"):
        trainer().train(bad)
    good = parse("--optimizer_type", "LoliClustered", "--loss_type", "loli")
    with pytest.raises(ValueError, match="dataset_config is required"):
        trainer().train(good)
    plain = parse("--optimizer_type", "AdamW")
    with pytest.raises(ValueError, match="dataset_config is required"):
        trainer().train(plain)


@pytest.mark.parametrize("script, cls", [("qwen_image_train", "QwenImageTrainer"), ("zimage_train", "ZImageTrainer")])
def test_full_fine_tuning_scripts_are_refused(musubi, parse, script, cls):
    # they call NetworkTrainer.get_optimizer but run their own loop, where neither the loss nor the logs are reached
    t = getattr(import_family(script), cls)()
    args = parse("--optimizer_type", "LoliClustered")
    with pytest.raises(LoliUnsupportedTrainerError, match=f"{cls} runs its own training loop"):
        t.get_optimizer(args, params())
    assert adapter.run is None


def test_an_override_the_plugin_has_not_read_is_refused(musubi, parse):
    base = import_family("qwen_image_train_network").QwenImageNetworkTrainer

    class Newer(base):
        def get_noisy_model_input_and_timesteps(self, args, noise, latents, timesteps, noise_scheduler, device, dtype):
            raise AssertionError("must not be reached")

    args = parse("--optimizer_type", "LoliClustered")
    with pytest.raises(LoliUnsupportedTrainerError, match="Newer.get_noisy_model_input_and_timesteps overrides"):
        Newer().get_optimizer(args, params())
    # the same trainer with the loss alone is fine: the sampler is not used
    Newer().get_optimizer(parse("--optimizer_type", "AdamW", "--loss_type", "loli"), params())
    assert adapter.run is not None and not adapter.run.stratify


def test_a_family_script_run_as_its_own_module_gets_its_overrides_patched(musubi, parse, tmp_path):
    # `accelerate launch src/musubi_tuner/hidream_o1_train_network.py` runs the script as __main__: its classes are
    # not those of musubi_tuner.hidream_o1_train_network. Load the same file under another module name.
    spec = importlib.util.spec_from_file_location("loli_test_hidream_script", PACKAGE / "hidream_o1_train_network.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        args = parse(
            "--optimizer_type",
            "LoliClustered",
            "--optimizer_args",
            "clusters=4",
            "--timestep_sampling",
            "uniform",
            family="hidream_o1_train_network",
        )
        t = module.HiDreamO1NetworkTrainer()
        _, _, opt, _, _ = t.get_optimizer(args, params())
        patched = [inst for inst, scope in adapter.instrumentors() if any(p.module == spec.name for p in inst.patches)]
        assert len(patched) == 1 and [p.attr for p in patched[0].patches if patched[0].is_applied(p)] == [
            "HiDreamO1NetworkTrainer.get_noisy_model_input_and_timesteps"
        ]
        k = opt.current_cluster
        noise = torch.zeros(8, 8, 12)
        _, ts = t.get_noisy_model_input_and_timesteps(args, noise, noise, None, None, "cpu", torch.float32)
        assert ((ts - 1) / 1000 >= k / 4).all() and ((ts - 1) / 1000 < (k + 1) / 4 + 1e-6).all()
    finally:
        adapter.deactivate()
        del sys.modules[spec.name]


def test_the_dotted_route_without_the_hook_is_refused(musubi, tmp_path):
    code = (
        "import torch\n"
        "from musubi_tuner.qwen_image_train_network import "
        "QwenImageNetworkTrainer, setup_parser_common, qwen_image_setup_parser\n"
        "args = qwen_image_setup_parser(setup_parser_common())"
        ".parse_args(['--dit', 'x', '--optimizer_type', 'loli_plugin.LoliClustered'])\n"
        "QwenImageNetworkTrainer().get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])\n"
    )
    env = {"LOLI_PLUGIN_DISABLE": "1", "PATH": ""}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode != 0 and "LoliUnsupportedTrainerError" in proc.stderr
    assert "start-up hook did not run" in proc.stderr and "python -m loli_plugin.launch" in proc.stderr


def test_the_launcher_turns_the_hook_on_where_pth_files_do_not_run(musubi):
    # LOLI_PLUGIN_DISABLE=1 stands for "the .pth did not run"; the launcher installs the finder itself
    script = ["src/musubi_tuner/qwen_image_train_network.py", "--help"]
    env = {"LOLI_PLUGIN_DISABLE": "1", "PATH": ""}
    off = subprocess.run([sys.executable, *script], capture_output=True, text=True, env=env, cwd=musubi.dir)
    on = subprocess.run(
        [sys.executable, "-m", "loli_plugin.launch", *script], capture_output=True, text=True, env=env, cwd=musubi.dir
    )
    assert off.returncode == 0 and on.returncode == 0, on.stderr[-2000:]
    assert (
        "--loli_loss_weights" not in off.stdout
        and "--loss_type {mse,loli}" in on.stdout
        and "--loli_loss_weights" in on.stdout
    )


def test_doctor_reports_the_checkout(musubi, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "doctor", str(musubi.dir)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kohya-ss/musubi-tuner at" in out.stdout and "30c658c" in out.stdout
    assert "musubi_tuner.training.trainer_base.NetworkTrainer.get_noisy_model_input_and_timesteps: ok" in out.stdout
    assert "musubi_tuner.ideogram4_train_network.Ideogram4NetworkTrainer.compute_loss: ok" in out.stdout
    assert "start-up hook: active (pth)" in out.stdout and out.stdout.strip().endswith("result: every patch fits")


def test_uninstrument_puts_every_original_object_back(musubi):
    # parser, train, get_optimizer, sampler, density clamp, loss, logs, the three family overrides, and the
    # validation's process_batch
    assert check_uninstrument_restores_originals(adapter) == 11
