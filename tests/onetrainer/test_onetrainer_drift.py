"""The failure policy against drifted copies of the real, pinned OneTrainer (changed in the test's temp
folder, never committed): an added optional parameter is compatible; a renamed parameter or a removed
function is logged once at import, a plain run still builds its optimizer, draws its timesteps and
computes its loss exactly as stock (bit for bit, against the same tree with the plugin disabled), and a
config asking for LOLI_CLUSTERED or a cosine strength is refused before any work with the one message
naming the target, the supported commit and LOLI_PLUGIN_DISABLE (never silently trained as ADAMW)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ..drift_support import check_plain_run_is_stock, drifted_copy, refusal, run_driver
from .compat import MODES
from .conftest import MGDS_DIR, OT_DIR

DRIVER = Path(__file__).with_name("drift_driver.py")
PIN = "23df383"  # the supported commit (scripts/trainers.toml), named in every message
PLAIN, LOLI = MODES["plain"], MODES["LOLI_CLUSTERED"]
COSINE = {**PLAIN, "cos_strength": 0.2}

DRIFTS = {
    "added optional parameter": {
        "modules/util/create.py": [
            (
                "        layer_key_fn: dict[int, str] | None = None,\n) -> torch.optim.Optimizer | None:",
                "        layer_key_fn: dict[int, str] | None = None,\n"
                "        extra_option: bool = False,\n"
                ") -> torch.optim.Optimizer | None:",
            )
        ]
    },
    # OneTrainer pull requests #1344 and #1557: create_optimizer's last parameter becomes the model (here
    # printed, to see that the inner call gets it as the caller passed it)
    "last parameter renamed to model": {
        "modules/util/create.py": [
            (
                "        layer_key_fn: dict[int, str] | None = None,\n) -> torch.optim.Optimizer | None:\n",
                "        model=None,\n) -> torch.optim.Optimizer | None:\n"
                "    layer_key_fn = None\n"
                '    print("create_optimizer: model", getattr(model, "name", model), flush=True)\n',
            )
        ]
    },
    "renamed parameter": {
        "modules/util/create.py": [
            (
                "def create_trainer(\n        config: TrainConfig,",
                "def create_trainer(\n        train_config: TrainConfig,",
            ),
            ("    if config.cloud.enabled:", "    config = train_config\n    if config.cloud.enabled:"),
        ]
    },
    "removed function": {
        "modules/modelSetup/BaseModelSetup.py": [
            ("    def report_to_tensorboard(\n", "    def report_to_tensorboard_v2(\n")
        ]
    },
}
UNFIT = {
    "renamed parameter": "modules.util.create.create_trainer",
    "removed function": "modules.modelSetup.BaseModelSetup.BaseModelSetup.report_to_tensorboard",
}
ENV = {"PYTHONPATH": str(MGDS_DIR / "src")}


@pytest.fixture(scope="module")
def trees(ot, tmp_path_factory):
    return {
        how: drifted_copy(OT_DIR, tmp_path_factory.mktemp("drift") / "OneTrainer", edits)
        for how, edits in DRIFTS.items()
    }


@pytest.mark.parametrize("how", list(DRIFTS))
def test_a_plain_run_is_exactly_stock(trees, how):
    check_plain_run_is_stock(DRIVER, trees[how], PLAIN, UNFIT.get(how), PIN, extra_env=ENV)


# (TensorBoard's report is not needed by a cosine-only run: that run works, tested below)
REFUSED = [
    ("renamed parameter", LOLI, "LOLI_CLUSTERED"),
    ("renamed parameter", COSINE, "Cosine Strength"),
    ("removed function", LOLI, "LOLI_CLUSTERED"),
]


@pytest.mark.parametrize(
    "how, config, asked", REFUSED, ids=["renamed-optimizer", "renamed-cosine", "removed-optimizer"]
)
def test_a_loli_run_is_refused_before_any_work(trees, how, config, asked):
    proc, message = refusal(DRIVER, trees[how], config, UNFIT[how], PIN, extra_env=ENV)
    assert asked in message
    # refused in create_trainer (no trainer, model or step); when create_trainer itself drifted, in
    # create_optimizer, still before the first step
    assert ("stage optimizer" if UNFIT[how].endswith("create_trainer") else "stage trainer") not in proc.stdout


def test_a_run_that_does_not_need_the_unfit_patch_still_runs(trees):
    proc, result = run_driver(DRIVER, trees["removed function"], COSINE, extra_env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["optimizer"] == "AdamW"


def test_a_compatible_drift_keeps_the_plugin_working(trees):
    proc, result = run_driver(DRIVER, trees["added optional parameter"], LOLI, extra_env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["optimizer"] == "LoliClustered" and result["optimizer_in_config"] == "LOLI_CLUSTERED"
    assert max(result["timesteps"]) - min(result["timesteps"]) < 250  # one cluster of four


def test_an_unservable_config_is_never_silently_adamw(ot, monkeypatch):
    """Had the LOLI_CLUSTERED member not fitted, OneTrainer's from_dict would print "Could not set
    optimizer" and keep ADAMW. The from_dict guard notes what the raw config asked for, so the run is
    refused even when the loaded optimizer reads ADAMW."""
    from loli_plugin.adapters.onetrainer import ADAPTER
    from loli_plugin.errors import LoliUnsupportedTrainerError

    version = ot.TrainConfig.default_values().to_settings_dict(secrets=False)["__version"]
    cfg = ot.TrainConfig.default_values().from_dict(
        {"__version": version, "optimizer": {"optimizer": "LOLI_CLUSTERED"}, "cos_strength": 0.3}
    )
    assert cfg.__dict__["_loli_requested"] == {"optimizer", "loss"}
    cfg.optimizer.optimizer, cfg.cos_strength = ot.Optimizer.ADAMW, 0.0  # what OneTrainer's fallback would leave
    enum_patch = "modules.util.enum.Optimizer.Optimizer"
    monkeypatch.setitem(ADAPTER.problems, enum_patch, (ADAPTER._patch(enum_patch), "simulated: the enum did not fit"))
    with pytest.raises(LoliUnsupportedTrainerError, match="simulated: the enum did not fit"):
        ADAPTER.check_request(cfg)
    plain = ot.TrainConfig.default_values().from_dict({"__version": version, "optimizer": {"optimizer": "ADAMW"}})
    ADAPTER.check_request(plain)  # a plain config is never refused


def test_a_renamed_parameter_the_plugin_only_passes_on_keeps_it_working(trees):
    """OneTrainer pull requests #1344 and #1557 rename create_optimizer's last parameter from layer_key_fn
    to model. The plugin reads only the first three (its compatibility condition), so LOLI_CLUSTERED keeps
    working, and OneTrainer's own branch, which builds the inner optimizer, gets the caller's model."""
    proc, result = run_driver(DRIVER, trees["last parameter renamed to model"], LOLI, extra_env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result["optimizer"] == "LoliClustered" and result["optimizer_in_config"] == "LOLI_CLUSTERED"
    assert "create_optimizer: model the caller's model" in proc.stdout  # the inner call, with the model
    assert max(result["timesteps"]) - min(result["timesteps"]) < 250  # one cluster of four
    assert [line for line in proc.stderr.splitlines() if line.startswith("loli-plugin:")] == [
        line for line in proc.stderr.splitlines() if line.startswith("loli-plugin: LOLI_CLUSTERED(")
    ]  # no drift line
