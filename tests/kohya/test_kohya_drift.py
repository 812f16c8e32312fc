"""The failure policy against drifted copies of the real, pinned sd-scripts (changed in the test's temp
folder, never committed): an added optional parameter is compatible; a renamed parameter or a removed
function is logged once at import, a plain run still builds its optimizer, draws its timesteps and
computes its loss exactly as stock (bit for bit, against the same tree with the plugin disabled), and a
run with Loli options is refused before any work with the one message that names the target, the
supported version and LOLI_PLUGIN_DISABLE."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..drift_support import check_compatible_drift, check_plain_run_is_stock, drifted_copies, refusal
from .compat import MODES
from .conftest import KOHYA_DIR

DRIVER = Path(__file__).with_name("drift_driver.py")
PIN = "48d368f"  # the supported commit (scripts/trainers.toml), named in every message
TRAIN_UTIL = "library/train_util.py"
PLAIN, LOLI = MODES["plain"], MODES["LoliClustered"]

GET_TIMESTEPS = (
    "def get_timesteps(min_timestep: int, max_timestep: int, b_size: int, device: torch.device) -> torch.Tensor:"
)
DRIFTS = {
    "added optional parameter": [
        (
            "def get_optimizer(args, trainable_params) -> tuple[str, str, object]:",
            "def get_optimizer(args, trainable_params, model=None) -> tuple[str, str, object]:",
        )
    ],
    "renamed parameter": [
        (GET_TIMESTEPS, GET_TIMESTEPS.replace("b_size", "batch_size")),
        (
            'torch.randint(min_timestep, max_timestep, (b_size,), device="cpu")',
            'torch.randint(min_timestep, max_timestep, (batch_size,), device="cpu")',
        ),
        ('torch.full((b_size,), max_timestep, device="cpu")', 'torch.full((batch_size,), max_timestep, device="cpu")'),
    ],
    "removed function": [
        (
            "def get_optimizer(args, trainable_params) -> tuple[str, str, object]:",
            "def get_optimizer_v2(args, trainable_params) -> tuple[str, str, object]:",
        )
    ],
}
UNFIT = {
    "renamed parameter": "library.train_util.get_timesteps",
    "removed function": "library.train_util.get_optimizer",
}


@pytest.fixture(scope="module")
def trees(kohya, tmp_path_factory):
    return drifted_copies(KOHYA_DIR, tmp_path_factory, TRAIN_UTIL, DRIFTS)


@pytest.mark.parametrize("how", list(DRIFTS))
def test_a_plain_run_is_exactly_stock(trees, how):
    check_plain_run_is_stock(DRIVER, trees[how], PLAIN, UNFIT.get(how), PIN)


@pytest.mark.parametrize("how", list(UNFIT))
def test_a_loli_run_is_refused_before_any_work(trees, how):
    proc, _ = refusal(
        DRIVER, trees[how], LOLI, UNFIT[how], PIN, asked=("--optimizer_type LoliClustered", "--loss_type loli")
    )
    assert "stage accelerator" not in proc.stdout  # stopped in prepare_accelerator, before a model or a step


def test_a_compatible_drift_keeps_the_plugin_working(trees):
    result = check_compatible_drift(DRIVER, trees["added optional parameter"], LOLI)
    # the SD draw came from one cluster: a quarter of [0, 1000) for clusters=4
    sd = result["sd_timesteps"]
    assert max(sd) - min(sd) < 250, sd
