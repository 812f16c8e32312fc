"""Run a trainer's script with loli-plugin's start-up hook installed, for environments where ``.pth``
files do not run (embedded Pythons, ``python -S``, editable installs of loli-plugin):

    python -m loli_plugin.launch train_network.py --optimizer_type LoliClustered ...       # sd-scripts
    accelerate launch -m loli_plugin.launch train_network.py ...                           # sd-scripts, multi-GPU
    python -m loli_plugin.launch scripts/train.py --config-path my_config.json             # OneTrainer
    python -m loli_plugin.launch src/musubi_tuner/wan_train_network.py ...                 # musubi-tuner

The script runs as ``__main__`` exactly as ``python SCRIPT`` would run it (its folder first on
sys.path, the rest of the arguments in sys.argv). ``python -m loli_plugin.kohya`` and
``python -m loli_plugin.onetrainer`` are aliases kept for existing scripts.
"""

from __future__ import annotations

import os
import runpy
import sys


def run_script(argv: list[str], prog: str = "loli_plugin.launch") -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        raise SystemExit(0 if argv else 2)
    script = os.path.abspath(argv[0])
    if not os.path.isfile(script):
        raise SystemExit(f"{prog}: no such script: {argv[0]} (give the path of the trainer's script)")
    os.environ.pop("LOLI_PLUGIN_DISABLE", None)  # asking for the launcher is asking for the plugin
    import _loli_plugin_autoload

    _loli_plugin_autoload.install(by=_loli_plugin_autoload.INSTALLED_BY or "launcher")
    sys.argv = [script, *argv[1:]]
    sys.path.insert(0, os.path.dirname(script))
    runpy.run_path(script, run_name="__main__")


def main() -> None:
    run_script(sys.argv[1:], "python -m " + (__spec__.name if __spec__ else "loli_plugin.launch"))


if __name__ == "__main__":
    main()
