"""The patch machinery (instrumentors, the compatibility rule, the call helpers, the one-cluster draw), the
start-up finder and the launcher. How each adapter uses them against a stand-in of its trainer written by
the test is in that trainer's folder (tests/<trainer>/test_<trainer>_standin.py)."""

import enum
import inspect
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from loli_plugin.errors import LoliUnsupportedTrainerError
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

from .trainer_support import run_python

REPO = Path(__file__).resolve().parents[1]


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
    manifests = [p for p in (REPO / "adapters").glob("*.watch")]
    listed = {
        line.strip() for p in manifests for line in p.read_text().splitlines() if line.strip()[:1] not in ("", "#")
    }
    assert manifests and watched == repr(sorted(listed))  # every adapter's manifest, nothing else
    assert first == "_Finder" and out.stderr == ""


def test_launcher_runs_the_script_as_main(tmp_path):
    script = tmp_path / "train_fake.py"
    script.write_text(
        "import os, sys\nif __name__ == '__main__':\n    print(sys.argv[1:], os.path.dirname(__file__)==sys.path[0])\n"
    )
    out = run_python(
        None, tmp_path, {"LOLI_PLUGIN_DISABLE": "1"}, args=["-m", "loli_plugin.launch", str(script), "--x", "1"]
    )
    assert out.returncode == 0 and out.stdout.strip() == "['--x', '1'] True", out.stderr
    bad = run_python(None, tmp_path, args=["-m", "loli_plugin.launch", "no_such_script.py"])
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
