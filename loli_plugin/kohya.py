"""Run an sd-scripts training script with loli-plugin active (where ``.pth`` files do not run):

    python -m loli_plugin.kohya train_network.py --optimizer_type LoliClustered ...
    accelerate launch -m loli_plugin.kohya train_network.py --optimizer_type LoliClustered ...
"""

import sys

from .launch import run_script

if __name__ == "__main__":
    run_script(sys.argv[1:], "loli_plugin.kohya", __doc__)
