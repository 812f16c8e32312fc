"""scripts/get-trainers against a tiny git repository made here (no network), the pins file it and
the trainers' skip messages read, and the README's instructions that name the same commits."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .trainer_support import how_to_get, trainer_list

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def entry(trainer: str, sources: dict[str, str], commit: str, **source_keys) -> str:
    """A trainers.toml entry: trainer ``trainer`` with ``sources`` {name: repo} pinned at ``commit``."""
    text = (
        f'[{trainer}]\nlibrary = "owner/{trainer}"\ntests = "tests/{trainer}"\nvenv = ".venv-{trainer}-ci"\n'
        f'install = "tree"\ncheck = "import {trainer}"\n'
    )
    for name, repo in sources.items():
        text += f'\n[{trainer}.sources.{name}]\nrepo = "{repo}"\ncommit = "{commit}"\nmarker = "train.py"\n'
        text += f'dir_variable = "LOLI_{name.upper()}_DIR"\n'
        text += "".join(f'{k} = "{v}"\n' for k, v in source_keys.get(name, {}).items())
    return text + "\n"


def git(*args, cwd):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def tiny(tmp_path):
    """A repository `owner/tiny` with two commits, published as bare repos under ``remote/``, and a
    copy of get-trainers whose trainers.toml pins the FIRST commit (the branch head is the second)."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", cwd=work)
    git("config", "user.email", "test@example.com", cwd=work)
    git("config", "user.name", "test", cwd=work)
    (work / "train.py").write_text("pinned\n")
    (work / "run.sh").write_text("#!/bin/sh\n")
    (work / "run.sh").chmod(0o755)
    (work / "lib").mkdir()
    (work / "lib" / "big.bin").write_bytes(b"\0" * 100)
    os.symlink("train.py", work / "alias.py")
    git("add", "-A", cwd=work)
    git("commit", "-qm", "pinned", cwd=work)
    pinned = git("rev-parse", "HEAD", cwd=work)
    (work / "train.py").write_text("newer\n")
    git("commit", "-qam", "newer", cwd=work)
    remote = tmp_path / "remote"
    for name in ("owner/tiny.git", "owner/other.git"):
        git("clone", "-q", "--bare", str(work), str(remote / name), cwd=tmp_path)
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    shutil.copy(SCRIPTS / "get-trainers", scripts)
    shutil.copy(SCRIPTS / "trainer_list.py", scripts)
    (scripts / "trainers.toml").write_text(
        entry("tiny", {"tiny": "owner/tiny"}, pinned)
        + entry("pair", {"other": "owner/other", "companion": "owner/tiny"}, pinned, companion={"beside": "other"})
    )

    class Tiny:
        pass

    t = Tiny()
    t.tmp, t.work, t.pinned, t.remote, t.cache = tmp_path, work, pinned, remote, tmp_path / "cache"

    def run(*args, **env):
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LOLI_")}
        environ.update(LOLI_TRAINERS_DIR=str(t.cache), **env)
        return subprocess.run(
            [sys.executable, str(scripts / "get-trainers"), *args], capture_output=True, text=True, env=environ
        )

    t.run = run
    t.url = f"file://{remote}"
    return t


def test_fetches_the_pinned_commit_into_the_cache_folder(tiny):
    out = tiny.run("tiny", "--base-url", tiny.url)
    assert out.returncode == 0, out.stderr
    dest = tiny.cache / "tiny"
    assert (dest / "train.py").read_text() == "pinned\n"  # the pin, not the branch head ("newer")
    assert (dest / ".exported-commit").read_text().strip() == tiny.pinned
    assert os.access(dest / "run.sh", os.X_OK) and os.readlink(dest / "alias.py") == "train.py"
    assert not (dest / ".git").exists()
    assert f"tiny {tiny.pinned[:7]}: fetching {tiny.url}/owner/tiny.git" in out.stdout
    assert not [p.name for p in tiny.cache.iterdir() if p.name != "tiny"]  # no temporary folder left behind


def test_if_missing_keeps_an_export_at_the_pin_and_replaces_one_at_another_commit(tiny):
    assert tiny.run("tiny", "--base-url", tiny.url).returncode == 0
    dest = tiny.cache / "tiny"
    (dest / "train.py").write_text("touched\n")
    out = tiny.run("tiny", "--if-missing", "--base-url", tiny.url)
    assert out.returncode == 0 and "already at the pin" in out.stdout
    assert (dest / "train.py").read_text() == "touched\n"  # left alone

    (dest / ".exported-commit").write_text("0" * 40 + "\n")  # an export of an older pin
    out = tiny.run("tiny", "--if-missing", "--base-url", tiny.url)
    assert out.returncode == 0, out.stderr
    assert (dest / "train.py").read_text() == "pinned\n" and (
        dest / ".exported-commit"
    ).read_text().strip() == tiny.pinned

    (dest / "train.py").write_text("touched\n")
    assert tiny.run("tiny", "--base-url", tiny.url).returncode == 0  # without --if-missing: written again
    assert (dest / "train.py").read_text() == "pinned\n"


def test_if_missing_accepts_a_git_checkout_at_the_pin(tiny):
    checkout = tiny.cache / "tiny"
    git("clone", "-q", str(tiny.work), str(checkout), cwd=tiny.tmp)
    git("checkout", "-q", tiny.pinned, cwd=checkout)
    out = tiny.run("tiny", "--if-missing", "--base-url", tiny.url)
    assert out.returncode == 0 and "already at the pin" in out.stdout


def test_a_folder_it_did_not_write_is_never_replaced(tiny):
    own = tiny.cache / "tiny"
    own.mkdir(parents=True)
    (own / "mine.txt").write_text("my work\n")
    out = tiny.run("tiny", "--base-url", tiny.url)
    assert out.returncode == 2
    assert "was not written by get-trainers" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert (own / "mine.txt").read_text() == "my work\n"


def test_the_per_source_variable_chooses_the_folder(tiny):
    own = tiny.tmp / "elsewhere" / "other"
    out = tiny.run("other", "--base-url", tiny.url, LOLI_OTHER_DIR=str(own))
    assert out.returncode == 0, out.stderr
    assert (own / "train.py").read_text() == "pinned\n" and not (tiny.cache / "other").exists()


def test_a_trainer_name_fetches_its_sources_and_beside_follows_the_other_folder(tiny):
    own = tiny.tmp / "elsewhere" / "other"
    out = tiny.run("pair", "--base-url", tiny.url, LOLI_OTHER_DIR=str(own))
    assert out.returncode == 0, out.stderr
    assert (own / "train.py").read_text() == "pinned\n"
    assert (own.parent / "companion" / ".exported-commit").read_text().strip() == tiny.pinned
    assert not (tiny.cache / "tiny").exists()  # the other trainer's source is not fetched


def test_a_mirror_lacking_some_blobs_still_gives_the_rest(tiny):
    """Partial mirrors leave out large binaries; the export names what it left out."""
    mirror = tiny.work / ".git"  # loose objects, so one blob can be taken away
    big = git("rev-parse", f"{tiny.pinned}:lib/big.bin", cwd=tiny.work)
    (mirror / "objects" / big[:2] / big[2:]).unlink()
    out = tiny.run("tiny", "--mirror", f"tiny={mirror}")
    assert out.returncode == 0, out.stderr
    dest = tiny.cache / "tiny"
    assert (dest / "train.py").read_text() == "pinned\n" and not (dest / "lib" / "big.bin").exists()
    assert "1 file(s) absent from the mirror left out: lib/big.bin" in out.stdout


def test_mirrors_folder_layout_owner_plus_name(tiny):
    mirrors = tiny.tmp / "mirrors"
    shutil.copytree(tiny.remote / "owner" / "tiny.git", mirrors / "owner+tiny" / "repo")
    out = tiny.run("tiny", "--mirrors", str(mirrors))
    assert out.returncode == 0, out.stderr
    assert (tiny.cache / "tiny" / "train.py").read_text() == "pinned\n"


def test_unreachable_source_is_one_line_and_exit_2(tiny):
    out = tiny.run("tiny", "--base-url", f"file://{tiny.tmp}/nowhere")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"get-trainers: error: tiny {tiny.pinned[:7]}: could not fetch")
    assert "--mirror tiny=" in lines[0] and not (tiny.cache / "tiny").exists()


def test_a_mirror_without_the_pinned_commit_is_an_error(tiny):
    empty = tiny.tmp / "empty.git"
    git("init", "-q", "--bare", str(empty), cwd=tiny.tmp)
    out = tiny.run("tiny", "--mirror", f"tiny={empty}")
    assert out.returncode == 2 and "does not have it" in out.stderr


def test_unknown_trainer_name_is_refused(tiny):
    out = tiny.run("no-such-trainer")
    assert out.returncode == 2 and "unknown trainer no-such-trainer" in out.stderr


def test_the_list_holds_each_trainer_with_its_sources_and_reads_the_same_without_tomllib():
    module = trainer_list()
    trainers = module.read_trainers()
    assert trainers and all(t.sources and t.tests == f"tests/{t.name}" for t in trainers.values())
    assert all((ROOT / t.tests).is_dir() and (ROOT / "adapters" / f"{t.name}.py").is_file() for t in trainers.values())
    pins = module.read_pins()
    assert all(len(p.commit) == 40 and "/" in p.repo for p in pins.values())
    tomllib = pytest.importorskip("tomllib")
    text = module.LIST_FILE.read_text()
    assert module.parse_toml_subset(text) == tomllib.loads(text)  # the Python 3.10 reader
    with pytest.raises(ValueError, match="line 2"):
        module.parse_toml_subset('[a]\nrepo = {inline = "table"}\n')


@pytest.mark.parametrize(
    "change, message",
    [
        (('install = "tree"', 'install = "conda"'), "install must be one of requirements, tree"),
        (("check = ", "chek = "), "unknown key(s) chek"),
        (('marker = "train.py"\n', ""), "has no marker"),
        (('commit = "', 'commit = "abc'), "full 40-hex-digit SHA"),
        (("[pair.sources.other]", "[pair.sources.tiny]"), "the source name tiny is also used by [tiny]"),
    ],
)
def test_an_entry_that_cannot_be_used_is_a_clear_error(tmp_path, change, message):
    text = entry("tiny", {"tiny": "owner/tiny"}, "0" * 40) + entry("pair", {"other": "owner/other"}, "0" * 40)
    path = tmp_path / "trainers.toml"
    path.write_text(text.replace(*change, 1))
    with pytest.raises(ValueError, match=re.escape(message)):
        trainer_list().read_trainers(path)


def test_skip_messages_and_readme_name_the_script_and_the_pinned_commits():
    module = trainer_list()
    for trainer in module.read_trainers().values():
        text = how_to_get(trainer.name)
        names = [s.name for s in trainer.sources]
        assert f"python scripts/get-trainers {' '.join(names)}" in text and f"LOLI_TRAINERS={trainer.name}" in text
        assert all(s.short in text and s.dir_variable in text for s in trainer.sources)
    development = (ROOT / "docs" / "development.md").read_text()
    section = development[development.index("## Testing against the real trainers") :]
    section = section[: section.index("\n## ")]
    assert "scripts/get-trainers" in section and all(p.short in section for p in module.read_pins().values())
    for text in (
        (ROOT / "README.md").read_text(),
        *(p.read_text() for p in (ROOT / "docs").rglob("*.md")),
        *(p.read_text() for p in (ROOT / "tests").glob("*/conftest.py")),
        (ROOT / "tests" / "trainer_support.py").read_text(),
    ):
        assert "shared/" not in text and ".mirror" not in text  # nothing a user's clone does not have
