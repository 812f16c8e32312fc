# Sourced by .ci/run and examples/demo.sh: make (or reuse) the project venv .venv and install the
# plugin editable with the extras named in LOLI_EXTRAS (default test; demo.sh sets demo). A variable,
# not an argument: a script that sources this file without arguments passes its own ones on.
# One venv serves the demo and the tests: [test] lists everything [demo] needs. torch is pinned to the CPU wheel that lies
# on this workplace's disk; a bare `pip install torch` would pull a multi-GB CUDA build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${LOLI_VENV:-$root/.venv}
extras=${LOLI_EXTRAS:-test}
if [[ ! -x $venv/bin/python ]]; then
  echo "[loli] creating $venv" >&2
  python3 -m venv "$venv"
fi
# shellcheck disable=SC1091
. "$venv/bin/activate"
# A stamp per installed extra holds the hash of the pyproject.toml it was installed from, so pip runs
# again only when these extras are missing or the dependencies changed.
pyproject_hash=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
installed() { [[ -f $venv/.loli-$1 && $(cat "$venv/.loli-$1") == "$pyproject_hash" ]]; }
if [[ ${LOLI_REINSTALL:-0} == 1 ]] || ! { installed "$extras" || { [[ $extras == demo ]] && installed test; }; }; then
  echo "[loli] installing torch (CPU) and loli-plugin[$extras] into $venv" >&2
  python -m pip install -q --disable-pip-version-check --upgrade pip
  python -m pip install -q --disable-pip-version-check "torch==${LOLI_TORCH_VERSION:-2.13.0}"
  python -m pip install -q --disable-pip-version-check -e "$root[$extras]"
  echo "$pyproject_hash" > "$venv/.loli-$extras"
fi
cd "$root"
