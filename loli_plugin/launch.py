"""Run a trainer's script with loli-plugin's start-up hook installed, for environments where ``.pth``
files do not run (embedded Pythons, ``python -S``, some launchers) or for editable installs.

The script runs as ``__main__`` exactly as ``python SCRIPT`` would run it (its folder first on
sys.path, the rest of the arguments in sys.argv).
"""

from __future__ import annotations

import os
import runpy
import sys


def run_script(argv: list[str], prog: str, usage: str) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(usage.strip())
        raise SystemExit(0 if argv else 2)
    script = os.path.abspath(argv[0])
    if not os.path.isfile(script):
        raise SystemExit(f"{prog}: no such script: {argv[0]} (give the path of the trainer's script)")
    os.environ.pop("LOLI_PLUGIN_DISABLE", None)  # asking for the launcher is asking for the plugin
    import _loli_plugin_autoload

    if not _loli_plugin_autoload.INSTALLED:
        _loli_plugin_autoload.INSTALLED = _loli_plugin_autoload.install()
        # processes the trainer spawns (OneTrainer's multi-GPU ranks) will not run this launcher
        _loli_plugin_autoload.VIA_LAUNCHER = True
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")
