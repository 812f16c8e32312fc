"""``loli-plugin doctor PATH``: which trainer a checkout holds, what loli-plugin patches in it, and
whether each patch fits.

It recognises every trainer an installed adapter supports (``TrainerAdapter.find_checkout``), prints
the checkout's commit, the supported versions, the start-up hook's state and, for every patch, ``ok``
or the reason it does not fit. Checking imports the trainer's modules from PATH (run it in the
trainer's own venv).

The hook's state is what a fresh interpreter of this venv has at start-up (a subprocess; importing
``_loli_plugin_autoload`` here would install the hook and prove nothing). A trainer module that cannot
be imported because one of its *dependencies* is missing means the wrong venv, not an incompatible
trainer: the result line says which it found (exit 3: wrong venv, 1: a patch does not fit or the hook
is off, 0: ready).
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path


def trainer_commit(path: Path) -> str:
    exported = path / ".exported-commit"
    if exported.is_file():
        return exported.read_text().strip()
    try:
        return subprocess.run(
            ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout and no .exported-commit)"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "doctor", help="check a trainer's checkout (any an installed adapter knows) against loli-plugin's patches"
    )
    p.add_argument("path", help="folder of a trainer checkout (run this in the trainer's own venv)")
    p.set_defaults(func=run)


#: run by a fresh interpreter: what it has at start-up, read without importing anything of loli-plugin
_HOOK_PROBE = r"""
import json, os, site, sys
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]  # -c puts the folder first: a checkout's egg-info
module = sys.modules.get("_loli_plugin_autoload")
folders = list(site.getsitepackages()) if hasattr(site, "getsitepackages") else []
if site.ENABLE_USER_SITE:
    folders.append(site.getusersitepackages())
editable = None
try:
    from importlib.metadata import distribution
    direct = distribution("loli-plugin").read_text("direct_url.json")
    editable = bool(direct and json.loads(direct).get("dir_info", {}).get("editable"))
except Exception:
    pass
print(json.dumps({
    "finder": any(type(f).__module__ == "_loli_plugin_autoload" for f in sys.meta_path),
    "by": getattr(module, "INSTALLED_BY", None),
    "pth": [os.path.join(d, "loli_plugin.pth") for d in folders if os.path.isfile(os.path.join(d, "loli_plugin.pth"))],
    "folders": folders,
    "editable": editable,
    "disable": os.environ.get("LOLI_PLUGIN_DISABLE", ""),
}))
"""

LAUNCHER = "python -m loli_plugin.launch SCRIPT ..."


def hook_state(python: str = sys.executable, cwd: Path | None = None) -> tuple[bool, str]:
    """(active, what to print) for the start-up hook as a fresh ``python`` sees it: this process may
    have imported ``_loli_plugin_autoload`` itself, which installs the hook, so it cannot tell."""
    try:
        probe = subprocess.run(
            [python, "-c", _HOOK_PROBE], capture_output=True, text=True, timeout=120, cwd=cwd, check=True
        )
        seen = json.loads(probe.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as exc:
        return False, f"unknown: a fresh {python} could not be asked ({type(exc).__name__}: {exc})"
    if seen["finder"]:
        where = seen["pth"][0] if seen["pth"] else "a .pth line"
        return True, f"active (pth): a fresh {python} starts it from {where}"
    if seen["disable"].strip().lower() in ("1", "true", "yes", "on"):
        return False, f"OFF: LOLI_PLUGIN_DISABLE={seen['disable']} is set; unset it to use loli-plugin"
    if seen["pth"]:
        return False, (
            f"OFF: {seen['pth'][0]} is there but a fresh {python} did not run it (site disabled?); "
            f"start the trainer through `{LAUNCHER}`"
        )
    if seen["editable"]:
        return False, (
            "OFF: loli-plugin is an editable install (pip install -e), which puts no loli_plugin.pth in "
            "site-packages; install it with `pip install /path/to/loli-plugin` (no -e), or start the trainer "
            f"through `{LAUNCHER}`"
        )
    return False, (
        f"OFF: no loli_plugin.pth in {', '.join(seen['folders']) or 'site-packages'}; reinstall with "
        "`pip install --force-reinstall --no-deps /path/to/loli-plugin`"
    )


def _is_own_module(path: Path, name: str | None) -> bool:
    """Is ``name`` a module of the trainer checkout at ``path`` (rather than one of its dependencies)?"""
    if not name:
        return False
    top = name.split(".")[0]
    return any((root / top).is_dir() or (root / f"{top}.py").is_file() for root in (path, path / "src"))


class Report:
    """What checking one checkout found."""

    def __init__(self):
        self.problems = 0  # patches that do not fit
        self.missing: dict[str, str] = {}  # dependency module -> the trainer module that needs it
        self.unchecked = 0  # patches whose module could not be imported here


def check(adapter, path: Path, hook: str, report: Report) -> None:
    """Print the report for one trainer and add what it found to ``report``."""
    print(f"{adapter.library} at {path}")
    print(f"commit: {trainer_commit(path)}")
    print(f"supported: {adapter.supported}")
    print(f"start-up hook: {hook}")
    for inst, scope in adapter.instrumentors():
        print(f"[{scope}-time patches of {', '.join(sorted(inst.modules()))}]")
        unimportable = {}
        for module in sorted(inst.modules()):
            if module in sys.modules:
                continue
            try:
                importlib.import_module(module)
            except ImportError as exc:
                if _is_own_module(path, exc.name) or exc.name is None:
                    print(f"  {module}: cannot be imported ({type(exc).__name__}: {exc})")
                    continue  # the trainer's own module is missing: its patches report it below
                report.missing.setdefault(exc.name.split(".")[0], module)
                unimportable[module] = f"needs {exc.name}, which is not installed in this venv"
            except Exception as exc:  # the trainer's own import-time errors: report, keep checking
                unimportable[module] = f"cannot be imported here ({type(exc).__name__}: {exc})"
        for module, why in unimportable.items():
            print(f"  {module}: {why}")
        for patch in inst.patches:
            if patch.module in unimportable:
                report.unchecked += 1
                print(f"  {patch.name}: not checked ({patch.module} did not import)")
                continue
            problem = None if inst.is_applied(patch) else patch.problem()
            if problem and patch.optional and problem.endswith(": not found"):
                print(f"  {patch.name}: absent in this version (optional)")
                continue
            report.problems += problem is not None
            print(f"  {patch.name}: ok ({patch.why})" if problem is None else f"  {problem}")


def verdict(report: Report, hook_active: bool, python: str) -> tuple[int, str]:
    """The exit status and the result line: wrong venv, incompatible trainer, hook off, or ready."""
    if report.missing:
        deps = ", ".join(sorted(report.missing))
        line = (
            f"wrong venv: {python} lacks the trainer's dependencies ({deps}), so {report.unchecked} patch "
            "target(s) could not be checked; this says nothing about the trainer. Activate the trainer's own "
            "venv (Linux/macOS: `source venv/bin/activate`, Windows: `venv\\Scripts\\activate`), install "
            "loli-plugin there (`pip install /path/to/loli-plugin`) and run `loli-plugin doctor PATH` again"
        )
        if report.problems:
            line += f"; of the targets that could be checked, {report.problems} do not fit (listed above)"
        return 3, line
    if report.problems:
        return 1, (
            f"incompatible trainer: {report.problems} patch(es) do not fit this checkout; plain runs are "
            "unaffected, runs with Loli options will stop with this list. Use a supported version (above)"
        )
    if report.unchecked:
        return 1, f"{report.unchecked} patch target(s) could not be checked here (see above)"
    if not hook_active:
        return 1, "every patch fits, but the start-up hook is off (see above): a Loli run will stop until it is on"
    return 0, "every patch fits"


def _unfit_layout(adapter, path: Path) -> Path | None:
    """The trainer's package folder when ``path`` holds that trainer in a layout the adapter does not fit
    (an old one it knows, ``TrainerLayout.old``, or one it does not know)."""
    layout, entry = getattr(adapter, "layout", None), getattr(adapter, "entry_patch", None)
    if layout is None or entry is None:
        return None
    folder = layout.find_package(path)
    return folder if folder is not None and layout.layout_problem(folder, entry.module) else None


def run(args) -> int:
    from .adapter import adapters

    path = Path(args.path).expanduser().resolve()
    found = [a for a in adapters() if a.find_checkout(path)]
    unfit = [] if found else [(a, folder) for a in adapters() if (folder := _unfit_layout(a, path)) is not None]
    if unfit:
        for a, folder in unfit:
            print(f"{a.library} at {path}")
            print(f"commit: {trainer_commit(path)}")
            print(f"supported: {a.supported}")
            print(f"layout: {a.layout.describe(folder)}: {a.layout.layout_problem(folder, a.entry_patch.module)}")
        print(
            "result: a layout loli-plugin does not support; plain runs are unaffected, runs with Loli options are "
            f"refused. Update the trainer to {', '.join(a.layout.minimum for a, _ in unfit)} or later to use them"
        )
        return 1
    if not found:
        names = ", ".join(a.library for a in adapters())
        print(f"loli-plugin doctor: error: {path} holds no trainer loli-plugin knows ({names})", file=sys.stderr)
        return 2
    active, hook = hook_state(cwd=path)  # before this process imports anything of the trainer
    sys.path.insert(0, str(path))
    os.chdir(path)  # trainers load resources relative to their root
    report = Report()
    for adapter in found:
        check(adapter, path, hook, report)
    status, line = verdict(report, active, sys.executable)
    print(f"result: {line}")
    return status
