"""The patch machinery, the start-up finder, the failure policy and the launcher, against a stand-in
``library.train_util`` written here (the real sd-scripts is exercised in tests/kohya)."""

import enum
import inspect
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from loli_plugin.errors import LoliUnsupportedTrainerError
from loli_plugin.patches import kohya_ss
from loli_plugin.patches.draws import StratifiedTorch
from loli_plugin.patches.instrument import (
    EnumMemberPatch,
    FunctionPatch,
    Instrumentor,
    MappingEntryPatch,
    bind_arguments,
    call_replacing,
    signature_problem,
)

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

REPO = Path(__file__).resolve().parents[1]


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


def run_python(code, path, env_extra=None, args=()):
    env = {**os.environ, "PYTHONPATH": str(path), **(env_extra or {})}
    if "LOLI_PLUGIN_DISABLE" not in (env_extra or {}):
        env.pop("LOLI_PLUGIN_DISABLE", None)
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True, env=env, cwd=path
    )


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


def test_startup_imports_nothing_and_watches_the_manifests():
    code = (
        "import sys; before = set(sys.modules); import _loli_plugin_autoload as a; a.install(); "
        "print(sorted(set(sys.modules) - before)); print(sorted(a.WATCHED)); "
        "print(type(sys.meta_path[0]).__name__)"
    )
    out = run_python(code, REPO)
    assert out.returncode == 0, out.stderr
    new_modules, watched, first = out.stdout.splitlines()
    assert new_modules == "['_loli_plugin_autoload']"  # no torch, no wrapt, no importlib.metadata
    assert "'library.train_util'" in watched and "'modules.util.create'" in watched
    assert first == "_Finder" and out.stderr == ""


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


@pytest.mark.parametrize("launcher", ["loli_plugin.launch", "loli_plugin.kohya", "loli_plugin.onetrainer"])
def test_launcher_runs_the_script_as_main(fake_kohya, launcher):
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


# --------------------------------------------------------------------------- compatibility rule
def _params(src: str):
    namespace = {}
    exec(src, namespace)
    return inspect.signature(namespace["f"]).parameters


@pytest.mark.parametrize(
    "src, fits",
    [
        ("def f(a, b): pass", True),
        ("def f(a, b, c=None): pass", True),  # added parameter with a default
        ("def f(a, b, *args, **kwargs): pass", True),
        ("def f(a, b, *, new=1): pass", True),  # new keyword-only parameter
        (
            "def f(a, b, c): pass",
            True,
        ),  # a new required parameter the wrapper does not read: callers pass it, we forward it
        ("def f(a): pass", False),  # removed
        ("def f(x, b): pass", False),  # renamed
        ("def f(b, a): pass", False),  # reordered
        ("def f(c, a, b): pass", False),  # inserted before: positions moved
        ("def f(a, /, b): pass", False),  # positional-only: the wrapper's keyword use would break
    ],
)
def test_signature_rule(src, fits):
    problem = signature_problem("m.f", ["a", "b"], None, _params(src))
    assert (problem is None) == fits, problem


def test_signature_rule_only_checks_what_the_wrapper_reads():
    assert signature_problem("m.f", ["a", "b"], ["a"], _params("def f(a, renamed): pass")) is None
    assert "no parameter 'a'" in signature_problem("m.f", ["a", "b"], ["a"], _params("def f(x, b): pass"))


# --------------------------------------------------------------------------- instrumentor
@pytest.fixture
def fake_module(monkeypatch):
    module = types.ModuleType("fake_mod_for_patch")
    exec(
        textwrap.dedent("""
        import enum
        def f(a, b):
            return a + b
        class Mixin:
            def draw(self, n):
                return n
            @staticmethod
            def factory():
                return {"x": 1}
        class Model(Mixin):
            pass
        class Colour(enum.Enum):
            RED = "RED"
        TABLE = {"RED": 1}
    """),
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, "fake_mod_for_patch", module)
    return module


def test_instrumentor_applies_what_fits_reports_the_rest_and_undoes_exactly(fake_module):
    m = fake_module
    calls = []

    def wrapper(context, wrapped, instance, args, kwargs):
        calls.append((context, args))
        return wrapped(*args, **kwargs) * 10

    originals = {name: m.__dict__[name] for name in ("f",)} | {
        "draw": m.Mixin.__dict__["draw"],
        "factory": m.Mixin.__dict__["factory"],
    }
    inst = Instrumentor(
        "fake",
        "fake 1.x",
        [
            FunctionPatch("fake_mod_for_patch", "f", params=["a", "b"], wrapper=wrapper),
            FunctionPatch(
                "fake_mod_for_patch", "Mixin.draw", params=["self", "n"], wrapper=lambda c, w, i, a, k: (i, w(*a, **k))
            ),
            FunctionPatch(
                "fake_mod_for_patch", "Mixin.factory", params=[], wrapper=lambda c, w, i, a, k: {**w(*a, **k), "y": c}
            ),
            FunctionPatch("fake_mod_for_patch", "g", params=["a"], wrapper=wrapper),  # missing: reported
            FunctionPatch(
                "fake_mod_for_patch", "Nope.g", params=["a"], wrapper=wrapper, optional=True
            ),  # missing but optional
            FunctionPatch("not_imported_module_xyz", "f", params=[], wrapper=wrapper),  # not imported: left for later
            EnumMemberPatch("fake_mod_for_patch", "Colour", member="LOLI"),
            MappingEntryPatch("fake_mod_for_patch", "TABLE", key=lambda mod: "LOLI", value=lambda mod: 2),
        ],
    )
    problems = inst.instrument("ctx")
    assert problems == {"fake_mod_for_patch.g": "fake_mod_for_patch.g: not found"}
    assert inst.instrument("ctx") == problems  # idempotent: nothing applied twice
    assert m.f(1, 2) == 30 and calls == [("ctx", (1, 2))]
    model = m.Model()
    assert model.draw(3) == (model, 3)  # bound through the descriptor, on a subclass instance
    assert m.Model.factory() == {"x": 1, "y": "ctx"} and isinstance(m.Mixin.__dict__["factory"], staticmethod)
    assert m.Colour["LOLI"].value == "LOLI" and m.Colour("LOLI") is m.Colour.LOLI and m.TABLE["LOLI"] == 2
    inst.uninstrument()
    assert m.__dict__["f"] is originals["f"] and m.Mixin.__dict__["draw"] is originals["draw"]
    assert m.Mixin.__dict__["factory"] is originals["factory"] and "draw" not in m.Model.__dict__
    assert list(m.Colour.__members__) == ["RED"] and not hasattr(m.Colour, "LOLI") and m.TABLE == {"RED": 1}
    assert not inst.instrumented


def test_wrong_kinds_are_problems_not_crashes(fake_module):
    assert "not an Enum" in EnumMemberPatch("fake_mod_for_patch", "TABLE", member="X").problem()
    assert "not a dict" in MappingEntryPatch("fake_mod_for_patch", "Colour").problem()
    assert "not a function" in FunctionPatch("fake_mod_for_patch", "TABLE", params=[]).problem()


def test_bind_arguments_and_call_replacing():
    from loli_plugin.patches import instrument

    class Setup:
        def draw(self, n, deterministic=False, **extra):
            return n, deterministic, extra

    a, b = Setup(), Setup()
    assert bind_arguments(a.draw, (3,), {}) == {"self": a, "n": 3, "deterministic": False, "extra": {}}
    assert bind_arguments(b.draw, (), {"n": 4, "deterministic": True})["self"] is b
    assert bind_arguments(Setup.draw, (a, 5), {})["n"] == 5  # called through the class
    cached = [k for k in instrument._SIGNATURES if getattr(k, "__qualname__", "").endswith("Setup.draw")]
    assert len(cached) == 1  # one entry for the function, none per instance
    # only the named argument changes; new keyword arguments of a newer trainer are forwarded
    assert call_replacing(a.draw, (3,), {"deterministic": True, "added": 1}, n=7) == (7, True, {"added": 1})

    def get_optimizer(args, trainable_params, model=None):  # sd-scripts names its first parameter `args`
        return args, trainable_params, model

    assert call_replacing(get_optimizer, ("old", [1]), {"model": "unet"}, args="new") == ("new", [1], "unet")


def test_quote_name_args():
    assert kohya_ss.quote_name_args(
        ["inner=AdamW8bit", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner = Lion"]
    ) == ["inner='AdamW8bit'", "schedule='shuffle'", "clusters=4", "betas=(0.9,0.99)", "inner='Lion'"]
    assert kohya_ss.quote_name_args(None) == []


def test_stratified_torch_replaces_only_the_first_draw():
    proxy = StratifiedTorch(torch, k=3, clusters=4, batch=5, where="test")
    u = proxy.rand((5,), device="cpu")
    assert u.shape == (5,) and ((u >= 0.75) & (u < 1.0)).all() and proxy.drawn
    later = proxy.rand(1)  # e.g. ip_noise_gamma's strength: the real torch.rand
    assert later.shape == (1,)
    z = StratifiedTorch(torch, k=0, clusters=2, batch=4, where="test").randn(4)
    assert (z < 0).all()  # lower half of a standard normal
    n = StratifiedTorch(torch, k=1, clusters=2, batch=3, where="test").normal(
        mean=2.0, std=0.5, size=(3,), device="cpu"
    )
    assert (n >= 2.0).all()
    assert proxy.float32 is torch.float32  # everything else is torch's
    with pytest.raises(LoliUnsupportedTrainerError, match="one value per sample"):
        StratifiedTorch(torch, k=0, clusters=2, batch=4, where="test").rand(3)


def test_stratified_torch_fixed_draws_take_the_quantile_asked_for():
    """The probe's midpoint, and the validation's edges: (k + position) / K for every sample."""
    mid = StratifiedTorch(torch, k=1, clusters=4, batch=3, where="test", midpoint=True).rand(3)
    assert torch.equal(mid, torch.full((3,), 0.375))
    edge = StratifiedTorch(torch, k=1, clusters=4, batch=2, where="test", position=0.001).randn(2, dtype=torch.float64)
    assert torch.allclose(edge, torch.special.ndtri(torch.full((2,), 1.001 / 4, dtype=torch.float64)))


def test_enum_patch_check_hook(fake_module):
    class Other(enum.Enum):
        A = 1

    fake_module.Colour = Other
    patch = EnumMemberPatch(
        "fake_mod_for_patch",
        "Colour",
        member="LOLI",
        check=lambda cls: None if "RED" in cls.__members__ else "no RED member",
    )
    assert patch.problem() == "no RED member"
