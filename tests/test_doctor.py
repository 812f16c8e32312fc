"""``loli-plugin doctor`` tells the truth: the start-up hook as a fresh interpreter of the venv has it (an
editable install has none), and a venv that lacks the trainer's dependencies is "wrong venv", not an
incompatible trainer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from loli_plugin import doctor

REPO = Path(__file__).resolve().parents[1]
FINDER_CHECK = "import sys; print(any(type(f).__module__ == '_loli_plugin_autoload' for f in sys.meta_path))"


def fresh_interpreter_has_the_finder(python: str, env=None) -> bool:
    out = subprocess.run([python, "-c", FINDER_CHECK], capture_output=True, text=True, check=True, env=env)
    return out.stdout.strip() == "True"


def editable(python: str) -> bool:
    code = (
        "import json; from importlib.metadata import distribution; "
        "d = distribution('loli-plugin').read_text('direct_url.json'); "
        "print(bool(d and json.loads(d).get('dir_info', {}).get('editable')))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, cwd="/")
    return out.stdout.strip() == "True"


def test_this_venv_is_reported_as_a_fresh_interpreter_sees_it():
    """Whatever this venv is (editable in the core CI stage, a wheel in the trainer stages): the doctor
    agrees with a fresh interpreter, even after this process imported the hook module itself (which
    installs the hook here: the old doctor read that and said "active")."""
    import _loli_plugin_autoload  # noqa: F401  (the import that fooled the old doctor)

    truth = fresh_interpreter_has_the_finder(sys.executable)
    active, line = doctor.hook_state()
    assert active == truth, line
    if editable(sys.executable):
        assert not active and "editable install" in line and "loli_plugin.launch" in line, line
    elif truth:
        assert line.startswith("active (pth)") and "loli_plugin.pth" in line, line


@pytest.fixture(scope="module")
def editable_venv(tmp_path_factory) -> Path:
    """A new venv with loli-plugin installed by ``pip install -e`` (no dependencies: this venv's own
    site-packages are appended to its path, the way --system-site-packages would add the system's)."""
    root = tmp_path_factory.mktemp("editable-venv")
    venv.EnvBuilder(with_pip=False).create(root)
    python = root / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    Path(purelib, "zz_outer_site.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(REPO)],
        capture_output=True,
        text=True,
    )
    if install.returncode:
        pytest.fail(f"pip install -e failed:\n{install.stdout[-3000:]}\n{install.stderr[-3000:]}")
    assert any(Path(purelib).glob("__editable__*loli_plugin*.pth")), "not an editable install"
    assert not Path(purelib, "loli_plugin.pth").exists()
    return python


def test_editable_install_is_reported_off(editable_venv):
    assert not fresh_interpreter_has_the_finder(str(editable_venv))
    code = "from loli_plugin import doctor; import json; print(json.dumps(doctor.hook_state()))"
    out = subprocess.run([editable_venv, "-c", code], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    active, line = json.loads(out.stdout.strip().splitlines()[-1])
    assert not active
    assert line.startswith("OFF: loli-plugin is an editable install"), line
    assert "pip install /path/to/loli-plugin" in line and "python -m loli_plugin.launch" in line


def test_disabled_hook_is_reported_off(monkeypatch):
    monkeypatch.setenv("LOLI_PLUGIN_DISABLE", "1")
    active, line = doctor.hook_state()
    assert not active and line.startswith("OFF: LOLI_PLUGIN_DISABLE=1 is set"), line


# --------------------------------------------------------------------------- wrong venv vs incompatible
def fake_checkouts(root: Path, body: str) -> list[tuple[object, Path]]:
    """For every installed adapter whose checkout a tree of its patch modules passes for: (adapter, that
    tree), every module its patches name holding ``body``."""
    from loli_plugin.adapter import adapters

    found = []
    for adapter in adapters():
        tree = root / adapter.name
        modules = {p.module for inst, _ in adapter.instrumentors() for p in inst.patches}
        for module in modules:
            if module == "__main__" or importable_outside(module, tree):
                continue  # a library the trainer uses (its patches are checked where it is installed)
            path = tree.joinpath(*module.split(".")).with_suffix(".py")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
            for parent in path.parents:
                if parent == tree:
                    break
                (parent / "__init__.py").touch()
        if tree.is_dir() and adapter.find_checkout(tree):
            found.append((adapter, tree))
    assert found, "no adapter recognises a tree of its own patch modules"
    return found


def importable_outside(module: str, tree: Path) -> bool:
    import importlib.util

    try:
        spec = importlib.util.find_spec(module.split(".")[0])
    except (ImportError, ValueError):
        return False
    return spec is not None and tree not in Path(spec.origin or "").parents


def run_doctor(path: Path):
    return subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "doctor", str(path)],
        capture_output=True,
        text=True,
        cwd=path,
    )


def test_missing_trainer_dependency_is_wrong_venv(tmp_path):
    for adapter, checkout in fake_checkouts(tmp_path, "import loli_test_dependency_that_is_not_installed\n"):
        out = run_doctor(checkout)
        assert out.returncode == 3, out.stdout + out.stderr
        result = out.stdout.strip().splitlines()[-1]
        assert result.startswith("result: wrong venv:"), result
        assert "(loli_test_dependency_that_is_not_installed)" in result
        assert "venv\\Scripts\\activate" in result and "source venv/bin/activate" in result
        assert "do not fit" not in out.stdout and ": not checked (" in out.stdout, adapter.name


def test_changed_trainer_is_incompatible(tmp_path):
    for adapter, checkout in fake_checkouts(tmp_path, "def unrelated():\n    pass\n"):  # imports, holds no target
        out = run_doctor(checkout)
        assert out.returncode == 1, out.stdout + out.stderr
        result = out.stdout.strip().splitlines()[-1]
        assert result.startswith("result: incompatible trainer:") and "wrong venv" not in out.stdout, result
        assert ": not found" in out.stdout, adapter.name
