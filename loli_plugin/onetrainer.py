"""Run a OneTrainer script with loli-plugin active (where ``.pth`` files do not run), from
OneTrainer's folder:

    python -m loli_plugin.onetrainer scripts/train.py --config-path my_config.json
    python -m loli_plugin.onetrainer scripts/train_ui_qt.py
"""

import sys

from .launch import run_script

if __name__ == "__main__":
    run_script(sys.argv[1:], "loli_plugin.onetrainer", __doc__)
