"""Read scripts/trainers.toml: which commit of each trainer loli-plugin is tested against.

Used by scripts/get-trainers and by the trainers' test skip messages (tests/trainer_support.py), so
that both follow the one file. Trainers' venvs still often run Python 3.10, which has no tomllib;
there a small reader takes the subset of TOML the file uses ([name] tables of `key = "text"` lines).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PINS_FILE = Path(__file__).resolve().with_name("trainers.toml")


@dataclass(frozen=True)
class Pin:
    name: str  # the table name, also the folder name under the trainers' cache
    repo: str  # owner/name on GitHub
    commit: str  # full 40-hex-digit SHA
    note: str = ""

    @property
    def short(self) -> str:
        return self.commit[:7]


def read_pins(path: Path = PINS_FILE) -> dict[str, Pin]:
    """{name: Pin} in file order; a clear ValueError for a table that is not a usable pin."""
    pins = {}
    for name, table in parse_toml(path.read_text()).items():
        missing = sorted({"repo", "commit"} - table.keys())
        if missing:
            raise ValueError(f"{path}: [{name}] has no {' or '.join(missing)}")
        if not re.fullmatch(r"[0-9a-f]{40}", table["commit"]):
            raise ValueError(f"{path}: [{name}] commit must be a full 40-hex-digit SHA, not {table['commit']!r}")
        pins[name] = Pin(name, table["repo"], table["commit"], table.get("note", ""))
    return pins


def parse_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        return parse_pins_subset(text)
    return tomllib.loads(text)


_COMMENT = r"\s*(?:#.*)?"
_TABLE = re.compile(r"\[\s*([A-Za-z0-9_-]+)\s*\]" + _COMMENT)
_PAIR = re.compile(r'([A-Za-z0-9_-]+)\s*=\s*"([^"\\]*)"' + _COMMENT)


def parse_pins_subset(text: str) -> dict:
    """The subset of TOML trainers.toml uses; anything else is an error naming the line."""
    tables: dict[str, dict[str, str]] = {}
    current = None
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        table, pair = _TABLE.fullmatch(line), _PAIR.fullmatch(line)
        if table:
            current = tables.setdefault(table.group(1), {})
        elif pair and current is not None:
            current[pair.group(1)] = pair.group(2)
        else:
            raise ValueError(
                f'line {number}: not a [table] or key = "text" line (Python 3.10 reads only those): {line}'
            )
    return tables
