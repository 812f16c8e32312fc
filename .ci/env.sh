# Sourced by .ci/run and examples/demo.sh: make (or reuse) the project venv and install the plugin
# with its test extras. torch is pinned to the CPU wheel that lies on this workplace's disk; a bare
# `pip install torch` would pull a multi-GB CUDA build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LOLI_VENV:-$root/.venv}
if [[ ! -x $venv/bin/python ]]; then
  echo "[loli] creating $venv" >&2
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
if ! python -c "import loli_plugin, pytest, scipy, sklearn, peft, matplotlib, tensorboard" 2>/dev/null || [[ ${LOLI_REINSTALL:-0} == 1 ]]; then
  echo "[loli] installing torch (CPU) and loli-plugin[test] into $venv" >&2
  python -m pip install -q --disable-pip-version-check --upgrade pip
  python -m pip install -q --disable-pip-version-check "torch==${LOLI_TORCH_VERSION:-2.13.0}"
  python -m pip install -q --disable-pip-version-check -e "$root[test]"
fi
cd "$root"
