"""sd-scripts' adapter against a stand-in ``library.train_util`` written here (signatures only): the
start-up finder hands it over, the disable switch, drifted targets logged once with a plain run intact
and a Loli run refused, an added optional parameter accepted, another project's ``library`` left alone,
a broken install that never stops the trainer, the launcher's old name, and the kohya-ss family's option
quoting. Marked ``standin``: they run wherever loli-plugin is installed, real sd-scripts or not."""

import textwrap
from pathlib import Path

import pytest

from loli_plugin.patches import kohya_ss

from ..trainer_support import run_python

pytestmark = pytest.mark.standin

# Stand-in with sd-scripts' function *signatures* only (bodies are ours and trivial).
FAKE_TRAIN_UTIL = """
import argparse

def add_training_arguments(parser, support_dreambooth):
    parser.add_argument("--loss_type", type=str, default="l2", choices=["l1", "l2"])

def add_optimizer_arguments(parser):
    parser.add_argument("--optimizer_type", default="")

def get_optimizer(args, trainable_params):
    return "stock", "", None

def prepare_accelerator(args):
    return "accelerator"

def conditional_loss(model_pred, target, loss_type, reduction, huber_c):
    return (model_pred - target) ** 2

def get_timesteps(min_timestep, max_timestep, b_size, device):
    import torch
    return torch.randint(min_timestep, max_timestep, (b_size,), device="cpu").to(device)
"""

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def fake_kohya(tmp_path):
    pkg = tmp_path / "library"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train_util.py").write_text(FAKE_TRAIN_UTIL)
    (pkg / "config_util.py").write_text("")  # sd-scripts is recognised by its library's files
    return tmp_path


def drift(tree: Path, old: str, new: str) -> None:
    path = tree / "library" / "train_util.py"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


# the core venv installs loli-plugin editable (no .pth): install the finder as the .pth line would
STARTUP = "import _loli_plugin_autoload as a; assert a.install(); "
PLAIN_RUN = textwrap.dedent("""
    import argparse, sys, torch
    from library import train_util
    p = argparse.ArgumentParser(); train_util.add_training_arguments(p, True); train_util.add_optimizer_arguments(p)
    args = p.parse_args(sys.argv[1:])
    print("accelerator:", train_util.prepare_accelerator(args))
    print("optimizer:", train_util.get_optimizer(args, [torch.nn.Parameter(torch.zeros(2))])[0])
""")


def test_finder_hands_train_util_to_the_adapter(fake_kohya):
    code = STARTUP + textwrap.dedent("""
        import argparse, sys
        assert "loli_plugin" not in sys.modules and "torch" not in sys.modules
        from library import train_util
        p = argparse.ArgumentParser(); train_util.add_training_arguments(p, True)
        a = p.parse_args(["--loss_type", "loli", "--loli_loss_weights", "mse=1"])
        print(a.loss_type, a.loli_loss_weights, type(train_util.get_optimizer).__name__)
        print(train_util.__loader__.__class__.__name__, train_util.__spec__.loader.__class__.__name__)
    """)
    out = run_python(code, fake_kohya)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.split() == ["loli", "mse=1", "FunctionWrapper"]
    assert second.split() == ["SourceFileLoader", "SourceFileLoader"]  # the module keeps its real loader


def test_disable_switch(fake_kohya):
    code = (
        "import _loli_plugin_autoload as a; print(a.install()); "
        "from library import train_util; print(type(train_util.get_optimizer).__name__)"
    )
    out = run_python(code, fake_kohya, {"LOLI_PLUGIN_DISABLE": "1"})
    assert out.stdout.split() == ["False", "function"]


@pytest.mark.parametrize(
    "how, old, new, reason",
    [
        (
            "renamed parameter",
            "def get_optimizer(args, trainable_params)",
            "def get_optimizer(arguments, trainable_params)",
            "no parameter 'args'",
        ),
        (
            "removed function",
            "def get_optimizer(args, trainable_params):",
            "def get_optimizer_v2(args, trainable_params):",
            "get_optimizer: not found",
        ),
        (
            "reordered parameters",
            "def get_optimizer(args, trainable_params)",
            "def get_optimizer(trainable_params, args)",
            "parameter 'args' moved",
        ),
    ],
)
def test_drifted_target_is_logged_once_a_plain_run_works_and_a_loli_run_is_refused(fake_kohya, how, old, new, reason):
    drift(fake_kohya, old, new)
    # the stand-in script calls the drifted function the way the drifted trainer would
    plain = (
        PLAIN_RUN
        if how != "removed function"
        else PLAIN_RUN.replace("train_util.get_optimizer(", "train_util.get_optimizer_v2(")
    )
    if how == "reordered parameters":
        plain = plain.replace("get_optimizer(args, [", "get_optimizer([").replace("(2))])[0]", "(2))], args)[0]")
    out = run_python(STARTUP + plain, fake_kohya, args=["--optimizer_type", "AdamW"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["accelerator:", "accelerator", "optimizer:", "stock"]
    lines = [line for line in out.stderr.splitlines() if "loli-plugin" in line]
    assert len(lines) == 1, out.stderr  # logged once, in one line
    assert reason in lines[0] and "v0.10.0 or newer" in lines[0] and "LOLI_PLUGIN_DISABLE" in lines[0]
    loli = run_python(STARTUP + plain, fake_kohya, args=["--optimizer_type", "LoliClustered"])
    assert loli.returncode != 0 and "LoliUnsupportedTrainerError" in loli.stderr
    assert (
        reason in loli.stderr
        and "--optimizer_type LoliClustered" in loli.stderr
        and "LOLI_PLUGIN_DISABLE=1" in loli.stderr
    )
    assert "accelerator:" not in loli.stdout  # refused in prepare_accelerator, before any work


def test_added_optional_parameter_is_compatible_and_forwarded(fake_kohya):
    drift(
        fake_kohya,
        'def get_optimizer(args, trainable_params):\n    return "stock", "", None',
        'def get_optimizer(args, trainable_params, model=None):\n    return "stock", str(model), None',
    )
    code = STARTUP + textwrap.dedent("""
        import argparse, torch
        from library import train_util
        args = argparse.Namespace(optimizer_type="AdamW", loss_type="l2")
        print(type(train_util.get_optimizer).__name__, train_util.get_optimizer(args, [], model="unet")[1])
    """)
    out = run_python(code, fake_kohya)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["FunctionWrapper", "unet"] and "loli-plugin" not in out.stderr


def test_other_library_packages_are_left_alone(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "__init__.py").write_text("")
    (tmp_path / "library" / "train_util.py").write_text("X = 1\n")  # someone else's `library`
    out = run_python(
        STARTUP + "from library import train_util; print(train_util.X, sorted(vars(train_util)))", tmp_path
    )
    assert out.returncode == 0 and out.stdout.startswith("1 "), out.stderr
    assert "get_optimizer" not in out.stdout and out.stderr == ""  # not patched, nothing logged


def test_a_broken_install_never_stops_the_trainer(fake_kohya, tmp_path):
    # loli_plugin cannot be imported (a half-removed install): the trainer imports and runs, one line says why
    shadow = tmp_path / "shadow"
    (shadow / "loli_plugin").mkdir(parents=True)
    (shadow / "loli_plugin" / "__init__.py").write_text("raise ImportError('No module named torch (simulated)')\n")
    code = (
        f"import sys; sys.path.insert(0, {str(shadow)!r}); "
        + STARTUP
        + "from library import train_util; print(train_util.get_optimizer(None, None)[0])"
    )
    out = run_python(code, fake_kohya)
    assert out.returncode == 0 and out.stdout.strip() == "stock", out.stderr
    assert out.stderr.count("loli-plugin:") == 1 and "simulated" in out.stderr and "LOLI_PLUGIN_DISABLE" in out.stderr


@pytest.mark.parametrize("launcher", ["loli_plugin.launch", "loli_plugin.kohya"])
def test_launcher_and_its_old_name_run_the_script_as_main(fake_kohya, launcher):
    script = fake_kohya / "train_fake.py"
    script.write_text(
        textwrap.dedent("""
        import argparse, sys
        from library import train_util
        if __name__ == "__main__":
            p = argparse.ArgumentParser(); train_util.add_training_arguments(p, True)
            print(p.parse_args(sys.argv[1:]).loss_type)
    """)
    )
    out = run_python(
        None, fake_kohya, {"LOLI_PLUGIN_DISABLE": "1"}, args=["-m", launcher, str(script), "--loss_type", "loli"]
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loli"
    bad = run_python(None, fake_kohya, args=["-m", launcher, "no_such_script.py"])
    assert bad.returncode != 0 and "no such script" in bad.stderr


def test_quote_name_args():
    assert kohya_ss.quote_name_args(
        ["inner=AdamW8bit", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner = Lion"]
    ) == ["inner='AdamW8bit'", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner='Lion'"]
    assert kohya_ss.quote_name_args(None) == []
