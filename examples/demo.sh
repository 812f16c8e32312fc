#!/usr/bin/env bash
# The README's first command: set up .venv (CPU torch + loli-plugin with its demo extras) if needed,
# then run `loli-plugin demo`: the same tiny LoRA (scikit-learn's digits, no download; the pre-trained
# base model ships with the package) trained twice on CPU from the same seed, with AdamW and with
# LoliClustered; prints samples' FD, held-out loss per noise band and probe tables side by side and
# writes out/demo/demo.png. Arguments go to `loli-plugin demo` (e.g. --seed 3, --out DIR).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOLI_EXTRAS=demo  # the demo needs no test tools
# shellcheck source=../.ci/env.sh
. "$here/../.ci/env.sh"
python -m loli_plugin.cli demo "$@"
