"""``loli-plugin doctor PATH``: which trainer a checkout holds, what loli-plugin patches in it, and
whether each patch fits.

It recognises every trainer an installed adapter supports (``TrainerAdapter.find_checkout``), prints
the checkout's commit, the supported versions, the start-up hook's state and, for every patch, ``ok``
or the reason it does not fit. Checking imports the trainer's modules from PATH (run it in the
trainer's own venv).
"""

from __future__ import annotations

import importlib
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


def _hook_state() -> str:
    try:
        import _loli_plugin_autoload as autoload
    except ImportError:
        return "not installed (loli_plugin.pth is missing: install loli-plugin with pip, not -e)"
    if autoload.INSTALLED:
        return f"active ({autoload.INSTALLED_BY})"
    return (
        "OFF: LOLI_PLUGIN_DISABLE is set"
        if autoload.disabled()
        else "OFF: loli_plugin.pth did not run; use `python -m loli_plugin.launch SCRIPT ...`"
    )


def check(adapter, path: Path) -> int:
    """Print the report for one trainer; return the number of patches that do not fit."""
    print(f"{adapter.library} at {path}")
    print(f"commit: {trainer_commit(path)}")
    print(f"supported: {adapter.supported}")
    print(f"start-up hook: {_hook_state()}")
    problems = 0
    for inst, scope in adapter.instrumentors():
        print(f"[{scope}-time patches of {', '.join(sorted(inst.modules()))}]")
        for module in sorted(inst.modules()):
            if module not in sys.modules:
                try:
                    importlib.import_module(module)
                except Exception as exc:  # the trainer's own import errors: report, keep checking
                    print(f"  {module}: cannot be imported here ({type(exc).__name__}: {exc})")
        for patch in inst.patches:
            problem = None if inst.is_applied(patch) else patch.problem()
            if problem and patch.optional and problem.endswith(": not found"):
                print(f"  {patch.name}: absent in this version (optional)")
                continue
            problems += problem is not None
            print(f"  {patch.name}: ok ({patch.why})" if problem is None else f"  {problem}")
    return problems


def run(args) -> int:
    from .adapter import adapters

    path = Path(args.path).expanduser().resolve()
    found = [a for a in adapters() if a.find_checkout(path)]
    if not found:
        names = ", ".join(a.library for a in adapters())
        print(f"loli-plugin doctor: error: {path} holds no trainer loli-plugin knows ({names})", file=sys.stderr)
        return 2
    sys.path.insert(0, str(path))
    os.chdir(path)  # trainers load resources relative to their root
    problems = sum(check(a, path) for a in found)
    print(
        "result: "
        + (
            "every patch fits"
            if not problems
            else f"{problems} patch(es) do not fit; plain runs are unaffected, "
            "runs with Loli options will stop with this list"
        )
    )
    return 1 if problems else 0
