#!/usr/bin/env bash
# The README's first command: set up .venv (CPU torch + loli-plugin) if needed, then run the example.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../.ci/env.sh
. "$here/../.ci/env.sh"
python examples/train_loop.py "$@"
