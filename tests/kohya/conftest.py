"""Fixtures for the tests that run the real kohya-ss/sd-scripts.

sd-scripts is not on PyPI and its code is never committed here. The tests find an export of it at
``$LOLI_KOHYA_DIR`` or ``$LOLI_TRAINERS_DIR/sd-scripts``, by default
``~/.cache/loli-plugin/trainers/sd-scripts`` (``python scripts/get-trainers sd-scripts`` writes it),
and need to run in a venv that has sd-scripts' own requirements and loli-plugin installed from a
wheel (so the ``.pth`` hook is the real one). ``bash .ci/run`` builds it (``.ci/trainer-env.sh``)
and runs them; without them every test here is skipped with the reason and the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ..trainer_support import fresh_run_fixture, how_to_get, missing_export, skip_items_below, source_dir, venv_problem

KOHYA_DIR = source_dir("sd-scripts")
HOW_TO = how_to_get("kohya")


def _skip_reason() -> str | None:
    # sd-scripts' venv: its requirements install sd-scripts itself (`-e .`, the `library` package) and
    # torchvision; the core test venv has neither, whatever else it shares with it
    return missing_export("kohya", HOW_TO) or venv_problem(
        ("library", "torchvision", "transformers", "diffusers", "accelerate"), "sd-scripts", HOW_TO
    )


SKIP = _skip_reason()


def pytest_collection_modifyitems(config, items):
    skip_items_below(Path(__file__).parent, SKIP, items)


@pytest.fixture(scope="session")
def kohya():
    """The imported sd-scripts modules (train_util, train_network, ...), with its folder on sys.path."""
    if str(KOHYA_DIR) not in sys.path:
        sys.path.insert(0, str(KOHYA_DIR))
    import _loli_plugin_autoload

    assert _loli_plugin_autoload.INSTALLED, "loli_plugin.pth did not run: install loli-plugin from a wheel (not -e)"
    import train_network
    from library import train_util

    import loli_plugin.patches.kohya as patches

    assert patches.ENTRY.instrumented, "the post-import hook did not patch library.train_util"

    class K:
        pass

    k = K()
    k.dir, k.train_util, k.train_network, k.patches = KOHYA_DIR, train_util, train_network, patches
    return k


_fresh_run = fresh_run_fixture("loli_plugin.adapters.kohya")


@pytest.fixture
def parse(kohya):
    """Parse a command line with the real train_network.setup_parser()."""

    def parse(*argv, parser=None):
        p = parser or kohya.train_network.setup_parser()
        return p.parse_args(["--pretrained_model_name_or_path", "unused", "--learning_rate", "1e-3", *argv])

    return parse
