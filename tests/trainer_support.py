"""Shared by the real-trainer suites: how to get the pinned trainer (for the skip messages), is this
the trainer's own venv with loli-plugin installed from a wheel, and the skip-everything-below-this-
folder collection hook."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

LIST_MODULE = Path(__file__).resolve().parents[1] / "scripts" / "trainer_list.py"


def script_module(name: str):
    """``scripts/<name>.py`` as a module (a script folder, not a package)."""
    spec = importlib.util.spec_from_file_location(f"loli_{name}", LIST_MODULE.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@functools.cache
def trainer_list():
    """scripts/trainer_list.py, the reader of scripts/trainers.toml."""
    return script_module("trainer_list")


def trainer(name: str):
    """The trainer ``name`` of scripts/trainers.toml (its sources, venv and test folder)."""
    return trainer_list().read_trainers()[name]


def source_dir(source: str) -> Path:
    """Where the tests read the export of ``source`` (the folder scripts/get-trainers writes)."""
    pins = trainer_list().read_pins()
    return trainer_list().source_dir(pins[source], pins)


def missing_export(name: str, how_to: str) -> str | None:
    """Why the trainer's exports are not usable (the first source without its marker), or None."""
    for source in trainer(name).sources:
        folder = source_dir(source.name)
        if not (folder / source.marker).exists():
            return f"{source.name} not found at {folder}; {how_to}"
    return None


def version_tree(name: str, ref: str) -> tuple[Path, str | None]:
    """(folder, why it cannot be used or None) of another version of trainer ``name``'s own source, one of
    its ``test_versions`` in scripts/trainers.toml (scripts/get-trainers NAME@REF writes it)."""
    t = trainer(name)
    if ref not in t.test_versions:
        raise ValueError(f"{ref} is not in [{name}] test_versions of scripts/trainers.toml")
    source = t.sources[0]
    folder = trainer_list().version_dir(source, ref, trainer_list().read_pins())
    if (folder / ".exported-commit").is_file():
        return folder, None
    return folder, (
        f"{source.repo} {ref} not found at {folder}; `python scripts/get-trainers {source.name}@{ref}` exports it "
        "from GitHub (offline: add `--mirrors DIR` for bare clones at DIR/<owner>+<name>/repo); "
        f"`LOLI_TRAINERS={name} bash .ci/run` does it from the mirrors it finds"
    )


def how_to_get(name: str) -> str:
    """The instructions a skipped trainer test gives: the script, the pinned commits, the venv."""
    t = trainer(name)
    names = " ".join(s.name for s in t.sources)
    pinned = " and ".join(f"{s.repo} at commit {s.short}" for s in t.sources)
    return (
        f"to run the real-{t.sources[0].name} tests: `python scripts/get-trainers {names}` fetches {pinned} "
        "(the pins in scripts/trainers.toml) from GitHub into the folder these tests read (offline: add "
        f"`--mirror NAME=/path/to/bare-clone.git`), or point {' / '.join(s.dir_variable for s in t.sources)} at "
        f"your own checkout; then `LOLI_TRAINERS={name} bash .ci/run`, which builds {t.venv} (the trainer's own "
        "pins + loli-plugin from a wheel) and runs these tests in it"
    )


def venv_problem(required: tuple[str, ...], trainer: str, how_to: str) -> str | None:
    """Why the trainer's tests cannot run in this venv, or None."""
    for name in required:
        if importlib.util.find_spec(name) is None:
            return f"{trainer}'s requirements are not installed in this venv (no {name}); {how_to}"
    try:
        import _loli_plugin_autoload
    except ImportError:
        return f"loli-plugin's startup hook is not installed in this venv; {how_to}"
    if not _loli_plugin_autoload.INSTALLED:
        return f"loli_plugin.pth did not run (LOLI_PLUGIN_DISABLE set, or an editable install); {how_to}"
    return None


def skip_items_below(folder: Path, reason: str | None, items) -> None:
    """Mark every collected test under ``folder`` as skipped with ``reason`` (if there is one), except the
    ``standin`` ones: those run against a stand-in of the trainer that they write themselves."""
    if reason is None:
        return
    for item in items:
        if folder in Path(str(item.fspath)).parents and item.get_closest_marker("standin") is None:
            item.add_marker(pytest.mark.skip(reason=reason))


def run_python(code, path, env_extra=None, args=()):
    """Run ``python -c code`` (or ``python ARGS``) in ``path`` with ``path`` on PYTHONPATH, the way a trainer
    starts: LOLI_PLUGIN_DISABLE unset unless ``env_extra`` sets it."""
    env = {**os.environ, "PYTHONPATH": str(path), **(env_extra or {})}
    if "LOLI_PLUGIN_DISABLE" not in (env_extra or {}):
        env.pop("LOLI_PLUGIN_DISABLE", None)
    return subprocess.run(
        [sys.executable, *(["-c", code] if code else []), *args], capture_output=True, text=True, env=env, cwd=path
    )


#: the core venv installs loli-plugin editable (no .pth): a stand-in test's process installs the start-up
#: finder as the .pth line would (it does nothing under LOLI_PLUGIN_DISABLE=1)
STARTUP = "import _loli_plugin_autoload as a; a.install(); "

#: A trainer script in the style of the kohya-ss trainers, for stand-in layouts (put in whatever package a
#: test writes): it reads --optimizer_type and --optimizer_args as they do (a dotted name is imported, any
#: other is torch.optim's; each value through ast.literal_eval), then steps with its own, stock, timesteps.
#: Written here: no trainer code is copied.
STANDIN_TRAINER = """
import argparse, ast, importlib, sys
import torch


def setup_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--optimizer_type", default="AdamW")
    parser.add_argument("--optimizer_args", nargs="*", default=[])
    return parser


class NetworkTrainer:
    def get_optimizer(self, args, params):
        kwargs = {}
        for arg in args.optimizer_args:
            key, value = arg.split("=", 1)
            kwargs[key] = ast.literal_eval(value)
        if "." in args.optimizer_type:
            module, name = args.optimizer_type.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), name)
        else:
            cls = getattr(torch.optim, args.optimizer_type)
        return cls(params, lr=1e-2, **kwargs)

    def train(self, args):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(4))]
        optimizer = self.get_optimizer(args, params)
        print("optimizer", type(optimizer).__name__, flush=True)
        for step in range(3):
            t = torch.randint(0, 1000, (4,))  # the trainer's stock timesteps
            ((params[0] ** 2).sum() * t.float().mean() / 1000).backward()
            optimizer.step()
            optimizer.zero_grad()
            print("step", step, flush=True)
        print("final", [float(x).hex() for x in params[0].detach()], flush=True)


def main():
    NetworkTrainer().train(setup_parser().parse_args())
"""
#: the command lines of the stand-in trainer that ask for LoliClustered by its dotted class path and by its
#: short name, and a plain one
DOTTED = ["--optimizer_type", "loli_plugin.LoliClustered", "--optimizer_args", "inner='AdamW'", "clusters=4"]
SHORT = ["--optimizer_type", "LoliClustered", "--optimizer_args", "inner=AdamW", "clusters=4"]
PLAIN = ["--optimizer_type", "AdamW"]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """A stand-in tree: ``{relative path: text}`` written under ``root``."""
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@functools.cache
def compat_checks():
    """scripts/compat_checks.py: runs a driver with and without the plugin and reads what it printed
    (scripts/compat-matrix uses it too)."""
    return script_module("compat_checks")


def plugin_lines(stderr: str) -> list[str]:
    """What loli-plugin printed: the lines that start with its name."""
    return compat_checks().plugin_lines(stderr)


def run_logged(
    cmd: list[str], cwd: Path, out: Path, env: dict | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run a trainer's script from its folder (with ``env`` added to the environment); its output goes to
    ``out/train.log`` and the CPU seconds it took to ``out/train.cpu`` (``run_measured``); a failure shows the
    output's end. ``timeout`` (seconds): a multi-process run whose ranks wait for each other forever fails
    instead of hanging."""
    proc, _, cpu = run_measured(
        cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, **env} if env else None, timeout=timeout
    )
    (out / "train.log").write_text(proc.stdout + proc.stderr)
    (out / "train.cpu").write_text(f"{cpu:.2f}")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def cpu_seconds(out: Path) -> float:
    """The CPU seconds of the trainer run whose output is in ``out`` (``run_logged``)."""
    return float((out / "train.cpu").read_text())


def validation_lines(out: Path) -> list[str]:
    """The validation's per-pass lines (size, forward passes, wall and CPU seconds) in the output of the
    trainer run in ``out`` (``train.log``, as ``run_logged`` and the OneTrainer tests write it)."""
    text = (out / "train.log").read_text()
    return [line for line in text.splitlines() if line.startswith("loli-plugin: validation at step")]


def logged_scalars(log_dir: Path, run_glob: str = "*/network_train") -> dict[str, list[tuple[int, float]]]:
    """The TensorBoard scalars of the one run under ``log_dir`` that ``run_glob`` finds (read by
    ``loli-plugin plot``'s reader); the default is where a LoRA script's ``--logging_dir`` run goes."""
    from loli_plugin.plot import read_scalars

    (run_dir,) = log_dir.glob(run_glob)
    return read_scalars(run_dir)


def fresh_run_fixture(adapter_module: str):
    """An autouse fixture for a trainer suite's conftest: each test starts without a run and with the
    adapter's drift record as it was (a test that monkeypatches a target to look drifted must not leave
    the record behind). ``adapter_module`` is looked up, not imported: the start-up hook imports it
    with the trainer."""

    @pytest.fixture(autouse=True)
    def _fresh_run():
        adapter = sys.modules[adapter_module].ADAPTER if adapter_module in sys.modules else None
        recorded = dict(adapter.problems) if adapter is not None else None
        yield
        if adapter is not None:
            adapter.deactivate()
            adapter.problems.clear()
            adapter.problems.update(recorded)

    return _fresh_run


def run_measured(cmd, **kwargs):
    """``subprocess.run(cmd, **kwargs)``, plus the wall and CPU seconds (user + system) the trainer process
    took: CPU time is what the validation's cost is stated in, since wall time on a shared machine moves
    with the other jobs on it."""
    import resource
    import time

    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.monotonic()
    proc = subprocess.run(cmd, **kwargs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return proc, time.monotonic() - start, cpu
