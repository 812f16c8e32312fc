"""Fixtures for the tests that run the real Nerogar/OneTrainer.

OneTrainer and its data loader mgds are not on PyPI and their code is never committed here. The
tests find exports of them at ``$LOLI_ONETRAINER_DIR`` / ``$LOLI_MGDS_DIR`` or under
``$LOLI_TRAINERS_DIR``, by default ``~/.cache/loli-plugin/trainers/OneTrainer`` and ``.../mgds``
(``python scripts/get-trainers OneTrainer mgds`` writes them), and run in a venv with OneTrainer's
pins and loli-plugin installed from a wheel (``bash .ci/run`` builds it with
``.ci/trainer-env.sh``). Without them every test here is skipped with the reason and the commands.
OneTrainer loads modules and resources by paths relative to its root, so the tests run from there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from ..trainer_support import fresh_run_fixture, how_to_get, missing_export, skip_items_below, source_dir, venv_problem

OT_DIR, MGDS_DIR = source_dir("OneTrainer"), source_dir("mgds")
HOW_TO = how_to_get("onetrainer")


def _skip_reason() -> str | None:
    return missing_export("onetrainer", HOW_TO) or venv_problem(
        ("transformers", "diffusers", "customtkinter", "PySide6"), "OneTrainer", HOW_TO
    )


SKIP = _skip_reason()


def pytest_collection_modifyitems(config, items):
    skip_items_below(Path(__file__).parent, SKIP, items)


@pytest.fixture(scope="session")
def ot():
    """OneTrainer's modules, imported from its root (as its scripts do)."""
    for path in (str(MGDS_DIR / "src"), str(OT_DIR)):
        if path not in sys.path:
            sys.path.insert(0, path)
    os.chdir(OT_DIR)
    from modules.util import create, optimizer_util
    from modules.util.config import TrainConfig as train_config_module
    from modules.util.enum.Optimizer import Optimizer

    import loli_plugin.patches.onetrainer as patches

    assert "LOLI_CLUSTERED" in Optimizer.__members__, "the post-import hook did not register LOLI_CLUSTERED"
    assert (
        patches.REGISTRATION.instrumented and patches.ENTRY.instrumented and not patches.TRAINING.instrumented
    )  # run-scope

    class OT:
        pass

    o = OT()
    o.dir, o.mgds_dir, o.create, o.optimizer_util, o.Optimizer, o.patches = (
        OT_DIR,
        MGDS_DIR,
        create,
        optimizer_util,
        Optimizer,
        patches,
    )
    o.TrainConfig = train_config_module.TrainConfig
    return o


_fresh_run = fresh_run_fixture("loli_plugin.adapters.onetrainer")
