"""The checks scripts/compat-matrix runs against one version of a trainer, and their verdicts.

A trainer's test folder holds a driver (``drift_driver.py``: what a training run does before and at its
first step, through the trainer's own functions, printing "stage ..." lines and, last, one JSON line of
exact values) and a ``compat.py`` that names the driver's command lines (``MODES``: "plain" first, then
one per way a user asks for LoliClustered) and the cluster check (``CLUSTER_SPAN``). Each mode runs in a
fresh interpreter of the trainer's venv, from the version's tree:

* plain: with the plugin and with ``LOLI_PLUGIN_DISABLE=1``; "identical" when both results are equal
  bit for bit, "BROKEN" when only the plugin's run fails, "DIFFERS" when the results differ, "n/a" when
  the run fails without the plugin too (this venv, or the driver written for the pinned version, does
  not fit this version: its error says which);
* each Loli mode: "works" (LoliClustered built, the plugin's "active" line, and the step's timesteps
  inside one cluster), "refused" (the plugin's LoliUnsupportedTrainerError before any optimizer step),
  "refused by the trainer" (the trainer's own error before any step, after a ``loli-plugin:`` line that
  says why), else "STOCK" (a Loli run that trained with stock timesteps or optimizer: the worst bug) or
  "FAILED" (an error nobody explained);
* lines: the ``loli-plugin:`` lines of the plain run (what a user of that version sees on every run).

Python standard library only: the script runs with any Python; the drivers run with the trainer's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: printed by every driver right after the first optimizer step
STEPPED = "stage optimizer"
REFUSAL = "LoliUnsupportedTrainerError"


@dataclass
class Outcome:
    verdict: str
    detail: str = ""
    #: a verdict the project must not ship with (STOCK, BROKEN, DIFFERS, FAILED)
    bad: bool = False

    def cell(self) -> str:
        return self.verdict + (f" ({self.detail})" if self.detail else "")


@dataclass
class Checked:
    """One version's results: {mode: Outcome}, the plain run's plugin lines, the time it took."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def bad(self) -> bool:
        return any(o.bad for o in self.outcomes.values())


def load_compat(folder: Path):
    """The ``compat.py`` of a trainer's test folder (constants only: importable without the trainer)."""
    path = folder / "compat.py"
    spec = importlib.util.spec_from_file_location(f"loli_compat_{folder.name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in ("DRIVER", "MODES", "CLUSTER_SPAN"):
        if not hasattr(module, name):
            raise ValueError(f"{path} has no {name}")
    if next(iter(module.MODES), None) != "plain":
        raise ValueError(f"{path}: MODES must start with 'plain'")
    return module


def plugin_lines(stderr: str) -> list[str]:
    """What loli-plugin printed: its lines start with its name (a path such as ~/.cache/loli-plugin/... in
    another warning is not one of them)."""
    return [line for line in stderr.splitlines() if line.startswith("loli-plugin")]


def without_paths(text: str) -> str:
    """A message for the table: " (at /some/folder)" left out (the folder of an export says nothing there)."""
    return re.sub(r" \(at /[^)]*\)", "", text)


def last_error(stderr: str) -> str:
    """The line a reader looks for in a traceback: its last non-empty one."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


#: Runs a driver as ``python DRIVER TREE ARGV`` would, but with the venv's editable-install finders taken
#: off ``sys.meta_path`` first. The pinned trainer may be installed editable (sd-scripts' requirements.txt
#: ends with ``-e .``), and setuptools' finder resolves any submodule of its package that the version's tree
#: lacks from the pinned tree: a version would then be checked half with the pin's code. Without it, the
#: version's tree (first on sys.path) is the only source of the trainer's package.
ONLY_THE_TREE = """\
import runpy, sys
from pathlib import Path
def editable(finder):
    return (getattr(finder, "__module__", "") or type(finder).__module__).startswith("__editable__")
sys.meta_path[:] = [f for f in sys.meta_path if not editable(f)]
sys.argv = sys.argv[1:]
sys.path[0] = str(Path(sys.argv[0]).resolve().parent)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_driver(
    python: str, driver: Path, tree: Path, argv, disable: bool = False, env: dict | None = None, timeout: int = 600
):
    """Run ``driver`` with ``python`` from ``tree`` (``ONLY_THE_TREE``); (completed process, its last JSON
    line or None)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LOLI_PLUGIN_DISABLE", None)
    if disable:
        full_env["LOLI_PLUGIN_DISABLE"] = "1"
    proc = subprocess.run(
        [python, "-c", ONLY_THE_TREE, str(driver), str(tree), json.dumps(argv)],
        cwd=tree,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return proc, (json.loads(lines[-1]) if lines and proc.returncode == 0 else None)


def _span(values) -> float:
    numbers = [float.fromhex(v) if isinstance(v, str) else float(v) for v in values]
    return max(numbers) - min(numbers)


def plain_outcome(stock, with_plugin) -> Outcome:
    """``stock``/``with_plugin``: (process, result) of the plain mode without and with the plugin."""
    (stock_proc, stock_result), (proc, result) = stock, with_plugin
    if stock_result is None:
        return Outcome("n/a", f"fails without loli-plugin too: {last_error(stock_proc.stderr)}")
    if result is None:
        return Outcome("BROKEN", f"fails only with loli-plugin: {last_error(proc.stderr)}", bad=True)
    if result != stock_result:
        differ = sorted(k for k in set(result) | set(stock_result) if result.get(k) != stock_result.get(k))
        return Outcome("DIFFERS", "from the same tree without loli-plugin: " + ", ".join(differ), bad=True)
    return Outcome("identical")


def loli_outcome(run, cluster_span: dict, plain_result: dict | None) -> Outcome:
    """``run``: (process, result) of a Loli mode; ``cluster_span``: {result key: the widest span one
    cluster's draws can have}; ``plain_result``: the plain run's result (to tell whether stock draws would
    have failed the cluster check)."""
    proc, result = run
    if result is None:
        stepped = STEPPED in proc.stdout
        if REFUSAL + ": " in proc.stderr:  # the traceback's last line (its source lines name the class too)
            message = proc.stderr[proc.stderr.index(REFUSAL + ": ") :].splitlines()[0]
            if stepped:
                return Outcome("STOCK", f"refused only after an optimizer step: {message[:200]}", bad=True)
            return Outcome("refused", without_paths(message[len(REFUSAL) + 2 :])[:240])
        if plugin_lines(proc.stderr) and not stepped:
            return Outcome("refused by the trainer", f"after loli-plugin's line; its error: {last_error(proc.stderr)}")
        return Outcome("FAILED", last_error(proc.stderr), bad=True)
    if result.get("optimizer") != "LoliClustered":
        return Outcome("STOCK", f"the run built {result.get('optimizer')}", bad=True)
    if not any(
        line.startswith("loli-plugin active") or "LOLI_CLUSTERED(" in line for line in plugin_lines(proc.stderr)
    ):
        return Outcome("STOCK", "LoliClustered was built but loli-plugin never said it was active", bad=True)
    for key, widest in cluster_span.items():
        if key not in result:
            return Outcome("FAILED", f"the driver gave no {key!r} to check the cluster with", bad=True)
        span = _span(result[key])
        if span > widest:
            return Outcome("STOCK", f"{key} span {span:g}, wider than one cluster ({widest:g})", bad=True)
        if plain_result is not None and key in plain_result and _span(plain_result[key]) <= widest:
            return Outcome(
                "works", f"cluster check not informative: the stock {key} span only {_span(plain_result[key]):g}"
            )
    return Outcome("works")


def check_version(python: str, folder: Path, tree: Path, env: dict | None = None, say=print, jobs: int = 2) -> Checked:
    """Every mode of the trainer whose tests live in ``folder``, against the tree ``tree``; ``jobs`` runs at
    once (each is one interpreter importing torch and the trainer: mostly one core's work)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    compat = load_compat(folder)
    driver = folder / compat.DRIVER
    start = time.monotonic()
    modes = dict(compat.MODES)
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        stock = pool.submit(run_driver, python, driver, tree, modes["plain"], True, env)
        runs = {name: pool.submit(run_driver, python, driver, tree, argv, False, env) for name, argv in modes.items()}
        stock, runs = stock.result(), {name: run.result() for name, run in runs.items()}
    checked = Checked()
    checked.outcomes["plain"] = plain_outcome(stock, runs["plain"])
    checked.lines = plugin_lines(runs["plain"][0].stderr)
    say(f"  plain: {checked.outcomes['plain'].cell()}")
    for name, run in runs.items():
        if name == "plain":
            continue
        if checked.outcomes["plain"].verdict == "n/a":
            checked.outcomes[name] = Outcome("n/a", "the plain run could not run")
        else:
            checked.outcomes[name] = loli_outcome(run, compat.CLUSTER_SPAN, runs["plain"][1])
        say(f"  {name}: {checked.outcomes[name].cell()}")
    checked.seconds = time.monotonic() - start
    return checked


if __name__ == "__main__":  # python compat_checks.py PYTHON TEST_FOLDER TREE: one version, printed
    result = check_version(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
    sys.exit(1 if result.bad else 0)
