"""The trainer list as data: a fourth trainer added only in its places (an entry in scripts/trainers.toml,
an adapter module and manifest, an entry point, a tests folder) is picked up by .ci/run, which makes its
stage, and by scripts/get-trainers, which exports it; its venv is built by the entry's recipe."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .trainer_support import trainer_list

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = trainer_list().read_trainers()
#: what the copy of this checkout needs for .ci/run and the wheel
SOURCES = [
    ".ci",
    "_loli_plugin_autoload.py",
    "adapters",
    "loli_plugin",
    "patches",
    "scripts",
    "tests",
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "loli_plugin.pth",
    "README.md",
]

FAKE_ENTRY = """
[fake]
library = "owner/fake-trainer"
tests = "tests/fake"
venv = ".venv-fake-ci"
install = "requirements"
requirements = "requirements.txt"
packages = ["pytest"]
check = "import fake_trainer.core, pytest"

[fake.sources.fake-trainer]
repo = "owner/fake-trainer"
commit = "{commit}"
marker = "fake_trainer/core.py"
dir_variable = "LOLI_FAKE_DIR"
note = "a throwaway trainer made by tests/test_one_place_per_trainer.py"
"""
FAKE_ADAPTER = """
from pathlib import Path

from ..adapter import TrainerAdapter
from ..hookspecs import hookimpl


class FakeAdapter(TrainerAdapter):
    name = "fake"
    library = "owner/fake-trainer"
    supported = "any commit"
    manifest = Path(__file__).with_suffix(".watch")

    def instrumentors(self):
        return []


ADAPTER = FakeAdapter()


@hookimpl
def loli_trainer_adapters():
    return [ADAPTER]
"""
# run by .ci/run in the venv the entry's recipe built, with loli-plugin installed from a wheel
FAKE_TEST = """
import importlib.metadata
import os
import sys

from ..trainer_support import source_dir, trainer


def test_the_stage_runs_in_the_recipes_venv_against_the_export():
    assert os.path.realpath(sys.prefix) == os.path.realpath(os.environ["LOLI_FAKE_VENV"])
    assert trainer("fake").tests == "tests/fake"
    assert (source_dir("fake-trainer") / "fake_trainer" / "core.py").is_file()
    points = {e.name: e.value for e in importlib.metadata.entry_points(group="loli_plugin")}
    assert points["fake"] == "loli_plugin.adapters.fake"
    import _loli_plugin_autoload as autoload

    assert autoload.INSTALLED and "fake_trainer.core" in autoload.WATCHED
"""


@pytest.fixture
def fourth(tmp_path):
    """A copy of this checkout with a fourth trainer added in its places only, a bare clone of that
    trainer (whose requirements.txt has a git+ line pip could not install) and an environment without
    the caller's LOLI_ variables."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    tree = tmp_path / "tree"
    for name in SOURCES:
        src = ROOT / name
        if src.is_dir():
            keep = {"trainer_support.py"} if name == "tests" else None
            shutil.copytree(
                src,
                tree / name,
                ignore=lambda d, entries, keep=keep, top=src: [
                    e for e in entries if e == "__pycache__" or (keep is not None and Path(d) == top and e not in keep)
                ],
            )
        elif src.is_file():
            tree.mkdir(exist_ok=True)
            shutil.copy2(src, tree / name)
    work = tmp_path / "fake-trainer"
    (work / "fake_trainer").mkdir(parents=True)
    (work / "fake_trainer" / "__init__.py").write_text("")
    (work / "fake_trainer" / "core.py").write_text("VERSION = 1\n")
    (work / "requirements.txt").write_text("git+https://example.invalid/not-on-pypi.git#egg=not-on-pypi\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOLI_")}
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com", GIT_COMMITTER_NAME="t")
    env.update(GIT_COMMITTER_EMAIL="t@example.com")
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "fake"]):
        subprocess.run(["git", *args], cwd=work, env=env, check=True, capture_output=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True).stdout.strip()
    mirrors = tmp_path / "mirrors"
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(work), str(mirrors / "owner+fake-trainer" / "repo")],
        check=True,
        capture_output=True,
    )
    # the places of a trainer, and nothing else
    with open(tree / "scripts" / "trainers.toml", "a") as f:
        f.write(FAKE_ENTRY.format(commit=commit))
    (tree / "adapters" / "fake.py").write_text(FAKE_ADAPTER)
    (tree / "adapters" / "fake.watch").write_text("fake_trainer.core\n")
    (tree / "tests" / "fake").mkdir()
    (tree / "tests" / "fake" / "test_fake.py").write_text(FAKE_TEST)
    pyproject = (tree / "pyproject.toml").read_text()
    anchor = "[project.entry-points.loli_plugin]\n"
    (tree / "pyproject.toml").write_text(pyproject.replace(anchor, anchor + 'fake = "loli_plugin.adapters.fake"\n'))
    env.update(LOLI_SKIP_CORE="1", LOLI_TRAINERS_DIR=str(tmp_path / "trainers"))
    env.update(LOLI_FAKE_VENV=str(tmp_path / "venv-fake"), PIP_DISABLE_PIP_VERSION_CHECK="1")

    class Fourth:
        pass

    t = Fourth()
    t.tree, t.env, t.mirrors, t.tmp, t.commit = tree, env, mirrors, tmp_path, commit

    def ci(**extra):
        return subprocess.run(
            ["bash", str(tree / ".ci" / "run")], cwd=tree, env={**env, **extra}, capture_output=True, text=True
        )

    t.ci = ci
    return t


def test_every_trainer_of_the_list_is_a_ci_stage(fourth):
    """Without exports or mirrors, each trainer of the data file, the new one too, gets its stage and
    its how-to."""
    out = fourth.ci(LOLI_TRAINER_MIRRORS=str(fourth.tmp / "no-mirrors"))
    assert out.returncode == 0, out.stderr[-3000:]
    for name in [*TRAINERS, "fake"]:
        assert f"[loli] real {name} tests: skipped, no export" in out.stderr, out.stderr[-3000:]
    assert "get it: python scripts/get-trainers fake-trainer " in out.stderr


def test_a_fourth_trainer_in_its_places_is_fetched_built_and_tested(fourth):
    out = fourth.ci(LOLI_TRAINERS="fake", LOLI_TRAINER_MIRRORS=str(fourth.mirrors))
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "get-trainers: fake-trainer" in out.stderr and "exporting from the mirror" in out.stderr
    exported = fourth.tmp / "trainers" / "fake-trainer"
    assert (exported / ".exported-commit").read_text().strip() == fourth.commit
    assert "[loli] real fake tests: passed" in out.stderr and "1 passed" in out.stdout, out.stdout[-3000:]
    # the venv this run built is gone once its stage ended (three CUDA-torch venvs filled CI's disk) ...
    venv = Path(fourth.env["LOLI_FAKE_VENV"])
    assert f"[loli] removing {venv} (" in out.stderr and not venv.exists(), out.stderr[-3000:]
    # ... unless asked to keep it; and a venv that was there before the run is never removed
    for keep in ("1", "0"):
        again = fourth.ci(LOLI_TRAINERS="fake", LOLI_TRAINER_MIRRORS=str(fourth.mirrors), LOLI_KEEP_TRAINER_VENVS=keep)
        assert "[loli] real fake tests: passed" in again.stderr, again.stderr[-3000:]
        assert "[loli] removing" not in again.stderr and (venv / "bin" / "python").exists(), again.stderr[-3000:]
    # get-trainers lists it among the pins it knows, read from the same file
    listing = subprocess.run(
        [sys.executable, str(fourth.tree / "scripts" / "get-trainers"), "--help"],
        env=fourth.env,
        capture_output=True,
        text=True,
    )
    assert f"fake-trainer owner/fake-trainer@{fourth.commit[:7]}" in " ".join(listing.stdout.split())
