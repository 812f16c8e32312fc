# Sourced by .ci/run (and usable by hand): build the sd-scripts test venv and run tests/kohya in it.
# sd-scripts is found at $LOLI_KOHYA_DIR or ~/.cache/loli-plugin/trainers/sd-scripts (an export made
# with ../shared/tools/export-trainer); without it this prints how to get it and returns.
# The venv holds sd-scripts' own pins plus torch 2.14.1 / torchvision 0.29.1 (on this workplace's
# disk) and loli-plugin installed from a freshly built wheel, so the .pth hook is the real one.
kohya_dir=${LOLI_KOHYA_DIR:-$HOME/.cache/loli-plugin/trainers/sd-scripts}
kvenv=${LOLI_KOHYA_VENV:-$root/.venv-kohya}
export LOLI_KOHYA_VENV=$kvenv
if [[ ! -f $kohya_dir/library/train_util.py ]]; then
  echo "[loli] sd-scripts not found at $kohya_dir: tests/kohya are skipped." >&2
  echo "[loli]   get it: fetch github:kohya-ss/sd-scripts, then ../shared/tools/export-trainer MIRROR $kohya_dir" >&2
  return 0 2>/dev/null || exit 0
fi
if [[ ! -x $kvenv/bin/python ]] || ! "$kvenv/bin/python" -c "import library.train_util, scipy, pytest" 2>/dev/null; then
  echo "[loli] building $kvenv for sd-scripts at $kohya_dir (torch 2.14.1 from disk, sd-scripts pins)" >&2
  python3 -m venv "$kvenv"
  "$kvenv/bin/pip" install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  (cd "$kohya_dir" && "$kvenv/bin/pip" install -q --disable-pip-version-check -r requirements.txt)
  "$kvenv/bin/pip" install -q --disable-pip-version-check pytest scipy hypothesis
fi
echo "[loli] installing loli-plugin into $kvenv from a wheel" >&2
wheel_dir=$(mktemp -d)
"$kvenv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$wheel_dir" "$root" 2>/dev/null
"$kvenv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel_dir"/*.whl
"$kvenv/bin/pip" install -q --disable-pip-version-check "pluggy>=1.3" "wrapt>=1.14"
rm -rf "$wheel_dir"
export LOLI_KOHYA_DIR=$kohya_dir
