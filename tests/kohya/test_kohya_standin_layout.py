"""sd-scripts' layouts, written here (stand-ins): a ``library`` with sd-scripts' files but no
train_util.py is a layout the plugin does not know, and a LoliClustered built there is refused before any
step with the way to proceed; a loop of the user's own beside sd-scripts' helpers, its optimizer factory
not imported, keeps working. Marked ``standin``: they run without sd-scripts."""

from __future__ import annotations

import pytest

from ..trainer_support import DOTTED, STANDIN_TRAINER, STARTUP, run_python, write_tree

pytestmark = pytest.mark.standin
HELPERS = {
    "library/__init__.py": "",
    "library/config_util.py": "",
    "library/custom_train_functions.py": "",
    "library/model_util.py": "",
}


def test_sd_scripts_without_train_util_is_a_layout_refused_before_any_step(tmp_path):
    tree = write_tree(tmp_path, {**HELPERS, "library/trainer2.py": STANDIN_TRAINER, ".exported-commit": "1234567" * 6})
    out = run_python(STARTUP + "from library.trainer2 import main; main()", tree, args=DOTTED)
    assert out.returncode != 0 and "step" not in out.stdout
    error = out.stderr[out.stderr.index("LoliUnsupportedTrainerError") :]
    assert "kohya-ss/sd-scripts commit 1234567" in error and "no library/train_util.py" in error
    assert "Update kohya-ss/sd-scripts to v0.10.0 or later" in error


def test_a_users_loop_beside_sd_scripts_helpers_keeps_working(tmp_path):
    """sd-scripts' layout (train_util.py there) with its optimizer factory not imported: the optimizer is the
    user's own, beside sd-scripts' helpers (a model loader, say)."""
    tree = write_tree(
        tmp_path, {**HELPERS, "library/train_util.py": "def get_optimizer(args, trainable_params):\n    pass\n"}
    )
    code = STARTUP + (
        "import torch, library.config_util\n"
        "from loli_plugin import LoliClustered\n"
        "w = torch.nn.Parameter(torch.ones(2))\n"
        "opt = LoliClustered([w], clusters=2, lr=0.1)\n"
        "(w ** 2).sum().backward(); opt.step()\n"
        "print('stepped', w.detach().tolist())\n"
    )
    out = run_python(code, tree)
    assert out.returncode == 0, out.stderr
    assert "stepped" in out.stdout
