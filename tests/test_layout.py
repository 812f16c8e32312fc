"""The package's shape, checked on its source: no import cycles (function-level imports included), the
core imports no trainer adapter, patches never import their adapter, each trainer of scripts/trainers.toml
has its adapter, manifest, patch module and entry point, nothing inspects stack frames, and the renamed
modules answer to their old names."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from .trainer_support import trainer_list

REPO = Path(__file__).resolve().parents[1]
# source folder -> package name (pyproject.toml's package-dir)
PACKAGES = {
    REPO / "loli_plugin": "loli_plugin",
    REPO / "adapters": "loli_plugin.adapters",
    REPO / "patches": "loli_plugin.patches",
}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def imports_of(name: str) -> set[str]:
    """Every package module ``name`` imports, wherever the import statement is (functions included)."""
    tree = ast.parse(MODULES[name].read_text())
    base = name if is_package(name) else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                module = ".".join(anchor + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" for alias in node.names] + [module]
        for target in targets:
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


GRAPH = {name: imports_of(name) for name in MODULES}


TRAINERS = trainer_list().read_trainers()


def test_the_source_tree_is_what_pyproject_installs():
    assert "loli_plugin.adapter" in MODULES and "loli_plugin.patches.instrument" in MODULES
    assert all(f"loli_plugin.adapters.{name}" in MODULES for name in TRAINERS)


def test_no_import_cycles():
    # a package's __init__ importing its own submodules is how Python packages work, not a cycle of ours
    graph = {n: {m for m in deps if not (is_package(m) and n.startswith(m + "."))} for n, deps in GRAPH.items()}
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert cycles == [], "\n".join(" -> ".join(c) for c in cycles)


def test_the_core_imports_no_adapter_and_patches_import_no_adapter():
    for name, deps in GRAPH.items():
        if name.startswith("loli_plugin.adapters"):
            continue
        adapters = sorted(d for d in deps if d.startswith("loli_plugin.adapters"))
        assert adapters == [], f"{name} imports {adapters}"


def test_each_trainer_has_its_adapter_manifest_patches_and_entry_point():
    import toml

    entry_points = toml.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]["loli_plugin"]
    for name in TRAINERS:
        assert f"loli_plugin.patches.{name}" in GRAPH[f"loli_plugin.adapters.{name}"]  # its own patches
        assert (REPO / "adapters" / f"{name}.watch").is_file()
        assert entry_points.get(name) == f"loli_plugin.adapters.{name}"
    assert set(entry_points) == set(TRAINERS)  # and no adapter the list does not name


FRAME_INSPECTION = re.compile(
    r"sys\._getframe|inspect\.(stack|currentframe|getouterframes|trace)\b|\bf_locals\b|\bf_back\b"
)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_stack_frame_inspection(name):
    assert not FRAME_INSPECTION.search(MODULES[name].read_text()), f"{name} inspects stack frames"


def test_no_stack_frame_inspection_at_start_up():
    assert not FRAME_INSPECTION.search((REPO / "_loli_plugin_autoload.py").read_text())


def test_watch_manifests_are_the_adapters_watches():
    import _loli_plugin_autoload
    from loli_plugin.adapter import adapters

    shipped = {a.name: set(a.watches) for a in adapters()}
    assert set(TRAINERS) <= set(shipped)
    assert set().union(*shipped.values()) <= _loli_plugin_autoload.read_manifests()
    for a in adapters():  # every module an import-time patch lives in is watched (else it is never applied)
        patched = set().union(*(inst.modules() for inst, scope in a.instrumentors() if scope == "import"))
        assert patched <= set(a.watches), (a.name, patched - set(a.watches))


def test_the_sdist_carries_the_start_up_hook_and_the_watch_manifests(tmp_path):
    """A wheel built from the sdist (pip's route for a downloaded archive) gets loli_plugin.pth from
    setup.py, which copies it from the source root: so the sdist must hold it (MANIFEST.in)."""
    import subprocess
    import sys
    import tarfile

    subprocess.run(
        [sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_sdist({str(tmp_path)!r})"],
        cwd=REPO,
        check=True,
        capture_output=True,
    )
    (archive,) = tmp_path.glob("loli_plugin-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert {"loli_plugin.pth", "_loli_plugin_autoload.py", "setup.py"} <= names
    assert {f"adapters/{p.name}" for p in (REPO / "adapters").glob("*.watch")} <= names


RENAMED = {
    # old module -> (new module, names a third-party adapter may import from the old one)
    "loli_plugin.host": ("loli_plugin.adapter", "TrainerAdapter, adapters, adapter, on_watched_import, pushed, warn"),
    "loli_plugin.patches.base": (
        "loli_plugin.patches.instrument",
        "FunctionPatch, EnumMemberPatch, MappingEntryPatch, Instrumentor, Patch, bind_arguments, call_replacing, "
        "signature_problem, unsupported_message, LoliUnsupportedTrainerError, ENV_DISABLE",
    ),
}


@pytest.mark.parametrize("old", sorted(RENAMED))
def test_a_renamed_module_is_still_importable_by_its_old_name(old):
    """The old path is the new module itself (one object: a monkeypatch through either name reaches both),
    its names import from it, and it says once, as a DeprecationWarning, where they went."""
    import subprocess
    import sys

    new, names = RENAMED[old]
    code = (
        f"import importlib; old = importlib.import_module({old!r}); new = importlib.import_module({new!r}); "
        f"assert old is new, (old, new); from {old} import {names}; print('ok')"
    )
    proc = subprocess.run(
        [sys.executable, "-W", "always::DeprecationWarning", "-c", code], capture_output=True, text=True, cwd=REPO
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
    assert proc.stderr.count("DeprecationWarning") == 1 and f"{old} was renamed {new}" in proc.stderr, proc.stderr
