#!/usr/bin/env bash
# The README's first command: set up .venv (CPU torch + loli-plugin with its demo extras) if needed,
# then run `loli-plugin demo`: a tiny LoRA fine-tune on CPU (scikit-learn's digits, no download; the
# pre-trained base model ships with the package) that prints a per-cluster loss table and writes
# out/demo/demo_clusters.png (raw vs per-cluster loss).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOLI_EXTRAS=demo  # the demo needs no test tools
# shellcheck source=../.ci/env.sh
. "$here/../.ci/env.sh"
python -m loli_plugin.cli demo "$@"
