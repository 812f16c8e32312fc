# Sourced by .ci/run with TRAINER set to a trainer of scripts/trainers.toml: build that trainer's test
# venv by the recipe there and install loli-plugin into it from a freshly built wheel (so the .pth hook
# is the real one). Sets TRAINER_VENV and TRAINER_TESTS when the trainer's exports are present. When one
# is missing, it is exported with scripts/get-trainers from local bare clones if there are any:
# $LOLI_TRAINER_MIRRORS, else a .mirror folder beside this checkout (how this project's CI machine keeps
# them), laid out as DIR/<owner>+<name>/repo. Otherwise it prints how to get it and leaves them empty
# (the tests then skip with the same instructions): an unreachable GitHub never fails CI.
# Where the exports and the venv are, and the environment variables that move them: scripts/trainers.toml.
TRAINER_VENV= TRAINER_TESTS=
# library tests tvenv install requirements check packages=() torch=() debian=() names=() exports=() markers=()
# test_versions=() short=()
recipe=$(python "$root/scripts/trainer_list.py" shell "$TRAINER") || return 1
eval "$recipe"
tdir=${exports[0]}  # the trainer's own tree (its companions follow)
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
if [[ -d $mirrors && ${#test_versions[@]} -gt 0 ]]; then
  # other versions of the trainer that some of its tests read (they skip, saying how to get one, without it)
  python "$root/scripts/get-trainers" --if-missing --mirrors "$mirrors" "${test_versions[@]}" >&2 || true
fi
if [[ -n $(missing_exports) ]]; then
  echo "[loli] $TRAINER: no export at $(missing_exports | paste -sd ' '): its tests are skipped." >&2
  echo "[loli]   get it: python scripts/get-trainers ${names[*]}   (from GitHub at the commits in scripts/trainers.toml;" >&2
  echo "[loli]   offline: --mirror NAME=/path/to/bare-clone.git, or LOLI_TRAINER_MIRRORS=DIR for this script)" >&2
  return 0
fi
tree_commit=$tvenv/${names[0]}-commit  # install = tree: the export's commit pip installed a copy of
if [[ ! -x $tvenv/bin/python ]] || ! (cd "$tdir" && "$tvenv/bin/python" -c "$check") 2>/dev/null; then
  echo "[loli] building $tvenv for $TRAINER at $tdir (${torch[*]:-no torch} + the trainer's pins)" >&2
  python3 -m venv "$tvenv"
  if (( ${#torch[@]} )); then
    "$tvenv/bin/pip" install -q --disable-pip-version-check "${torch[@]}"
  fi
  # one resolve for the trainer's pins and our packages, so a package cannot upgrade a pinned dependency
  # (a later, separate `pip install diffusers` pulled huggingface-hub 2.x past transformers 5.5.4's <2.0)
  case $install in
    requirements)  # lines pip cannot take from PyPI (git+...) are left out; the packages replace them
      { grep -v "git+" "$tdir/$requirements" || true; } > "$tvenv/requirements-pypi.txt"  # grep: 1 when none is left
      reqs=("-r" "$tvenv/requirements-pypi.txt") ;;
    tree) reqs=("$tdir") ;;  # the tree itself, with the pins of its pyproject.toml
  esac
  (cd "$tdir" && "$tvenv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}" "${packages[@]}")
  [[ $install == tree ]] && cp "$tdir/.exported-commit" "$tree_commit" 2>/dev/null || true
fi
if [[ $install == tree ]] && ! cmp -s "$tdir/.exported-commit" "$tree_commit" 2>/dev/null; then
  # pip installed a copy of the tree: bring it to the export after a new pin (or for a checkout of your own)
  echo "[loli] installing ${names[0]} from $tdir into $tvenv" >&2
  "$tvenv/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "$tdir"
  cp "$tdir/.exported-commit" "$tree_commit" 2>/dev/null || true
fi
echo "[loli] installing loli-plugin into $tvenv from a wheel" >&2
wheel_dir=$(mktemp -d)
rm -rf "$root/build"  # a stale build/lib would put modules that no longer exist into the wheel
"$tvenv/bin/pip" wheel -q --disable-pip-version-check --no-deps -w "$wheel_dir" "$root" 2>/dev/null
"$tvenv/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$wheel_dir"/*.whl
"$tvenv/bin/pip" install -q --disable-pip-version-check "pluggy>=1.3" "wrapt>=1.14"
rm -rf "$wheel_dir" "$root/build"
for package in "${debian[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "ok installed" && continue
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "[loli] installing Debian's $package for $tests" >&2
    apt-get install -y -q "$package" >/dev/null 2>&1 || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$package" >/dev/null 2>&1) \
      || echo "[loli] could not install $package: the tests in $tests that need it will skip" >&2
  fi
done
TRAINER_VENV=$tvenv
TRAINER_TESTS=$tests
