"""Run an sd-scripts training script with loli-plugin active, for environments where ``.pth`` files
do not run (embedded Pythons, ``python -S``, some launchers) or for editable installs.

    python -m loli_plugin.kohya train_network.py --optimizer_type LoliClustered ...
    accelerate launch -m loli_plugin.kohya train_network.py --optimizer_type LoliClustered ...

The script runs as ``__main__`` exactly as ``python SCRIPT`` would run it (its folder first on
sys.path, the rest of the arguments in sys.argv).
"""

from __future__ import annotations

import os
import runpy
import sys


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    script = os.path.abspath(argv[0])
    if not os.path.isfile(script):
        raise SystemExit(f"loli_plugin.kohya: no such script: {argv[0]} (give the path of an sd-scripts training script)")
    os.environ.pop("LOLI_PLUGIN_DISABLE", None)  # asking for the launcher is asking for the plugin
    import _loli_plugin_autoload

    if not _loli_plugin_autoload.INSTALLED:
        _loli_plugin_autoload.INSTALLED = _loli_plugin_autoload.install()
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
