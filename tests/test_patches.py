"""The patch machinery, the startup hook and the launcher, against a stand-in ``library.train_util``
written here (the real sd-scripts is exercised in tests/kohya)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from loli_plugin.patches import kohya as kp
from loli_plugin.patches.base import Instrumentor, LoliUnsupportedTrainerError, PatchTarget

# Stand-in with sd-scripts' function *signatures* only (bodies are ours and trivial).
FAKE_TRAIN_UTIL = '''
import argparse

def add_training_arguments(parser, support_dreambooth):
    parser.add_argument("--loss_type", type=str, default="l2", choices=["l1", "l2"])

def add_optimizer_arguments(parser):
    parser.add_argument("--optimizer_type", default="")

def get_optimizer(args, trainable_params):
    return "stock", "", None
'''

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_kohya(tmp_path):
    pkg = tmp_path / "library"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "train_util.py").write_text(FAKE_TRAIN_UTIL)
    return tmp_path


def run_python(code, path, env_extra=None, args=()):
    env = {**os.environ, "PYTHONPATH": str(path), **(env_extra or {})}
    env.pop("LOLI_PLUGIN_DISABLE", None) if not env_extra or "LOLI_PLUGIN_DISABLE" not in env_extra else None
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True, env=env, cwd=path)


STARTUP = "import _loli_plugin_autoload as a; assert a.INSTALLED or a.install(); "


def test_post_import_hook_patches_train_util_on_import(fake_kohya):
    code = STARTUP + textwrap.dedent("""
        import argparse, sys
        assert "loli_plugin" not in sys.modules  # nothing loaded before sd-scripts is imported
        from library import train_util
        p = argparse.ArgumentParser(); train_util.add_training_arguments(p, True)
        a = p.parse_args(["--loss_type", "loli", "--loli_loss_weights", "mse=1"])
        print(a.loss_type, a.loli_loss_weights, type(train_util.get_optimizer).__name__)
    """)
    out = run_python(code, fake_kohya)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["loli", "mse=1", "FunctionWrapper"]


def test_disable_switch(fake_kohya):
    out = run_python("import _loli_plugin_autoload as a; print(a.install())", fake_kohya, {"LOLI_PLUGIN_DISABLE": "1"})
    assert out.stdout.strip() == "False"


def test_unsupported_version_fails_loudly_at_import(fake_kohya):
    # an older sd-scripts: get_optimizer took other arguments
    src = (fake_kohya / "library" / "train_util.py").read_text().replace("def get_optimizer(args, trainable_params)", "def get_optimizer(args, params, extra)")
    (fake_kohya / "library" / "train_util.py").write_text(src)
    out = run_python(STARTUP + "from library import train_util", fake_kohya)
    assert out.returncode != 0
    assert "LoliUnsupportedTrainerError" in out.stderr
    assert "get_optimizer: expected parameters (args, trainable_params), found (args, params, extra)" in out.stderr
    assert "v0.10.0 or newer" in out.stderr


def test_other_library_packages_are_left_alone(tmp_path):
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "__init__.py").write_text("")
    (tmp_path / "library" / "train_util.py").write_text("X = 1\n")  # someone else's `library`
    out = run_python(STARTUP + "from library import train_util; print(train_util.X)", tmp_path)
    assert out.returncode == 0 and out.stdout.strip() == "1", out.stderr


@pytest.mark.parametrize("launcher", ["loli_plugin.kohya", "loli_plugin.onetrainer"])
def test_launcher_runs_the_script_as_main(fake_kohya, launcher):
    script = fake_kohya / "train_fake.py"
    script.write_text(textwrap.dedent("""
        import argparse, sys
        from library import train_util
        if __name__ == "__main__":
            p = argparse.ArgumentParser(); train_util.add_training_arguments(p, True)
            print(p.parse_args(sys.argv[1:]).loss_type)
    """))
    out = run_python(None, fake_kohya, {"LOLI_PLUGIN_DISABLE": "1"}, args=["-m", launcher, str(script), "--loss_type", "loli"])
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "loli"
    bad = run_python(None, fake_kohya, args=["-m", launcher, "no_such_script.py"])
    assert bad.returncode != 0 and "no such script" in bad.stderr


def test_instrumentor_checks_then_wraps_and_restores(tmp_path, monkeypatch):
    mod = tmp_path / "fake_mod_for_patch.py"
    mod.write_text("def f(a, b):\n    return a + b\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_mod_for_patch as m

    calls = []

    def wrapper(wrapped, instance, args, kwargs):
        calls.append(args)
        return wrapped(*args, **kwargs) * 10

    inst = Instrumentor("fake", "fake 1.x", [PatchTarget("fake_mod_for_patch", "f", ["a", "b"], wrapper)])
    inst.instrument()
    inst.instrument()  # idempotent
    assert m.f(1, 2) == 30 and calls == [(1, 2)]
    inst.uninstrument()
    assert m.f(1, 2) == 3
    wrong = Instrumentor("fake", "fake 1.x", [PatchTarget("fake_mod_for_patch", "f", ["a"], wrapper),
                                              PatchTarget("fake_mod_for_patch", "g", ["a"], wrapper),
                                              PatchTarget("no_such_module_xyz", "f", [], wrapper)])
    with pytest.raises(LoliUnsupportedTrainerError) as err:
        wrong.instrument()
    msg = str(err.value)
    assert "expected parameters (a), found (a, b)" in msg and "fake_mod_for_patch.g: not found" in msg
    assert "no_such_module_xyz" in msg and "Supported: fake 1.x" in msg
    assert m.f(1, 2) == 3  # nothing was wrapped


def test_quote_name_args():
    assert kp.quote_name_args(["inner=AdamW8bit", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner = Lion"]) == [
        "inner='AdamW8bit'", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner='Lion'"]
    assert kp.quote_name_args(None) == []


def test_stratified_torch_replaces_only_the_first_draw():
    proxy = kp.StratifiedTorch(torch, k=3, clusters=4, batch=5, where="test")
    u = proxy.rand((5,), device="cpu")
    assert u.shape == (5,) and ((u >= 0.75) & (u < 1.0)).all() and proxy.drawn
    later = proxy.rand(1)  # e.g. ip_noise_gamma's strength: the real torch.rand
    assert later.shape == (1,)
    z = kp.StratifiedTorch(torch, k=0, clusters=2, batch=4, where="test").randn(4)
    assert (z < 0).all()  # lower half of a standard normal
    n = kp.StratifiedTorch(torch, k=1, clusters=2, batch=3, where="test").normal(mean=2.0, std=0.5, size=(3,), device="cpu")
    assert (n >= 2.0).all()
    assert proxy.float32 is torch.float32  # everything else is torch's
    with pytest.raises(LoliUnsupportedTrainerError, match="one value per sample"):
        kp.StratifiedTorch(torch, k=0, clusters=2, batch=4, where="test").rand(3)


def test_instrumentor_wraps_a_class_method_for_every_subclass(tmp_path, monkeypatch):
    (tmp_path / "fake_mixin_mod.py").write_text(
        "class Mixin:\n    def draw(self, n):\n        return n\n\nclass Model(Mixin):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import fake_mixin_mod as m

    inst = Instrumentor("fake", "fake 1.x", [PatchTarget("fake_mixin_mod", "Mixin.draw", ["self", "n"],
                                                         lambda wrapped, instance, args, kwargs: (instance, wrapped(*args)))])
    inst.instrument()
    model = m.Model()
    assert model.draw(3) == (model, 3)  # bound through the descriptor, on a subclass instance
    inst.uninstrument()
    assert model.draw(3) == 3 and "draw" not in m.Model.__dict__
    missing = PatchTarget("fake_mixin_mod", "NoClass.draw", ["self"], None)
    assert missing.problem() == "fake_mixin_mod.NoClass.draw: not found"


def test_onetrainer_watch_lists_agree():
    import _loli_plugin_autoload

    from loli_plugin.adapters import onetrainer

    assert _loli_plugin_autoload.ONETRAINER_MODULES == onetrainer.WATCHED


def test_bind_arguments_names_every_argument_and_caches_per_function():
    from loli_plugin.patches import base

    class Setup:
        def draw(self, n, deterministic=False):
            return n

    a, b = Setup(), Setup()
    assert base.bind_arguments(a.draw, (3,), {}) == {"self": a, "n": 3, "deterministic": False}
    assert base.bind_arguments(b.draw, (), {"n": 4, "deterministic": True})["self"] is b
    assert base.bind_arguments(Setup.draw, (a, 5), {})["n"] == 5  # called through the class
    cached = [k for k in base._SIGNATURES if getattr(k, "__qualname__", "").endswith("Setup.draw")]
    assert len(cached) == 1  # one entry for the function, none per instance
