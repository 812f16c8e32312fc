"""One place per trainer: a trainer is named in code and CI scripts only in its own places, and a new
trainer added in those places alone is picked up by .ci/run and scripts/get-trainers.

A trainer's places (docs/development.md, "Adding a trainer"): its adapter module and manifest, its patch
module, its tests folder, its entry in scripts/trainers.toml, its entry-point line in pyproject.toml,
and the docs (README.md, docs/, examples/, comments and docstrings). Trainers of one family (the
``family`` key) also share ``patches/<family>.py``. Code is everything else: Python outside comments and
docstrings, shell and TOML outside comments, the adapters' manifests.
"""

from __future__ import annotations

import ast
import io
import re
import shutil
import sys
import tokenize
from pathlib import Path

from .trainer_support import trainer_list

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = trainer_list().read_trainers()
#: the one thing a trainer-named module of the core may do: `python -m loli_plugin.<trainer>` was the launcher's
#: name before it served every trainer, and users' commands still call it (tests/<trainer>/ runs it)
LAUNCHER_ALIAS = 'if __name__ == "__main__":\n    __import__("loli_plugin.launch").launch.main()\n'
DOCS = ("README.md", "docs/", "examples/")
#: what is read as code: these folders and top-level files (venvs, exports and build output are not ours)
CODE_FOLDERS = (".ci", "_loli_plugin_autoload.py", "adapters", "loli_plugin", "patches", "scripts", "tests")
CODE_FILES = ("pyproject.toml", "setup.py", "MANIFEST.in", "loli_plugin.pth")
BINARY = {".png", ".pt", ".safetensors", ".jsonl", ".pyc"}


def names(trainer) -> set[str]:
    """How code may spell the trainer: its adapter name, its sources' names, its library's name."""
    spelled = {trainer.name, trainer.library.split("/")[1], *(s.name for s in trainer.sources)}
    return spelled | {n.replace("-", "_") for n in spelled}


def pattern(spellings) -> re.Pattern:
    # any case for the name, but not inside a longer word: "KohyaRun" and "LOLI_KOHYA_DIR" name it,
    # "kohyaish" does not
    alternatives = "|".join(re.escape(n) for n in sorted(spellings, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?i:{alternatives})(?![a-z0-9])")


FAMILIES = {t.family for t in TRAINERS.values() if t.family}
FAMILY_PATTERN = pattern({f for family in FAMILIES for f in (family, family.replace("-", "_"))})
PATTERNS = {t.name: pattern(names(t)) for t in TRAINERS.values()}


def places(trainer) -> set[str]:
    """Files (or folders, ending in /) where the trainer may be named anywhere."""
    own = {f"adapters/{trainer.name}.py", f"adapters/{trainer.name}.watch", f"patches/{trainer.name}.py"}
    own.add(trainer.tests.rstrip("/") + "/")
    if trainer.family:
        own.add(f"patches/{trainer.family.replace('-', '_')}.py")
    return own


def code_files() -> list[Path]:
    found = [ROOT / f for f in CODE_FILES if (ROOT / f).is_file()]
    for top in CODE_FOLDERS:
        path = ROOT / top
        found += [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sorted(
        p for p in found if p.suffix not in BINARY and "__pycache__" not in p.parts and not p.name.startswith(".venv")
    )


def python_code(text: str) -> list[tuple[int, str]]:
    """(line, code) of a Python file without its comments and docstrings."""
    docstrings = set()
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            value = body[0].value
            if isinstance(value, ast.Constant) and isinstance(value.value, str):
                docstrings.add((value.lineno, value.col_offset))
    out = []
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        if tok.type == tokenize.COMMENT or (tok.type == tokenize.STRING and tok.start in docstrings):
            continue
        out.append((tok.start[0], tok.string))
    return out


def hash_comment_code(text: str) -> list[tuple[int, str]]:
    """(line, code) of a shell, TOML or manifest file without its # comments."""
    return [(n, re.sub(r"(^|\s)#.*", "", line)) for n, line in enumerate(text.splitlines(), 1)]


def code_of(path: Path) -> list[tuple[int, str]]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py" or (path.suffix == "" and text.startswith("#!/usr/bin/env python")):
        return python_code(text)
    return hash_comment_code(text)


def trainers_toml_lines() -> dict[int, str]:
    """The trainer whose entry each line of scripts/trainers.toml belongs to."""
    owner, current = {}, None
    for n, line in enumerate((ROOT / "scripts" / "trainers.toml").read_text().splitlines(), 1):
        table = re.match(r"\[([^].]+)", line.strip())
        if table:
            current = table.group(1)
        owner[n] = current
    return owner


def named_out_of_place() -> list[str]:
    toml_owner = trainers_toml_lines()
    found = []
    for path in code_files():
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(DOCS) or is_launcher_alias(path):
            continue
        for line, code in [(0, rel), *code_of(path)]:  # line 0: the file's own path
            if rel == "pyproject.toml" and code.lstrip().startswith("description = "):
                continue  # the package's one-line description on PyPI: docs
            in_family = {t.family for t in TRAINERS.values() if t.family and _in(rel, places(t))}
            for match in FAMILY_PATTERN.finditer(code):
                family = match.group(0).replace("_", "-").lower()
                if family not in in_family and not (rel == "scripts/trainers.toml" and line in toml_owner):
                    found.append(f"{rel}:{line}: {match.group(0)} (the family of several trainers)")
            code = FAMILY_PATTERN.sub(" ", code)
            for name, regex in PATTERNS.items():
                for match in regex.finditer(code):
                    trainer = TRAINERS[name]
                    if _in(rel, places(trainer)):
                        continue
                    if rel == "scripts/trainers.toml" and toml_owner.get(line) == name:
                        continue
                    if rel == "pyproject.toml" and code.strip() == f'{name} = "loli_plugin.adapters.{name}"':
                        continue  # its entry point
                    found.append(f"{rel}:{line}: {match.group(0)} ({name})")
    return found


def is_launcher_alias(path: Path) -> bool:
    """loli_plugin/<trainer>.py holding nothing but a docstring and the launcher call."""
    if path.parent != ROOT / "loli_plugin" or path.stem not in TRAINERS:
        return False
    tree = ast.parse(path.read_text())
    body = tree.body[1:] if ast.get_docstring(tree) is not None else tree.body
    return [ast.dump(node) for node in body] == [ast.dump(node) for node in ast.parse(LAUNCHER_ALIAS).body]


def _in(rel: str, allowed: set[str]) -> bool:
    return any(rel == a or (a.endswith("/") and rel.startswith(a)) for a in allowed)


def test_a_trainer_is_named_only_in_its_places():
    assert named_out_of_place() == []


def test_the_place_check_finds_a_trainer_named_elsewhere(tmp_path, monkeypatch):
    """The check itself, on a tree made here: code naming a trainer outside its places fails it, in a
    string, an identifier or a file name; comments, docstrings and the trainer's own places do not."""
    name = spelled = next(iter(TRAINERS))
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "trainers.toml", tmp_path / "scripts")
    core, own = tmp_path / "loli_plugin" / "core.py", tmp_path / "patches" / f"{name}.py"
    for path in (core, own, tmp_path / "loli_plugin" / f"{name}.py"):
        path.parent.mkdir(exist_ok=True)
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "code_files", lambda: sorted(tmp_path.rglob("*.py")))
    core.write_text(f'"""about {spelled}"""\n# {spelled}\nOK = 1\n')
    own.write_text(f'TARGET = "{spelled}.module"\n')
    (tmp_path / "loli_plugin" / f"{name}.py").write_text(f'"""The old launcher name."""\n\n{LAUNCHER_ALIAS}')
    assert named_out_of_place() == []
    core.write_text(f'"""about it"""\nTARGET = "{spelled}.module"\nclass {spelled.title()}Run: pass\n')
    (tmp_path / "loli_plugin" / f"{name}.py").write_text(f"{LAUNCHER_ALIAS}X = 1\n")  # more than the alias
    found = sorted(named_out_of_place())
    assert [f.split(":", 2)[:2] for f in found] == [
        ["loli_plugin/core.py", "2"],
        ["loli_plugin/core.py", "3"],
        [f"loli_plugin/{name}.py", "0"],
    ], found
