"""Never the stock sampler under LoliClustered (issue 19), against trainer layouts written here: a
LoliClustered built while a trainer's package is imported, in a layout no patch of its adapter reaches
(an older or newer version, a fork), is refused before any step, naming the trainer, its version, the
supported minimum and what to do; a plain PyTorch loop (no trainer imported) and a loop of the user's
own beside a supported trainer's helpers keep working; an old layout the plugin knows is said in one
line at the trainer's import and by `loli-plugin doctor`, and a plain run there is untouched.

The real musubi-tuner v0.2.15 tree is exercised in tests/musubi/test_musubi_old_layout.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from loli_plugin.cli import main as cli_main

# the core venv installs loli-plugin editable (no .pth): install the finder as the .pth line would (it
# does nothing under LOLI_PLUGIN_DISABLE=1)
STARTUP = "import _loli_plugin_autoload as a; a.install(); "

# A trainer in the style of kohya's scripts, in whatever package it is put: parse --optimizer_type and
# --optimizer_args as sd-scripts and musubi-tuner do (a dotted name is imported, any other is torch.optim's),
# then step with its own, stock, timesteps. Written here: no trainer code is copied.
TRAINER = """
import argparse, ast, importlib, sys
import torch


def setup_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer_type", default="AdamW")
    parser.add_argument("--optimizer_args", nargs="*", default=[])
    return parser


class NetworkTrainer:
    def get_optimizer(self, args, params):
        kwargs = {}
        for arg in args.optimizer_args:
            key, value = arg.split("=", 1)
            kwargs[key] = ast.literal_eval(value)
        if "." in args.optimizer_type:
            module, name = args.optimizer_type.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), name)
        else:
            cls = getattr(torch.optim, args.optimizer_type)
        return cls(params, lr=1e-2, **kwargs)

    def train(self, args):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4))]
        optimizer = self.get_optimizer(args, params)
        print("optimizer", type(optimizer).__name__, flush=True)
        for step in range(3):
            t = torch.randint(0, 1000, (4,))  # the trainer's stock timesteps
            ((params[0] ** 2).sum() * t.float().mean() / 1000).backward()
            optimizer.step()
            optimizer.zero_grad()
            print("step", step, flush=True)
        print("final", [float(x).hex() for x in params[0].detach()], flush=True)


def main():
    NetworkTrainer().train(setup_parser().parse_args())
"""


def write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


def run(tree: Path, code: str, *argv: str, env: dict | None = None):
    full_env = {**os.environ, "PYTHONPATH": str(tree), **(env or {})}
    if "LOLI_PLUGIN_DISABLE" not in (env or {}):
        full_env.pop("LOLI_PLUGIN_DISABLE", None)
    return subprocess.run(
        [sys.executable, "-c", code, *argv], capture_output=True, text=True, env=full_env, cwd=tree, timeout=300
    )


def plugin_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("loli-plugin")]


DOTTED = ["--optimizer_type", "loli_plugin.LoliClustered", "--optimizer_args", "inner='AdamW'", "clusters=4"]
SHORT = ["--optimizer_type", "LoliClustered", "--optimizer_args", "inner=AdamW", "clusters=4"]
PLAIN = ["--optimizer_type", "AdamW"]


@pytest.fixture
def unknown_musubi(tmp_path):
    """A musubi_tuner package in a layout loli-plugin does not know: no training/trainer_base.py, no
    hv_train_network.py (a fork, or a future musubi-tuner that moved NetworkTrainer again)."""
    return write(
        tmp_path / "unknown",
        {
            "pyproject.toml": '[project]\nname = "musubi-tuner"\nversion = "9.9.9"\n',
            ".exported-commit": "abcdef1234567890abcdef1234567890abcdef12\n",
            "src/musubi_tuner/__init__.py": "",
            "src/musubi_tuner/engine/trainer.py": TRAINER,
        },
    )


@pytest.fixture
def old_musubi(tmp_path):
    """The layout of musubi-tuner before v0.3.0: NetworkTrainer in hv_train_network.py."""
    return write(
        tmp_path / "old",
        {
            "pyproject.toml": '[project]\nname = "musubi-tuner"\nversion = "0.2.15"\n',
            ".exported-commit": "8ec957745626317e39f04f8547910e353553354b\n",
            "src/musubi_tuner/__init__.py": "",
            "src/musubi_tuner/hv_train_network.py": TRAINER,
        },
    )


def run_trainer(tree: Path, module: str, argv, **kw):
    return run(tree / "src", STARTUP + f"import sys; from musubi_tuner.{module} import main; main()", *argv, **kw)


@pytest.mark.parametrize("layout, module", [("unknown", "engine.trainer"), ("old", "hv_train_network")])
def test_the_dotted_route_is_refused_before_any_step(unknown_musubi, old_musubi, layout, module):
    tree = unknown_musubi if layout == "unknown" else old_musubi
    out = run_trainer(tree, module, DOTTED)
    assert out.returncode != 0 and "step" not in out.stdout and "optimizer LoliClustered" not in out.stdout
    error = out.stderr[out.stderr.index("LoliUnsupportedTrainerError") :]
    version = "9.9.9, commit abcdef1" if layout == "unknown" else "0.2.15, commit 8ec9577"
    assert f"kohya-ss/musubi-tuner {version}" in error  # the trainer and its version
    assert "v0.3.4 or later" in error and "Update kohya-ss/musubi-tuner to v0.3.4 or later" in error  # minimum, fix
    assert "stock timesteps" in error
    why = "hv_train_network.py (musubi-tuner before v0.3.0)" if layout == "old" else "no musubi_tuner/training/"
    assert why in error
    # the import said it first, in one line naming what this run asked for
    (line,) = plugin_lines(out.stderr)
    assert why in line and "This run asks for --optimizer_type loli_plugin.LoliClustered" in line


@pytest.mark.parametrize(
    "argv, asked, own_error",
    [
        (SHORT, "--optimizer_type LoliClustered", "ValueError: malformed node or string"),  # inner=AdamW
        (PLAIN + ["--loss_type", "loli"], "--loss_type loli", "unrecognized arguments: --loss_type loli"),
    ],
)
def test_the_other_routes_fail_in_the_trainer_after_the_plugins_line(old_musubi, argv, asked, own_error):
    """The short name and --loss_type loli need patches this layout cannot take: the trainer's own error
    stops them (its optimizer_args parser, like musubi-tuner's, cannot read inner=AdamW; argparse knows no
    --loss_type); the plugin's one line, printed at the trainer's import, already said why."""
    out = run_trainer(old_musubi, "hv_train_network", argv)
    assert out.returncode != 0 and "step" not in out.stdout
    (line,) = plugin_lines(out.stderr)
    assert line.startswith("loli-plugin: kohya-ss/musubi-tuner 0.2.15, commit 8ec9577")
    assert f"This run asks for {asked}" in line and "Update kohya-ss/musubi-tuner to v0.3.4 or later" in line
    assert out.stderr.index(line) < out.stderr.index(own_error)  # before the trainer's own error


def test_a_plain_run_on_an_old_layout_is_untouched_but_told_once(old_musubi):
    out = run_trainer(old_musubi, "hv_train_network", PLAIN)
    stock = run_trainer(old_musubi, "hv_train_network", PLAIN, env={"LOLI_PLUGIN_DISABLE": "1"})
    assert out.returncode == 0 and stock.returncode == 0, out.stderr
    assert out.stdout == stock.stdout and "step 2" in out.stdout  # bit for bit the same training
    (line,) = plugin_lines(out.stderr)
    assert "NetworkTrainer in hv_train_network.py (musubi-tuner before v0.3.0)" in line
    assert "Plain runs are unaffected; runs with Loli options are refused" in line
    assert plugin_lines(stock.stderr) == []


def test_a_users_own_loop_beside_an_unknown_trainer_is_refused_with_the_way_out(unknown_musubi):
    code = STARTUP + textwrap.dedent("""
        import torch, musubi_tuner
        from loli_plugin import LoliClustered
        LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)
    """)
    out = run(unknown_musubi / "src", code)
    assert "LoliUnsupportedTrainerError" in out.stderr
    assert "in a training loop of your own, do not import musubi_tuner" in out.stderr


PLAIN_LOOP = textwrap.dedent("""
    import sys, torch
    from loli_plugin import LoliClustered
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(3))
    start = w.detach().clone()
    opt = LoliClustered([w], inner="AdamW", clusters=3, lr=1e-2)
    for step in range(6):
        (w ** 2).sum().backward()
        opt.step()
        opt.zero_grad()
    print("trainers:", sorted({"library", "modules", "musubi_tuner"} & set(sys.modules)))
    print("moved:", bool((w.detach() - start).abs().min() > 0), "clusters stepped:", sum(n > 0 for n in opt.bank_steps))
""")


def test_a_plain_pytorch_loop_builds_and_steps_loli_clustered(tmp_path):
    """No trainer imported: LoliClustered is the optimizer of the user's own loop, as documented."""
    out = run(tmp_path, STARTUP + PLAIN_LOOP)
    assert out.returncode == 0, out.stderr
    assert "trainers: []" in out.stdout and plugin_lines(out.stderr) == []
    assert "moved: True clusters stepped: 3" in out.stdout  # six steps went round the three cluster banks


# --------------------------------------------------------------------------- the generic names
SD_SCRIPTS_HELPERS = {
    "library/__init__.py": "",
    "library/config_util.py": "",
    "library/custom_train_functions.py": "",
    "library/model_util.py": "",
}


def test_sd_scripts_without_train_util_is_an_unknown_layout(tmp_path):
    tree = write(tmp_path, {**SD_SCRIPTS_HELPERS, "library/trainer2.py": TRAINER, ".exported-commit": "1234567" * 6})
    out = run(tree, STARTUP + "from library.trainer2 import main; main()", *DOTTED)
    assert out.returncode != 0 and "step" not in out.stdout
    error = out.stderr[out.stderr.index("LoliUnsupportedTrainerError") :]
    assert "kohya-ss/sd-scripts commit 1234567" in error and "no library/train_util.py" in error
    assert "Update kohya-ss/sd-scripts to v0.10.0 or later" in error


def test_a_users_loop_beside_supported_sd_scripts_helpers_keeps_working(tmp_path):
    """sd-scripts' layout (train_util.py present) with its optimizer factory not imported: the optimizer is
    the user's own, beside sd-scripts' helpers (model loading, say)."""
    tree = write(
        tmp_path,
        {**SD_SCRIPTS_HELPERS, "library/train_util.py": "def get_optimizer(args, trainable_params):\n    pass\n"},
    )
    out = run(tree, STARTUP + "import library.config_util\n" + PLAIN_LOOP)
    assert out.returncode == 0, out.stderr
    assert "trainers: ['library']" in out.stdout


def test_another_projects_library_or_modules_package_is_not_a_trainer(tmp_path):
    tree = write(tmp_path, {"library/__init__.py": "", "modules/__init__.py": "", "modules/util/__init__.py": ""})
    out = run(tree, STARTUP + "import library, modules.util\n" + PLAIN_LOOP)
    assert out.returncode == 0, out.stderr
    assert "trainers: ['library', 'modules']" in out.stdout and plugin_lines(out.stderr) == []


def test_onetrainer_without_create_py_is_an_unknown_layout(tmp_path):
    tree = write(
        tmp_path,
        {
            "modules/util/enum/Optimizer.py": "",
            "modules/util/config/TrainConfig.py": "",
            "modules/trainer/GenericTrainer.py": "",
            "modules/util/factory.py": "",
        },
    )
    code = STARTUP + "import modules.util.factory\n" + PLAIN_LOOP
    out = run(tree, code)
    assert out.returncode != 0 and "LoliUnsupportedTrainerError" in out.stderr
    assert "Nerogar/OneTrainer" in out.stderr and "no modules/util/create.py" in out.stderr
    assert "Update Nerogar/OneTrainer to commit 23df383 (2026-08-19) or later" in out.stderr


# --------------------------------------------------------------------------- doctor
def test_doctor_reports_an_old_layout(old_musubi, capsys):
    assert cli_main(["doctor", str(old_musubi)]) == 1
    out = capsys.readouterr().out
    assert "kohya-ss/musubi-tuner 0.2.15, commit 8ec9577" in out
    assert (
        "NetworkTrainer in hv_train_network.py (musubi-tuner before v0.3.0) is a layout loli-plugin does not support"
        in out
    )
    assert "plain runs are unaffected" in out and "v0.3.4 or later" in out
