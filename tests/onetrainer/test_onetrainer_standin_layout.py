"""OneTrainer's layouts, written here (stand-ins): a ``modules`` package with OneTrainer's files but no
util/create.py is a layout the plugin does not know; a LoliClustered built there is refused before any
step, naming OneTrainer, the supported minimum and what to do. Marked ``standin``: they run without
OneTrainer."""

from __future__ import annotations

import pytest

from ..trainer_support import STARTUP, run_python, write_tree

pytestmark = pytest.mark.standin


def test_onetrainer_without_create_py_is_a_layout_refused_before_any_step(tmp_path):
    tree = write_tree(
        tmp_path,
        {
            "modules/util/enum/Optimizer.py": "",
            "modules/util/config/TrainConfig.py": "",
            "modules/trainer/GenericTrainer.py": "",
            "modules/util/factory.py": "",
        },
    )
    code = STARTUP + (
        "import torch, modules.util.factory\n"
        "from loli_plugin import LoliClustered\n"
        "LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)\n"
        "print('built')\n"
    )
    out = run_python(code, tree)
    assert out.returncode != 0 and "built" not in out.stdout and "LoliUnsupportedTrainerError" in out.stderr
    assert "Nerogar/OneTrainer" in out.stderr and "no modules/util/create.py" in out.stderr
    assert "Update Nerogar/OneTrainer to commit 23df383 (2026-08-19) or later" in out.stderr
