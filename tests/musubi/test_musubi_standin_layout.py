"""musubi-tuner's layouts the plugin does not fit, written here (stand-ins: a kohya-style trainer script in
a ``musubi_tuner`` package): one it does not know (no training/trainer_base.py, as a fork or a future
version might have it) and the one before v0.3.0 (NetworkTrainer in hv_train_network.py, which it knows
it does not support). A LoliClustered built there by the dotted route is refused before any step, naming
the trainer, its version, the supported minimum and what to do; the short name and --loss_type loli stop
in the trainer's own code after the plugin's one line; a plain run is untouched; doctor reports the old
layout. The real v0.2.15 tree: test_musubi_old_layout.py. Marked ``standin``: they run without musubi-tuner."""

from __future__ import annotations

import pytest

from loli_plugin.cli import main as cli_main

from ..trainer_support import DOTTED, PLAIN, SHORT, STANDIN_TRAINER, STARTUP, plugin_lines, run_python, write_tree

pytestmark = pytest.mark.standin
LAYOUT = "NetworkTrainer in hv_train_network.py (musubi-tuner before v0.3.0)"


@pytest.fixture
def unknown(tmp_path):
    """A musubi_tuner package in a layout the plugin does not know."""
    return write_tree(
        tmp_path / "unknown",
        {
            "pyproject.toml": '[project]\nname = "musubi-tuner"\nversion = "9.9.9"\n',
            ".exported-commit": "abcdef1234567890abcdef1234567890abcdef12\n",
            "src/musubi_tuner/__init__.py": "",
            "src/musubi_tuner/engine/trainer.py": STANDIN_TRAINER,
        },
    )


@pytest.fixture
def old(tmp_path):
    """The layout of musubi-tuner before v0.3.0."""
    return write_tree(
        tmp_path / "old",
        {
            "pyproject.toml": '[project]\nname = "musubi-tuner"\nversion = "0.2.15"\n',
            ".exported-commit": "8ec957745626317e39f04f8547910e353553354b\n",
            "src/musubi_tuner/__init__.py": "",
            "src/musubi_tuner/hv_train_network.py": STANDIN_TRAINER,
        },
    )


def run_trainer(tree, module, argv, env=None):
    return run_python(STARTUP + f"from musubi_tuner.{module} import main; main()", tree / "src", env, args=argv)


@pytest.mark.parametrize("layout", ["unknown", "old"])
def test_the_dotted_route_is_refused_at_the_trainers_import(unknown, old, layout):
    tree, module = (unknown, "engine.trainer") if layout == "unknown" else (old, "hv_train_network")
    out = run_trainer(tree, module, DOTTED)
    assert out.returncode != 0 and "step" not in out.stdout and "optimizer LoliClustered" not in out.stdout
    error = out.stderr[out.stderr.index("LoliUnsupportedTrainerError: ") :]
    version = "9.9.9, commit abcdef1" if layout == "unknown" else "0.2.15, commit 8ec9577"
    assert f"kohya-ss/musubi-tuner {version}" in error  # the trainer and its version
    assert "v0.3.4 or later" in error and "Update kohya-ss/musubi-tuner to v0.3.4 or later" in error  # minimum, fix
    why = LAYOUT if layout == "old" else "no musubi_tuner/training/trainer_base.py"
    assert why in error and "This run asks for --optimizer_type loli_plugin.LoliClustered" in error
    (line,) = plugin_lines(out.stderr)  # the import said it, and raised it as the error
    assert line.removeprefix("loli-plugin: ") in error


@pytest.mark.parametrize(
    "argv, asked, own_error",
    [
        (SHORT, "--optimizer_type LoliClustered", "ValueError: malformed node or string"),  # inner=AdamW
        (PLAIN + ["--loss_type", "loli"], "--loss_type loli", "unrecognized arguments: --loss_type loli"),
    ],
)
def test_the_other_routes_are_refused_at_the_import_before_the_trainers_own_error(old, argv, asked, own_error):
    """The short name and --loss_type loli need patches this layout cannot take. Left alone, the trainer's
    own code would stop them with an error that does not name the plugin (its optimizer_args parser, like
    musubi-tuner's, cannot read inner=AdamW; argparse knows no --loss_type): the plugin stops the run at
    the trainer's import instead, with its one line as the error."""
    out = run_trainer(old, "hv_train_network", argv)
    assert out.returncode != 0 and "step" not in out.stdout
    (line,) = plugin_lines(out.stderr)
    assert line.startswith("loli-plugin: kohya-ss/musubi-tuner 0.2.15, commit 8ec9577")
    assert f"This run asks for {asked}" in line and "Update kohya-ss/musubi-tuner to v0.3.4 or later" in line
    assert "LoliUnsupportedTrainerError: " + line.removeprefix("loli-plugin: ") in out.stderr
    assert own_error not in out.stderr  # the trainer never got to its own error


def test_a_plain_run_on_an_old_layout_is_untouched_but_told_once(old):
    out = run_trainer(old, "hv_train_network", PLAIN)
    stock = run_trainer(old, "hv_train_network", PLAIN, env={"LOLI_PLUGIN_DISABLE": "1"})
    assert out.returncode == 0 and stock.returncode == 0, out.stderr
    assert out.stdout == stock.stdout and "step 2" in out.stdout  # bit for bit the same training
    (line,) = plugin_lines(out.stderr)
    assert LAYOUT in line and "Plain runs are unaffected; runs with Loli options are refused" in line
    assert plugin_lines(stock.stderr) == []


def test_a_users_own_loop_beside_an_unknown_layout_is_refused_with_the_way_out(unknown):
    code = STARTUP + (
        "import torch, musubi_tuner\n"
        "from loli_plugin import LoliClustered\n"
        "LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)\n"
    )
    out = run_python(code, unknown / "src")
    assert "LoliUnsupportedTrainerError" in out.stderr
    assert "in a training loop of your own, do not import musubi_tuner" in out.stderr


def test_doctor_reports_an_old_layout(old, capsys):
    assert cli_main(["doctor", str(old)]) == 1
    out = capsys.readouterr().out
    assert "kohya-ss/musubi-tuner 0.2.15, commit 8ec9577" in out
    assert f"{LAYOUT} is a layout loli-plugin does not support" in out
    assert "plain runs are unaffected" in out and "v0.3.4 or later" in out
