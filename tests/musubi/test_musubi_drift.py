"""The failure policy against drifted copies of the real, pinned musubi-tuner (changed in the test's temp
folder, never committed): an added optional parameter is compatible; a renamed parameter or a removed
method is logged once at import, a plain run still builds its optimizer, draws its timesteps and
computes its loss exactly as stock (bit for bit, against the same tree with the plugin disabled), and a
run with Loli options is refused in NetworkTrainer.train, before any work, with the one message that
names the target, the supported version and LOLI_PLUGIN_DISABLE."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..drift_support import check_compatible_drift, check_plain_run_is_stock, drifted_copies, refusal
from .compat import MODES
from .conftest import MUSUBI_DIR

DRIVER = Path(__file__).with_name("drift_driver.py")
PIN = "30c658c"  # the supported commit (scripts/trainers.toml), named in every message
TRAINER_BASE = "src/musubi_tuner/training/trainer_base.py"
PLAIN, LOLI = MODES["plain"], MODES["LoliClustered"]

GET_OPTIMIZER = (
    "    def get_optimizer(self, args, trainable_params: list[torch.nn.Parameter]) "
    "-> tuple[str, str, torch.optim.Optimizer]:"
)
DRIFTS = {
    "added optional parameter": [
        (
            GET_OPTIMIZER,
            GET_OPTIMIZER.replace(
                "trainable_params: list[torch.nn.Parameter]", "trainable_params: list[torch.nn.Parameter], model=None"
            ),
        )
    ],
    "renamed parameter": [
        ("        noise_scheduler: FlowMatchDiscreteScheduler,\n", "        scheduler: FlowMatchDiscreteScheduler,\n"),
        ("timesteps = noise_scheduler.timesteps[indices]", "timesteps = scheduler.timesteps[indices]"),
        (
            "sigmas = get_sigmas(noise_scheduler, timesteps, device, n_dim=latents.ndim, dtype=dtype)",
            "sigmas = get_sigmas(scheduler, timesteps, device, n_dim=latents.ndim, dtype=dtype)",
        ),
    ],
    "removed method": [(GET_OPTIMIZER, GET_OPTIMIZER.replace("def get_optimizer(", "def get_optimizer_v2("))],
}
UNFIT = {
    "renamed parameter": "musubi_tuner.training.trainer_base.NetworkTrainer.get_noisy_model_input_and_timesteps",
    "removed method": "musubi_tuner.training.trainer_base.NetworkTrainer.get_optimizer",
}


@pytest.fixture(scope="module")
def trees(musubi, tmp_path_factory):
    return drifted_copies(MUSUBI_DIR, tmp_path_factory, TRAINER_BASE, DRIFTS)


@pytest.mark.parametrize("how", list(DRIFTS))
def test_a_plain_run_is_exactly_stock(trees, how):
    check_plain_run_is_stock(DRIVER, trees[how], PLAIN, UNFIT.get(how), PIN)


@pytest.mark.parametrize("how", list(UNFIT))
def test_a_loli_run_is_refused_before_any_work(trees, how):
    proc, _ = refusal(
        DRIVER, trees[how], LOLI, UNFIT[how], PIN, asked=("--optimizer_type LoliClustered", "--loss_type loli")
    )
    assert "stage train" not in proc.stdout  # stopped in NetworkTrainer.train, before a dataset or a model


def test_a_compatible_drift_keeps_the_plugin_working(trees):
    result = check_compatible_drift(DRIVER, trees["added optional parameter"], LOLI)
    # the draw came from one cluster: a quarter of musubi's 1..1000 for clusters=4
    ts = [float.fromhex(v) for v in result["timesteps"]]
    assert max(ts) - min(ts) < 251, ts
