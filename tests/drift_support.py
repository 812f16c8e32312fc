"""Drifted copies of a real trainer tree, for the failure-policy tests: the copy differs from the
pinned tree only in the edited files (every other entry is a symlink to the original), and is made in
the test's temporary folder, never committed. The checks the trainers' drift tests share, and what
their drivers (tests/<trainer>/drift_driver.py, run as scripts in the trainer's venv) share: exact
values as hex, one optimizer step on fixed gradients."""

from __future__ import annotations

import sys
from pathlib import Path


def _support():
    """tests/trainer_support.py, imported when first used: the drift drivers import this module (as a
    top-level one, tests/ on sys.path) for hexes and step_once only."""
    try:
        from . import trainer_support
    except ImportError:
        import trainer_support
    return trainer_support


def drifted_copy(src: Path, dest: Path, edits: dict[str, list[tuple[str, str]]]) -> Path:
    """``dest``: ``src`` with each ``edits[relpath]`` applied as text replacements (each must match)."""

    def mirror(s: Path, d: Path, rels: list[tuple[str, ...]], prefix: tuple[str, ...]) -> None:
        d.mkdir(parents=True, exist_ok=True)
        heads = {r[0] for r in rels}
        for entry in s.iterdir():
            if entry.name not in heads and entry.name != "__pycache__":
                (d / entry.name).symlink_to(entry)
        for head in heads:
            rest = [r[1:] for r in rels if r[0] == head]
            if rest == [()]:
                rel = "/".join((*prefix, head))
                text = (s / head).read_text()
                for old, new in edits[rel]:
                    assert old in text, f"{rel}: the drift edit no longer matches the pinned tree: {old!r}"
                    text = text.replace(old, new)
                (d / head).write_text(text)
            else:
                mirror(s / head, d / head, rest, (*prefix, head))

    mirror(src, dest, [tuple(rel.split("/")) for rel in edits], ())
    return dest


def drifted_copies(src: Path, tmp_path_factory, rel: str, drifts: dict[str, list[tuple[str, str]]]) -> dict[str, Path]:
    """One drifted copy of ``src`` per entry of ``drifts`` (``{how: edits of the file rel}``)."""
    return {
        how: drifted_copy(src, tmp_path_factory.mktemp("drift") / src.name, {rel: edits})
        for how, edits in drifts.items()
    }


def run_driver(driver: Path, tree: Path, argv: list[str], disable: bool = False, extra_env: dict | None = None):
    """Run ``driver`` (a script printing one JSON line last) in a fresh interpreter of this venv, from
    ``tree``; returns (completed process, parsed JSON or None). (scripts/compat_checks.py, as the matrix.)"""
    return _support().compat_checks().run_driver(sys.executable, driver, tree, argv, disable=disable, env=extra_env)


def plugin_lines(stderr: str) -> list[str]:
    """What loli-plugin printed (lines that start with its name)."""
    return _support().plugin_lines(stderr)


def hexes(t) -> list[str]:
    """A tensor's values, exactly (float64 hex), for bit-for-bit comparisons of two runs."""
    return [float(v).hex() for v in t.detach().double().flatten().tolist()]


def step_once(optimizer, params) -> list[str]:
    """One step of ``optimizer`` on fixed gradients; the parameters after it (``hexes``)."""
    import torch

    for p in params:
        p.grad = torch.sin(p.detach() * 3) + 0.1
    optimizer.step()
    return hexes(torch.cat([p.flatten() for p in params]))


def check_compatible_drift(driver: Path, tree: Path, argv: list[str]) -> dict:
    """A Loli run on a tree drifted in a compatible way: it runs with LoliClustered, the plugin says it is
    active and nothing else; returns the driver's result."""
    proc, result = run_driver(driver, tree, argv)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = plugin_lines(proc.stderr)
    assert result["optimizer"] == "LoliClustered" and "loli-plugin active" in proc.stderr
    assert lines == [line for line in lines if line.startswith("loli-plugin active")], lines
    return result


def check_plain_run_is_stock(
    driver: Path, tree: Path, argv: list[str], unfit: str | None, pin: str, extra_env: dict | None = None
) -> None:
    """A run without Loli options on a drifted tree: it succeeds, its result equals the same tree's with
    the plugin disabled, and the plugin says one line (naming the unfit target, the supported commit
    and the off switch) when a target does not fit, nothing otherwise."""
    proc, with_plugin = run_driver(driver, tree, argv, extra_env=extra_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    disabled, stock = run_driver(driver, tree, argv, disable=True, extra_env=extra_env)
    assert disabled.returncode == 0, disabled.stderr[-3000:]
    assert with_plugin == stock and with_plugin["optimizer"] == "AdamW"
    lines = plugin_lines(proc.stderr)
    if unfit:
        assert len(lines) == 1, lines
        assert unfit in lines[0] and pin in lines[0] and "LOLI_PLUGIN_DISABLE" in lines[0]
    else:
        assert lines == [], lines
    assert plugin_lines(disabled.stderr) == []


def refusal(driver: Path, tree: Path, argv: list[str], unfit: str, pin: str, extra_env: dict | None = None, asked=()):
    """A Loli run on a drifted tree: it fails with LoliUnsupportedTrainerError naming the unfit target,
    the supported commit, LOLI_PLUGIN_DISABLE=1 and each of ``asked`` (the Loli options it was given);
    returns (process, the message from the error on)."""
    proc, result = run_driver(driver, tree, argv, extra_env=extra_env)
    assert proc.returncode != 0 and result is None
    assert "LoliUnsupportedTrainerError" in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr[proc.stderr.index("LoliUnsupportedTrainerError") :]
    assert unfit in message and pin in message and "LOLI_PLUGIN_DISABLE=1" in message
    assert all(option in message for option in asked), (asked, message)
    return proc, message


def snapshot(patch) -> object:
    """What a patch changes, as identities and contents: the attribute object itself (a function, a
    staticmethod...), an enum's member names, a dict's keys."""
    from loli_plugin.patches.instrument import EnumMemberPatch, MappingEntryPatch, _own_attribute, _owner

    owner, leaf = _owner(patch.module, patch.attr)
    value = _own_attribute(owner, leaf) if owner is not None else None
    if isinstance(patch, EnumMemberPatch):
        return (value, tuple(value.__members__), tuple(value._value2member_map_))
    if isinstance(patch, MappingEntryPatch):
        return (value, tuple(value))
    return value


def check_uninstrument_restores_originals(adapter) -> int:
    """Undo every patch of ``adapter``, record what each target is, apply them all, check each target
    changed, undo, check each is the very object it was; then re-apply the import-scope ones as the
    start-up hook had. Returns the number of patches checked."""
    import importlib

    adapter.uninstrument()
    for inst, _ in adapter.instrumentors():
        for module in inst.modules():
            importlib.import_module(module)
    patches = [(inst, p) for inst, _ in adapter.instrumentors() for p in inst.patches if p.problem() is None]
    before = {p.name: snapshot(p) for _, p in patches}
    for inst, _ in adapter.instrumentors():
        assert inst.instrument(adapter) == {}, inst.library
    for _, p in patches:  # (identity for functions: a wrapt proxy compares equal to what it wraps)
        now = snapshot(p)
        changed = now[1:] != before[p.name][1:] if isinstance(now, tuple) else now is not before[p.name]
        assert changed, f"{p.name} was not patched"
    adapter.uninstrument()
    for _, p in patches:
        after = snapshot(p)
        if isinstance(after, tuple):
            assert after[0] is before[p.name][0] and after[1:] == before[p.name][1:], p.name
        else:
            assert after is before[p.name], f"{p.name}: uninstrument() did not put the original object back"
    for inst, scope in adapter.instrumentors():
        if scope == "import":
            inst.instrument(adapter)
    return len(patches)
