"""Read scripts/trainers.toml: the trainers loli-plugin integrates with, the commits it is tested
against, and how each trainer's test venv is built.

The one reader of that file for scripts/get-trainers, .ci/run and .ci/trainer-env.sh (through the
command line below) and the trainers' test skip messages (tests/trainer_support.py). Trainers' venvs
still often run Python 3.10, which has no tomllib; there a small reader takes the subset of TOML the
file uses: ``[a.b]`` tables, ``key = "text"`` and ``key = ["text", ...]`` lines, comments.

    python scripts/trainer_list.py names            # the trainers, one a line (.ci/run's stages)
    python scripts/trainer_list.py shell TRAINER    # bash assignments for .ci/trainer-env.sh
    python scripts/trainer_list.py dir SOURCE       # the folder the tests read a source's export from
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

LIST_FILE = Path(__file__).resolve().with_name("trainers.toml")
ROOT = LIST_FILE.parents[1]
#: where the exports go unless a source's dir_variable or LOLI_TRAINERS_DIR says otherwise
DEFAULT_TRAINERS_DIR = "~/.cache/loli-plugin/trainers"
INSTALLS = ("requirements", "tree")

_TRAINER_KEYS = {
    "library",
    "family",
    "tests",
    "venv",
    "install",
    "requirements",
    "packages",
    "torch",
    "check",
    "debian",
    "versions",
    "short",
    "test_versions",
}
_TRAINER_REQUIRED = {"library", "tests", "venv", "install", "check"}
_SOURCE_KEYS = {"repo", "commit", "marker", "dir_variable", "beside", "note"}
_SOURCE_REQUIRED = {"repo", "commit", "marker", "dir_variable"}


@dataclass(frozen=True)
class Source:
    """One repository a trainer's tests need, at its pinned commit."""

    name: str  # the table name, also the folder name under the trainers' cache
    trainer: str  # the trainer it belongs to
    repo: str  # owner/name on GitHub
    commit: str  # full 40-hex-digit SHA
    marker: str  # a path only a complete export has
    dir_variable: str  # environment variable naming a folder of one's own
    beside: str = ""  # another source whose folder this one's default sits beside
    note: str = ""

    @property
    def short(self) -> str:
        return self.commit[:7]


@dataclass(frozen=True)
class Trainer:
    """One trainer integration and the recipe of its test venv."""

    name: str  # the adapter's name: adapters/<name>.py, patches/<name>.py, tests/<name>/
    library: str
    tests: str
    venv: str
    install: str
    check: str
    sources: tuple[Source, ...]
    family: str = ""
    requirements: str = ""
    packages: tuple[str, ...] = ()
    torch: tuple[str, ...] = ()
    debian: tuple[str, ...] = ()
    #: other versions of the trainer (its first source) scripts/compat-matrix checks: "REF: what it is"
    versions: tuple[str, ...] = ()
    #: the refs of ``versions`` in CI's short form of the matrix
    short: tuple[str, ...] = ()
    #: refs its tests read besides the pins (exported like them, to <source>@<ref>; a test skips without one)
    test_versions: tuple[str, ...] = ()

    @property
    def refs(self) -> dict[str, str]:
        """{ref: what it is} of ``versions``, in file order."""
        return dict(entry.split(": ", 1) for entry in self.versions)

    @property
    def venv_variable(self) -> str:
        return f"LOLI_{self.name.upper()}_VENV"


def read_trainers(path: Path = LIST_FILE) -> dict[str, Trainer]:
    """{name: Trainer} in file order; a clear ValueError for an entry that cannot be used."""
    trainers, seen = {}, {}
    for name, table in parse_toml(path.read_text()).items():
        where = f"{path}: [{name}]"
        sources = table.get("sources")
        fields = {k: v for k, v in table.items() if k != "sources"}
        _check_keys(where, fields, _TRAINER_KEYS, _TRAINER_REQUIRED)
        if not isinstance(sources, dict) or not sources:
            raise ValueError(f"{where} has no [{name}.sources.<name>] table (the repository of the trainer)")
        if fields["install"] not in INSTALLS:
            raise ValueError(f"{where} install must be one of {', '.join(INSTALLS)}, not {fields['install']!r}")
        if fields["install"] == "requirements" and not fields.get("requirements"):
            raise ValueError(f'{where} install = "requirements" needs requirements = "<file in the export>"')
        for key in ("packages", "torch", "debian", "versions", "short", "test_versions"):
            if not isinstance(fields.get(key, []), list):
                raise ValueError(f"{where} {key} must be a list of strings")
            fields[key] = tuple(fields.get(key, ()))
        made = []
        for source_name, source in sources.items():
            source_where = f"{path}: [{name}.sources.{source_name}]"
            if not isinstance(source, dict):
                raise ValueError(f"{source_where} must be a table")
            _check_keys(source_where, source, _SOURCE_KEYS, _SOURCE_REQUIRED)
            if not re.fullmatch(r"[0-9a-f]{40}", source["commit"]):
                raise ValueError(f"{source_where} commit must be a full 40-hex-digit SHA, not {source['commit']!r}")
            if source_name in seen:
                raise ValueError(f"{source_where}: the source name {source_name} is also used by [{seen[source_name]}]")
            seen[source_name] = name
            made.append(Source(source_name, name, **source))
        bad = [v for v in fields["versions"] if ": " not in v or not v.split(": ", 1)[0].strip()]
        if bad:
            raise ValueError(f'{where} versions must read "REF: what it is", not {bad[0]!r}')
        listed = {v.split(": ", 1)[0] for v in fields["versions"]}
        if set(fields["short"]) - listed:
            raise ValueError(f"{where} short names {', '.join(sorted(set(fields['short']) - listed))}, not in versions")
        trainers[name] = Trainer(name, sources=tuple(made), **fields)
    every = {s.name for t in trainers.values() for s in t.sources}
    for trainer in trainers.values():
        for s in trainer.sources:
            if s.beside and s.beside not in every:
                raise ValueError(f"{path}: [{trainer.name}.sources.{s.name}] beside = {s.beside!r}: no such source")
    return trainers


def _check_keys(where: str, table: dict, known: set, required: set) -> None:
    unknown, missing = sorted(set(table) - known), sorted(required - set(table))
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    if missing:
        raise ValueError(f"{where} has no {' or '.join(missing)}")
    for key, value in table.items():
        if not isinstance(value, (str, list)) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)
        ):
            raise ValueError(f"{where} {key} must be text or a list of text")


def read_pins(path: Path = LIST_FILE) -> dict[str, Source]:
    """Every source of every trainer, {name: Source}, in file order (what get-trainers fetches)."""
    return {s.name: s for t in read_trainers(path).values() for s in t.sources}


def source_dir(source: Source, pins: dict[str, Source], environ=os.environ) -> Path:
    """The folder a source is exported to and its tests read: its dir_variable, else beside the source it
    names, else $LOLI_TRAINERS_DIR/<name> (default ~/.cache/loli-plugin/trainers/<name>)."""
    own = environ.get(source.dir_variable)
    if own:
        return Path(own).expanduser()
    if source.beside:
        return source_dir(pins[source.beside], pins, environ).parent / source.name
    return Path(environ.get("LOLI_TRAINERS_DIR") or DEFAULT_TRAINERS_DIR).expanduser() / source.name


def version_dir(source: Source, ref: str, pins: dict[str, Source], environ=os.environ) -> Path:
    """The folder another version of a source is exported to (scripts/get-trainers NAME@REF): beside the
    source's own, named <name>@<ref> (characters other than letters, digits, '.', '_', '-' become '-')."""
    return source_dir(source, pins, environ).parent / f"{source.name}@{re.sub(r'[^A-Za-z0-9._-]+', '-', ref)}"


def venv_dir(trainer: Trainer, environ=os.environ, root: Path = ROOT) -> Path:
    return Path(environ.get(trainer.venv_variable) or root / trainer.venv)


def parse_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return parse_toml_subset(text)
    return tomllib.loads(text)


_COMMENT = r"\s*(?:#.*)?"
_KEY = r"[A-Za-z0-9_-]+"
_TEXT = r'"[^"\\]*"'
_TABLE = re.compile(rf"\[\s*({_KEY}(?:\.{_KEY})*)\s*\]" + _COMMENT)
_PAIR = re.compile(rf"({_KEY})\s*=\s*({_TEXT}|\[\s*(?:{_TEXT}\s*(?:,\s*{_TEXT}\s*)*,?)?\s*\])" + _COMMENT)


def parse_toml_subset(text: str) -> dict:
    """The subset of TOML trainers.toml uses (a list may span lines); anything else is an error naming the
    line."""
    tables: dict = {}
    current = None
    pending = ""  # the lines so far of a list written over several lines
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if pending or re.fullmatch(rf"{_KEY}\s*=\s*\[[^\]]*", line.split("#")[0].strip()):
            pending += " " + re.sub(r"\s*#.*$", "", line) if pending else line
            if not pending.rstrip().endswith("]"):
                continue
            line, pending = pending, ""
        table, pair = _TABLE.fullmatch(line), _PAIR.fullmatch(line)
        if table:
            current = tables
            for part in table.group(1).split("."):
                current = current.setdefault(part, {})
        elif pair and current is not None:
            value = pair.group(2)
            current[pair.group(1)] = re.findall(r'"([^"\\]*)"', value) if value.startswith("[") else value[1:-1]
        else:
            raise ValueError(
                f'line {number}: not a [table], key = "text" or key = ["text", ...] line '
                f"(Python 3.10 reads only those): {line}"
            )
    return tables


def shell(trainer: Trainer, environ=os.environ) -> str:
    """Bash assignments of one trainer's recipe, for .ci/trainer-env.sh (``eval``)."""
    pins = {s.name: s for s in trainer.sources}
    every = read_pins()
    values = {
        "library": trainer.library,
        "tests": trainer.tests,
        "tvenv": str(venv_dir(trainer, environ)),
        "install": trainer.install,
        "requirements": trainer.requirements,
        "check": trainer.check,
        "packages": list(trainer.packages),
        "torch": list(trainer.torch),
        "debian": list(trainer.debian),
        "names": list(pins),
        "exports": [str(source_dir(s, every, environ)) for s in trainer.sources],
        "markers": [s.marker for s in trainer.sources],
        # other versions its tests read, as get-trainers names them; the versions of CI's short compat-matrix
        "test_versions": [f"{trainer.sources[0].name}@{ref}" for ref in trainer.test_versions],
        "short": list(trainer.short),
    }
    lines = []
    for key, value in values.items():
        quoted = f"({' '.join(shlex.quote(v) for v in value)})" if isinstance(value, list) else shlex.quote(value)
        lines.append(f"{key}={quoted}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    try:
        trainers = read_trainers()
    except (OSError, ValueError) as err:
        print(f"trainer_list: error: cannot read {LIST_FILE}: {err}", file=sys.stderr)
        return 2
    if argv == ["names"]:
        print("\n".join(trainers))
        return 0
    if len(argv) == 2 and argv[0] == "shell":
        if argv[1] not in trainers:
            print(
                f"trainer_list: error: no trainer {argv[1]!r} in {LIST_FILE} ({', '.join(trainers)})", file=sys.stderr
            )
            return 2
        print(shell(trainers[argv[1]]))
        return 0
    pins = read_pins()
    if len(argv) == 2 and argv[0] == "dir" and argv[1] in pins:
        print(source_dir(pins[argv[1]], pins))
        return 0
    print(f"usage: trainer_list.py names | shell TRAINER | dir SOURCE (one of {', '.join(pins)})", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
