"""Shared by the real-trainer suites: is this the trainer's own venv with loli-plugin installed from a
wheel, and the skip-everything-below-this-folder collection hook."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def venv_problem(required: tuple[str, ...], trainer: str, how_to: str) -> str | None:
    """Why the trainer's tests cannot run in this venv, or None."""
    for name in required:
        if importlib.util.find_spec(name) is None:
            return f"{trainer}'s requirements are not installed in this venv (no {name}); {how_to}"
    try:
        import _loli_plugin_autoload
    except ImportError:
        return f"loli-plugin's startup hook is not installed in this venv; {how_to}"
    if not _loli_plugin_autoload.INSTALLED:
        return f"loli_plugin.pth did not run (LOLI_PLUGIN_DISABLE set, or an editable install); {how_to}"
    return None


def skip_items_below(folder: Path, reason: str | None, items) -> None:
    """Mark every collected test under ``folder`` as skipped with ``reason`` (if there is one)."""
    if reason is None:
        return
    for item in items:
        if folder in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.skip(reason=reason))
