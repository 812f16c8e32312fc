"""The README and docs/ stay true: every Python block runs (the placeholders a user fills in, ``model``,
``steps`` and ``micro_batches``, are filled with tiny stand-ins), every TOML and JSON block parses, every
relative link points at a file (and a heading) that exists, the plain-PyTorch example runs, and the README
keeps the shape of a front door (at most ~200 lines, a quick start per trainer above line 80)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$", re.S | re.M)


def blocks(lang: str):
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            if match.group("lang") == lang:
                line = text[: match.start()].count("\n") + 1
                body = textwrap.dedent(match.group("body"))
                yield pytest.param(body, id=f"{page.relative_to(ROOT)}:{line}")


class TinyDenoiser(torch.nn.Module):
    """Stands in for the user's ``model``: ``model(noisy, t)`` -> a prediction shaped like ``noisy``."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.time = torch.nn.Linear(1, 1)

    def forward(self, x, t):
        t = torch.as_tensor(t, dtype=x.dtype).reshape(-1, 1)
        return self.conv(x) + self.time(t).view(-1, 1, 1, 1)


def placeholders() -> dict:
    torch.manual_seed(0)
    return {
        "model": TinyDenoiser(),
        "steps": 3,
        "micro_batches": lambda: [torch.randn(2, 1, 8, 8) for _ in range(2)],
    }


@pytest.mark.parametrize("code", list(blocks("python")))
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "docs_example", **placeholders()}
    exec(compile(code, "<docs block>", "exec"), namespace)


def test_the_readme_pytorch_quick_start_trains():
    """The README's loop really steps every cluster's state and logs per cluster."""
    readme = (ROOT / "README.md").read_text()
    code = next(b.values[0] for b in blocks("python") if b.id.startswith("README.md"))
    namespace = {"__name__": "docs_example", **placeholders(), "steps": 20}
    before = [p.detach().clone() for p in namespace["model"].parameters()]
    exec(compile(code, "README.md", "exec"), namespace)
    opt, logs = namespace["opt"], namespace["logs"]
    assert all(opt.bank(k) for k in range(10)), "every cluster's bank stepped (twice) in 20 steps"
    assert any(not torch.equal(a, b) for a, b in zip(before, namespace["model"].parameters()))
    assert "loss/normalized" in logs and sum(key.startswith("loss/cluster_") for key in logs) == 10
    assert "## Quick start: plain PyTorch" in readme


@pytest.mark.parametrize("text", list(blocks("toml")))
def test_toml_block_parses(text):
    import toml

    assert toml.loads(text) is not None


@pytest.mark.parametrize("text", list(blocks("json")))
def test_json_block_parses(text):
    json.loads(text)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (but - and _), spaces to -."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_readme_is_a_front_door():
    """At most ~200 lines; every quick start (one per trainer of scripts/trainers.toml, and the GUI's)
    above line 80; Windows' venv activation; the two commands."""
    from .trainer_support import trainer_list

    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, len(lines)
    quick_starts = {
        line.removeprefix("## Quick start: "): n
        for n, line in enumerate(lines, 1)
        if line.startswith("## Quick start: ")
    }
    libraries = {t.library for t in trainer_list().read_trainers().values()}
    assert libraries <= set(quick_starts), (libraries, quick_starts)
    trainers = {name: n for name, n in quick_starts.items() if name != "plain PyTorch"}
    assert len(trainers) > len(libraries) and all(n < 80 for n in trainers.values()), quick_starts  # + the GUI
    text = "\n".join(lines)
    assert "venv\\Scripts\\activate" in text and "bash examples/demo.sh" in text and "bash .ci/run" in text


def test_license_is_the_apache_2_text_pyproject_names():
    import toml

    assert toml.loads((ROOT / "pyproject.toml").read_text())["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert all(f"\n   {n}. " in text for n in range(1, 10)) and "END OF TERMS AND CONDITIONS" in text


def test_plain_pytorch_example_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_loop.py"), "--steps", "30", "--clusters", "5"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "normalized" in out.stdout and "optimizer steps per cluster" in out.stdout, out.stdout[-2000:]
