"""musubi-tuner v0.2.15 (2025-12-27), the last release that keeps NetworkTrainer in hv_train_network.py.
Issue 19 found that there the documented dotted route, ``--optimizer_type loli_plugin.LoliClustered``,
built LoliClustered and trained with musubi-tuner's stock timesteps, silently. Against the real tree
(exported beside the pinned one: scripts/trainers.toml ``test_versions``), through this folder's drift
driver in a fresh interpreter of the venv, with the tree first on sys.path:

* every route (``--optimizer_type loli_plugin.LoliClustered``, ``--optimizer_type LoliClustered``,
  ``--loss_type loli``) is refused with loli-plugin's error at musubi_tuner's import, before any optimizer
  step, naming the trainer, its version, the supported minimum and what to do (before, the short names
  stopped in musubi-tuner's own parsers with errors that did not name the plugin);
* a plain run is the same bit for bit as with loli-plugin disabled, and gets that one line;
* ``loli-plugin doctor`` reports the layout.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ..drift_support import plugin_lines, run_driver
from ..trainer_support import version_tree
from .compat import MODES

TREE, MISSING = version_tree("musubi", "v0.2.15")
pytestmark = pytest.mark.skipif(MISSING is not None, reason=MISSING or "")
DRIVER = Path(__file__).with_name("drift_driver.py")
WHO = "kohya-ss/musubi-tuner 0.2.15, commit 8ec9577"
LAYOUT = "NetworkTrainer in hv_train_network.py (musubi-tuner before v0.3.0)"


@pytest.fixture(scope="module")
def tree(musubi):  # the pinned suite's checks first: this venv, loli-plugin from a wheel
    assert (TREE / "src" / "musubi_tuner" / "hv_train_network.py").is_file()
    assert not (TREE / "src" / "musubi_tuner" / "training" / "trainer_base.py").exists()
    return TREE


@pytest.mark.parametrize(
    "argv, asked",
    [
        (MODES["loli_plugin.LoliClustered"], "--optimizer_type loli_plugin.LoliClustered"),
        (MODES["LoliClustered"], "--optimizer_type LoliClustered and --loss_type loli"),
        ([a for a in MODES["LoliClustered"] if a not in ("--loss_type", "loli")], "--optimizer_type LoliClustered"),
    ],
    ids=["dotted", "short-name-and-loss", "short-name"],
)
def test_every_route_is_refused_with_the_plugins_error_at_import(tree, argv, asked):
    proc, result = run_driver(DRIVER, tree, argv)
    assert result is None and "stage optimizer" not in proc.stdout  # no LoliClustered was ever stepped
    (line,) = plugin_lines(proc.stderr)  # said at musubi_tuner's import, and raised as the error
    assert line.startswith(f"loli-plugin: {WHO}") and LAYOUT in line
    assert f"This run asks for {asked}" in line and "Update kohya-ss/musubi-tuner to v0.3.4 or later" in line
    error = proc.stderr[proc.stderr.index("LoliUnsupportedTrainerError:") :]
    assert line.removeprefix("loli-plugin: ") in error
    # musubi-tuner's own errors for these options never come: the plugin's is the one the user reads
    assert "malformed node or string" not in proc.stderr and "unrecognized arguments" not in proc.stderr


def test_a_plain_run_is_stock_and_told_once(tree):
    proc, with_plugin = run_driver(DRIVER, tree, MODES["plain"])
    disabled, stock = run_driver(DRIVER, tree, MODES["plain"], disable=True)
    assert proc.returncode == 0 and disabled.returncode == 0, proc.stderr[-3000:]
    assert with_plugin == stock and with_plugin["optimizer"] == "AdamW" and "timesteps" in with_plugin
    (line,) = plugin_lines(proc.stderr)
    assert LAYOUT in line and "Plain runs are unaffected; runs with Loli options are refused" in line
    assert plugin_lines(disabled.stderr) == []


def test_doctor_reports_the_layout(tree, tmp_path):
    # run from elsewhere: from the checkout, `-m loli_plugin.cli` would import its source, not the wheel
    out = subprocess.run(
        [sys.executable, "-m", "loli_plugin.cli", "doctor", str(tree)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 1, out.stderr
    assert f"layout: {WHO}" in out.stdout and LAYOUT in out.stdout and "v0.3.4 or later" in out.stdout
