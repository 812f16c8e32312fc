"""scripts/compat-matrix and scripts/compat_checks.py: the verdicts on made-up driver runs, and the whole
script against a throwaway trainer (a local bare repository with three refs and a driver that behaves as
each ref's tree says); the real trainers' rows are in docs/compatibility.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from .trainer_support import script_module

ROOT = Path(__file__).resolve().parents[1]
checks = script_module("compat_checks")

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def proc(stdout="", stderr="", rc=0):
    return SimpleNamespace(stdout=stdout, stderr=stderr, returncode=rc)


def ran(result=None, stdout="", stderr="", rc=None):
    """(process, result) as run_driver returns them."""
    rc = (0 if result is not None else 1) if rc is None else rc
    out = stdout + ("\n" + json.dumps(result) if result is not None else "")
    return proc(out, stderr, rc), result


PLAIN = {"optimizer": "AdamW", "t": [0, 999, 500, 10]}
ACTIVE = "loli-plugin active: LoliClustered(inner=AdamW, clusters=4, schedule=shuffle)"


# --------------------------------------------------------------------------- plain verdicts
def test_plain_identical_differs_broken_and_na():
    assert checks.plain_outcome(ran(PLAIN), ran(PLAIN)).verdict == "identical"
    differs = checks.plain_outcome(ran(PLAIN), ran({**PLAIN, "t": [1, 2, 3, 4]}))
    assert differs.verdict == "DIFFERS" and differs.bad and "t" in differs.detail
    broken = checks.plain_outcome(ran(PLAIN), ran(stderr="Traceback\nTypeError: boom"))
    assert broken.verdict == "BROKEN" and broken.bad and "TypeError: boom" in broken.detail
    na = checks.plain_outcome(ran(stderr="ModuleNotFoundError: No module named 'x'"), ran(stderr="same"))
    assert na.verdict == "n/a" and not na.bad and "No module named 'x'" in na.detail


EDITABLE_FINDER = """\
import importlib.util, sys
from pathlib import Path
PINNED = Path(__file__).with_name("pinned")
class _EditableFinder:  # as setuptools' editable install writes it: any toy.* from the pinned tree
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.startswith("toy."):
            return importlib.util.spec_from_file_location(name, PINNED / "toy" / (name.split(".")[1] + ".py"))
sys.meta_path.append(_EditableFinder)
"""


def test_a_version_is_checked_with_its_own_tree_only(tmp_path):
    """An editable install of the pinned trainer (sd-scripts' requirements end with ``-e .``) would fill in
    any module a version's tree lacks from the pin; the checks run each version with its tree only."""
    site = tmp_path / "site"
    (site / "pinned" / "toy").mkdir(parents=True)
    (site / "pinned" / "toy" / "extra.py").write_text("WHERE = 'pin'\n")
    (site / "__editable___toy_0_finder.py").write_text(EDITABLE_FINDER)
    (site / "sitecustomize.py").write_text("import __editable___toy_0_finder\n")
    tree = tmp_path / "old"
    (tree / "toy").mkdir(parents=True)
    (tree / "toy" / "__init__.py").write_text("")  # no extra.py in this version
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import json, sys\nsys.path.insert(0, sys.argv[1])\nimport toy.extra\n"
        "print(json.dumps({'where': toy.extra.WHERE}))\n"
    )
    env = {"PYTHONPATH": str(site)}
    mixed = subprocess.run(
        [sys.executable, str(driver), str(tree), "[]"], cwd=tree, env={**os.environ, **env}, capture_output=True
    )
    assert mixed.returncode == 0  # the finder works: a plain `python driver.py` would mix the versions
    proc, result = checks.run_driver(sys.executable, driver, tree, [], env=env)
    assert result is None and "No module named 'toy.extra'" in proc.stderr
    (tree / "toy" / "extra.py").write_text("WHERE = 'tree'\n")
    proc, result = checks.run_driver(sys.executable, driver, tree, [], env=env)
    assert result == {"where": "tree"}, proc.stderr


# --------------------------------------------------------------------------- Loli verdicts
SPAN = {"t": 250}


def test_a_loli_run_works_only_with_loli_clustered_the_active_line_and_one_cluster():
    assert checks.loli_outcome(
        ran({"optimizer": "LoliClustered", "t": [0, 240]}, stderr=ACTIVE), SPAN, PLAIN
    ).cell() == ("works")
    # the worst bug, three ways: another optimizer, no activation, timesteps wider than one cluster
    for result, stderr, why in [
        ({"optimizer": "AdamW", "t": [0, 1]}, ACTIVE, "built AdamW"),
        ({"optimizer": "LoliClustered", "t": [0, 1]}, "", "never said it was active"),
        ({"optimizer": "LoliClustered", "t": [0, 900]}, ACTIVE, "t span 900"),
    ]:
        outcome = checks.loli_outcome(ran(result, stderr=stderr), SPAN, PLAIN)
        assert outcome.verdict == "STOCK" and outcome.bad and why in outcome.detail, outcome
    # a check that stock draws would pass too says so
    narrow = checks.loli_outcome(
        ran({"optimizer": "LoliClustered", "t": [0, 240]}, stderr=ACTIVE), SPAN, {**PLAIN, "t": [1, 2]}
    )
    assert narrow.verdict == "works" and "not informative" in narrow.detail


def test_refusals_before_a_step_and_the_failures_that_are_not_refusals():
    error = "loli_plugin.errors.LoliUnsupportedTrainerError: loli-plugin cannot run X with this T: why."
    refused = checks.loli_outcome(ran(stdout="stage parsed", stderr="Traceback\n" + error), SPAN, PLAIN)
    assert refused.verdict == "refused" and not refused.bad and refused.detail.startswith("loli-plugin cannot run X")
    late = checks.loli_outcome(ran(stdout="stage optimizer", stderr=error), SPAN, PLAIN)
    assert late.verdict == "STOCK" and late.bad  # refused only after a step was taken
    by_trainer = checks.loli_outcome(
        ran(stderr="loli-plugin: T's old layout is not supported\nTraceback\nValueError: malformed node"), SPAN, PLAIN
    )
    assert by_trainer.verdict == "refused by the trainer" and "ValueError: malformed node" in by_trainer.detail
    failed = checks.loli_outcome(ran(stderr="Traceback\nValueError: malformed node"), SPAN, PLAIN)
    assert failed.verdict == "FAILED" and failed.bad
    # a path with the plugin's name in it is not a line of the plugin
    assert checks.plugin_lines("/x/.cache/loli-plugin/y.py:1: SyntaxWarning\nloli-plugin: a\n") == ["loli-plugin: a"]


# --------------------------------------------------------------------------- the whole script
TOY_DRIVER = """
import json, os, sys
tree, argv = sys.argv[1], json.loads(sys.argv[2])
behaviour = json.loads(open(os.path.join(tree, "behaviour.json")).read())
plugin = os.environ.get("LOLI_PLUGIN_DISABLE") != "1"
print("stage parsed", flush=True)
if plugin and behaviour.get("line"):
    print("loli-plugin: " + behaviour["line"], file=sys.stderr)
loli = "--loli" in argv
if loli and plugin and behaviour["loli"] == "refuse":
    raise SystemExit("loli_plugin.errors.LoliUnsupportedTrainerError: loli-plugin cannot run it: toy drifted")
out = {"optimizer": "LoliClustered" if loli else "AdamW"}
print("stage optimizer", flush=True)
if loli and behaviour["loli"] == "works":
    print("loli-plugin active: LoliClustered(...)", file=sys.stderr)
    out["t"] = [100, 120, 180]
else:
    out["t"] = [3, 500, 990]
print(json.dumps(out))
"""
TOY_COMPAT = """
DRIVER = "driver.py"
MODES = {"plain": ["--plain"], "Loli": ["--loli"]}
CLUSTER_SPAN = {"t": 250}
"""


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def toy(tmp_path):
    """A checkout with the scripts, a data file listing the throwaway trainer ``toy`` (refs v1: works,
    v2: refused with a drift line, dev: trains stock) and its test folder; the mirror at mirrors/owner+toy."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", cwd=work)
    git("config", "user.email", "test@example.com", cwd=work)
    git("config", "user.name", "test", cwd=work)
    for ref, behaviour in [
        ("v1", {"loli": "works"}),
        ("v2", {"loli": "refuse", "line": "toy.train: not found; toy runs without this patch"}),
        ("dev", {"loli": "stock"}),
    ]:
        (work / "behaviour.json").write_text(json.dumps(behaviour))
        git("add", "-A", cwd=work)
        git("commit", "-qm", ref, cwd=work)
        git("branch" if ref == "dev" else "tag", ref, cwd=work)
    mirror = tmp_path / "mirrors" / "owner+toy" / "repo"
    git("clone", "-q", "--bare", str(work), str(mirror), cwd=tmp_path)
    checkout = tmp_path / "checkout"
    (checkout / "scripts").mkdir(parents=True)
    for name in ("compat-matrix", "compat_checks.py", "trainer_list.py", "get-trainers"):
        shutil.copy(ROOT / "scripts" / name, checkout / "scripts")
    (checkout / "docs").mkdir()
    (checkout / "tests" / "toy").mkdir(parents=True)
    (checkout / "tests" / "toy" / "driver.py").write_text(TOY_DRIVER)
    (checkout / "tests" / "toy" / "compat.py").write_text(TOY_COMPAT)
    commit = git("rev-parse", "v1", cwd=work)
    (checkout / "scripts" / "trainers.toml").write_text(
        textwrap.dedent(f"""
        [toy]
        library = "owner/toy"
        tests = "tests/toy"
        venv = ".venv-toy"
        install = "tree"
        check = "import toy"
        versions = ["v1: previous release", "v2: release before", "dev: development branch"]
        short = ["v1"]

        [toy.sources.toy]
        repo = "owner/toy"
        commit = "{commit}"
        marker = "behaviour.json"
        dir_variable = "LOLI_TOY_DIR"
        """)
    )

    def run(*args):
        return subprocess.run(
            [sys.executable, str(checkout / "scripts" / "compat-matrix"), *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "LOLI_TRAINERS_DIR": str(tmp_path / "trainers"), "HOME": str(tmp_path)},
        )

    return SimpleNamespace(checkout=checkout, mirrors=tmp_path / "mirrors", trainers=tmp_path / "trainers", run=run)


def test_the_full_list_writes_the_table_and_fails_on_a_stock_run(toy):
    out = toy.run("--mirrors", str(toy.mirrors), "--python", f"toy={sys.executable}")
    assert out.returncode == 1, out.stderr  # dev trains stock
    doc = (toy.checkout / "docs" / "compatibility.md").read_text()
    rows = {line.split(" | ")[1]: line for line in doc.splitlines() if line.startswith("| toy |")}
    assert set(rows) == {"v1 (previous release)", "v2 (release before)", "dev (development branch)"}
    assert "| identical | works | none |" in rows["v1 (previous release)"]
    assert (
        "| identical | refused (loli-plugin cannot run it: toy drifted) | 1: toy.train: not found"
        in rows["v2 (release before)"]
    )
    assert (
        "| STOCK (LoliClustered was built but loli-plugin never said it was active) |"
        in rows["dev (development branch)"]
    )
    assert "loli-plugin: toy.train: not found; toy runs without this patch" in doc  # the lines in full
    assert "3 versions in" in doc and "python scripts/compat-matrix --mirrors" in doc
    # each ref's tree is exported once, with its commit, and reused by the next run
    assert (toy.trainers / "toy@v1" / ".exported-commit").is_file()
    again = toy.run("--short", "--mirrors", str(toy.mirrors), "--python", f"toy={sys.executable}")
    assert again.returncode == 0, again.stderr
    assert "exported" not in again.stdout and "| toy | v1 (previous release) |" in again.stdout
    assert "dev" not in again.stdout.split("|---")[1]  # the short form: v1 only


def test_a_ref_that_cannot_be_had_is_reported_not_hidden(toy):
    data = toy.checkout / "scripts" / "trainers.toml"
    data.write_text(data.read_text().replace('"dev: development branch"', '"dev: development branch", "v9: missing"'))
    out = toy.run(
        "--mirrors", str(toy.mirrors), "--python", f"toy={sys.executable}", "--out", str(toy.checkout / "m.md")
    )
    assert "toy v9: not checked: v9 is not in the mirror" in out.stdout
    assert (
        "| toy | v9 (missing) |  |  | n/a (not exported: v9 is not in the mirror" in (toy.checkout / "m.md").read_text()
    )


def test_bad_data_and_arguments_are_errors_that_say_what_to_fix(toy):
    out = toy.run("nosuch", "--mirrors", str(toy.mirrors))
    assert out.returncode == 2 and "no versions listed for nosuch; listed: toy" in out.stderr
    data = toy.checkout / "scripts" / "trainers.toml"
    data.write_text(data.read_text().replace('short = ["v1"]', 'short = ["v7"]'))
    out = toy.run("--short")
    assert out.returncode == 2 and "short names v7, not in versions" in out.stderr
    data.write_text(data.read_text().replace('"v1: previous release"', '"v1 previous release"'))
    out = toy.run("--short")
    assert out.returncode == 2 and 'versions must read "REF: what it is"' in out.stderr


def test_runs_saved_as_json_make_one_document(toy):
    """Each trainer's versions can run on their own (each in its venv) and be put in one table after."""
    python = f"toy={sys.executable}"
    first = toy.run(
        "--mirrors",
        str(toy.mirrors),
        "--python",
        python,
        "--out",
        str(toy.checkout / "a.md"),
        "--json",
        str(toy.checkout / "a.json"),
    )
    assert first.returncode == 1  # dev trains stock
    again = toy.run("--from-json", str(toy.checkout / "a.json"), "--out", str(toy.checkout / "b.md"))
    assert again.returncode == 1 and "from 1 saved run(s)" in again.stdout

    def rows(name):
        return [line for line in (toy.checkout / name).read_text().splitlines() if line.startswith("| toy |")]

    assert rows("a.md") == rows("b.md") and len(rows("a.md")) == 3
    doc = (toy.checkout / "b.md").read_text()
    saved = json.loads((toy.checkout / "a.json").read_text())
    assert "from `python scripts/compat-matrix --mirrors DIR --python toy=PYTHON --out FILE --json FILE`" in doc
    assert str(toy.mirrors) not in doc  # this machine's paths stay out of the document
    assert f"(loli-plugin at `{saved['plugin']}`)" in doc  # the commit the run was made at, saved with it
    # CI's short form (v1 only), timed by the run's own per-version measurement
    took = round(next(row["seconds"] for row in saved["rows"] if row["ref"] == "v1"))
    assert f"CI's short form checks toy v1; in the run above their checks took {took} s together" in doc
