"""``loli-plugin doctor PATH``: what loli-plugin would patch in a trainer checkout, and whether it can.

Prints the trainer's commit, every patch target with ``ok`` or the reason it is missing, and whether
the short names (``--optimizer_type LoliClustered``, ``--loss_type loli``) are active in this Python.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def trainer_commit(path: Path) -> str:
    exported = path / ".exported-commit"
    if exported.is_file():
        return exported.read_text().strip()
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout and no .exported-commit)"


def add_parser(sub) -> None:
    p = sub.add_parser("doctor", help="check a trainer checkout against loli-plugin's patches")
    p.add_argument("path", help="folder of an sd-scripts checkout")
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.path).expanduser().resolve()
    if not (path / "library" / "train_util.py").is_file():
        print(f"{path}: no library/train_util.py here; give the folder of an sd-scripts checkout")
        return 1
    sys.path.insert(0, str(path))
    import _loli_plugin_autoload

    from .patches import kohya as patches

    print(f"sd-scripts at {path}")
    print(f"commit: {trainer_commit(path)}")
    print(f"supported: {patches.SUPPORTED}")
    problems = 0
    groups = [("entry (parser, short names)", patches.ENTRY), ("training (loss, SD timesteps)", patches.TRAINING)]
    groups += [(f"sampler {m}", inst) for m, inst in patches.FAMILIES.items()]
    for title, inst in groups:
        print(f"[{title}]")
        for target in inst.targets:
            problem = target.problem()
            problems += problem is not None
            print(f"  {target.name}: ok ({target.why})" if problem is None else f"  {problem}")
    hook = "active" if _loli_plugin_autoload.INSTALLED else (
        "OFF (LOLI_PLUGIN_DISABLE is set, or loli_plugin.pth did not run: use `python -m loli_plugin.kohya SCRIPT ...`)"
    )
    print(f"short names (.pth hook): {hook}")
    print("result: " + ("all patch targets found" if not problems else f"{problems} problem(s); loli-plugin will refuse to run"))
    return 1 if problems else 0
