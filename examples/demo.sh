#!/usr/bin/env bash
# The README's first command: set up .venv (CPU torch + loli-plugin with its demo extras) if needed,
# then run `loli-plugin demo`: a tiny LoRA fine-tune on CPU (scikit-learn's digits, no download) that
# prints a per-cluster loss table and writes out/demo/demo_clusters.png (raw vs per-cluster loss).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../.ci/env.sh
. "$here/../.ci/env.sh"
python -m loli_plugin.cli demo "$@"
