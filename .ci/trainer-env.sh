# Sourced by .ci/run with TRAINER=kohya or TRAINER=onetrainer: build that trainer's test venv and
# install loli-plugin into it from a freshly built wheel (so the .pth hook is the real one).
# Sets TRAINER_VENV and TRAINER_TESTS when the trainer's export is present; otherwise prints how to
# get it and leaves them empty (the tests then skip with the same instructions).
#   kohya:      $LOLI_KOHYA_DIR or ~/.cache/loli-plugin/trainers/sd-scripts
#   onetrainer: $LOLI_ONETRAINER_DIR / $LOLI_MGDS_DIR or ~/.cache/loli-plugin/trainers/{OneTrainer,mgds}
# Exports come from ../shared/tools/export-trainer (pins in ../shared/tools/trainers.toml).
TRAINER_VENV= TRAINER_TESTS=
trainers=$HOME/.cache/loli-plugin/trainers
case $TRAINER in
  kohya)
    tdir=${LOLI_KOHYA_DIR:-$trainers/sd-scripts}; marker=library/train_util.py
    tvenv=${LOLI_KOHYA_VENV:-$root/.venv-kohya-ci}; check="import library.train_util, scipy, pytest"
    extra=() ;;
  onetrainer)
    tdir=${LOLI_ONETRAINER_DIR:-$trainers/OneTrainer}; marker=modules/util/create.py
    tvenv=${LOLI_ONETRAINER_VENV:-$root/.venv-onetrainer-ci}; check="import transformers, customtkinter, PySide6, scipy, pytest"
    # OneTrainer's git-pinned diffusers/mgds/muon are not on PyPI: PyPI diffusers, mgds via its export;
    # its CUDA requirements pin bitsandbytes 0.49.1 (newer releases changed AdamW8bit's arguments)
    extra=("diffusers==0.39.0" "bitsandbytes==0.49.1") ;;
  *) echo "[loli] unknown TRAINER=$TRAINER" >&2; return 1 ;;
esac
if [[ ! -f $tdir/$marker ]]; then
  echo "[loli] $TRAINER not found at $tdir: its tests are skipped." >&2
  echo "[loli]   get it: fetch the trainer's repository, then ../shared/tools/export-trainer MIRROR $tdir" >&2
  return 0
fi
if [[ ! -x $tvenv/bin/python ]] || ! (cd "$tdir" && "$tvenv/bin/python" -c "$check") 2>/dev/null; then
  echo "[loli] building $tvenv for $TRAINER at $tdir (torch 2.14.1 from disk + the trainer's pins)" >&2
  python3 -m venv "$tvenv"
  "$tvenv/bin/pip" install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
  if [[ $TRAINER == onetrainer ]]; then
    grep -v "git+" "$tdir/requirements-global.txt" > "$tvenv/requirements-pypi.txt"
  fi
  # one resolve for the trainer's pins and our extras, so an extra cannot upgrade a pinned dependency
  # (a later, separate `pip install diffusers` pulled huggingface-hub 2.x past transformers 5.5.4's <2.0)
  reqs=("-r" "$tdir/requirements.txt")
  [[ $TRAINER == onetrainer ]] && reqs=("-r" "$tvenv/requirements-pypi.txt")
  (cd "$tdir" && "$tvenv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}" pytest scipy hypothesis "${extra[@]}")
fi
echo "[loli] installing loli-plugin into $tvenv from a wheel" >&2
wheel_dir=$(mktemp -d)
"$tvenv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$wheel_dir" "$root" 2>/dev/null
"$tvenv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel_dir"/*.whl
"$tvenv/bin/pip" install -q --disable-pip-version-check "pluggy>=1.3" "wrapt>=1.14"
rm -rf "$wheel_dir"
if [[ $TRAINER == onetrainer ]] && ! command -v Xvfb >/dev/null; then
  # the customtkinter window test needs a virtual X screen (the Qt one runs offscreen)
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[loli] installing Debian's xvfb for the customtkinter UI test" >&2
    apt-get install -y -q xvfb >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q xvfb >/dev/null 2>&1) \
      || echo "[loli] could not install xvfb: the customtkinter UI test will skip" >&2
  fi
fi
TRAINER_VENV=$tvenv
TRAINER_TESTS=tests/$TRAINER
