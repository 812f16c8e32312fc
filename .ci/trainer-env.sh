# Sourced by .ci/run with TRAINER=kohya, onetrainer or musubi: build that trainer's test venv and
# install loli-plugin into it from a freshly built wheel (so the .pth hook is the real one).
# Sets TRAINER_VENV and TRAINER_TESTS when the trainer's export is present. When it is missing, it is
# exported with scripts/get-trainers from local bare clones if there are any: $LOLI_TRAINER_MIRRORS,
# else a .mirror folder beside this checkout (how this project's CI machine keeps them), laid out as
# DIR/<owner>+<name>/repo. Otherwise it prints how to get it and leaves them empty (the tests then
# skip with the same instructions): an unreachable GitHub never fails CI.
#   kohya:      $LOLI_KOHYA_DIR or $LOLI_TRAINERS_DIR/sd-scripts (default ~/.cache/loli-plugin/trainers)
#   onetrainer: $LOLI_ONETRAINER_DIR and $LOLI_MGDS_DIR (default: beside OneTrainer), or
#               $LOLI_TRAINERS_DIR/{OneTrainer,mgds}
#   musubi:     $LOLI_MUSUBI_DIR or $LOLI_TRAINERS_DIR/musubi-tuner (pip-installed from that tree)
# The commits are pinned in scripts/trainers.toml.
TRAINER_VENV= TRAINER_TESTS=
trainers=${LOLI_TRAINERS_DIR:-$HOME/.cache/loli-plugin/trainers}
case $TRAINER in
  kohya)
    tdir=${LOLI_KOHYA_DIR:-$trainers/sd-scripts}; names=(sd-scripts)
    exports=("$tdir"); markers=(library/train_util.py)
    tvenv=${LOLI_KOHYA_VENV:-$root/.venv-kohya-ci}; check="import library.train_util, scipy, pytest, dadaptation, lion_pytorch, schedulefree, prodigyopt"
    # sd-scripts' own tests/test_optimizer.py imports these optimizers (tests/kohya/test_kohya_own_suite.py runs that suite)
    extra=("dadaptation" "lion-pytorch" "schedulefree" "prodigyopt") ;;
  onetrainer)
    tdir=${LOLI_ONETRAINER_DIR:-$trainers/OneTrainer}; mgds=${LOLI_MGDS_DIR:-$(dirname "$tdir")/mgds}
    names=(OneTrainer mgds); exports=("$tdir" "$mgds"); markers=(modules/util/create.py src/mgds)
    tvenv=${LOLI_ONETRAINER_VENV:-$root/.venv-onetrainer-ci}; check="import transformers, customtkinter, PySide6, scipy, pytest"
    # OneTrainer's git-pinned diffusers/mgds/muon are not on PyPI: PyPI diffusers, mgds via its export;
    # its CUDA requirements pin bitsandbytes 0.49.1 (newer releases changed AdamW8bit's arguments)
    extra=("diffusers==0.39.0" "bitsandbytes==0.49.1") ;;
  musubi)
    tdir=${LOLI_MUSUBI_DIR:-$trainers/musubi-tuner}; names=(musubi-tuner)
    exports=("$tdir"); markers=(src/musubi_tuner/training/trainer_base.py)
    tvenv=${LOLI_MUSUBI_VENV:-$root/.venv-musubi-ci}; check="import musubi_tuner, accelerate, transformers, diffusers, scipy, pytest, tensorboard"
    # musubi-tuner is a package (src/ layout, pyproject with its pins); the e2e test reads TensorBoard files
    extra=("tensorboard") ;;
  *) echo "[loli] unknown TRAINER=$TRAINER" >&2; return 1 ;;
esac
missing_exports() { local i; for i in "${!exports[@]}"; do [[ -e ${exports[i]}/${markers[i]} ]] || echo "${exports[i]}"; done; }
# what get-trainers may write: missing exports and its own (.exported-commit), which it brings to the
# pin if the pin changed; a checkout of the user's own is left alone
managed() { local i; for i in "${!exports[@]}"; do
  [[ -e ${exports[i]}/${markers[i]} && ! -f ${exports[i]}/.exported-commit ]] || echo "${names[i]}"; done; }
mirrors=${LOLI_TRAINER_MIRRORS:-$root/../.mirror}
mapfile -t to_export < <(managed)
if [[ -d $mirrors && ${#to_export[@]} -gt 0 ]]; then
  # a failure is reported by get-trainers itself; a trainer still missing is then skipped as below
  python "$root/scripts/get-trainers" --if-missing --mirrors "$mirrors" "${to_export[@]}" >&2 || true
fi
if [[ -n $(missing_exports) ]]; then
  echo "[loli] $TRAINER: no export at $(missing_exports | paste -sd ' '): its tests are skipped." >&2
  echo "[loli]   get it: python scripts/get-trainers ${names[*]}   (from GitHub at the commits in scripts/trainers.toml;" >&2
  echo "[loli]   offline: --mirror NAME=/path/to/bare-clone.git, or LOLI_TRAINER_MIRRORS=DIR for this script)" >&2
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
  [[ $TRAINER == musubi ]] && reqs=("$tdir")  # the tree itself, with the pins of its pyproject.toml
  (cd "$tdir" && "$tvenv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}" pytest scipy hypothesis "${extra[@]}")
  [[ $TRAINER == musubi ]] && cp "$tdir/.exported-commit" "$tvenv/musubi-tuner-commit" 2>/dev/null || true
fi
if [[ $TRAINER == musubi ]] && ! cmp -s "$tdir/.exported-commit" "$tvenv/musubi-tuner-commit" 2>/dev/null; then
  # pip installed a copy of the tree: bring it to the export after a new pin (or for a checkout of your own)
  echo "[loli] installing musubi-tuner from $tdir into $tvenv" >&2
  "$tvenv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$tdir"
  cp "$tdir/.exported-commit" "$tvenv/musubi-tuner-commit" 2>/dev/null || true
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
