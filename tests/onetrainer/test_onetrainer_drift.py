"""Version drift: every OneTrainer function the plugin patches, removed or with another signature,
gives a loud error naming the target and the supported commit (never a silent fallback)."""

import pytest

from loli_plugin.patches import onetrainer as op
from loli_plugin.patches import onetrainer_ui as ui

from ..trainer_support import assert_changed_target_refused

INSTRUMENTORS = [op.TRAINING, ui.OPTIMIZER_WINDOW, ui.TRAINING_TAB]
TARGETS = [(inst, t) for inst in INSTRUMENTORS for t in inst.targets]


@pytest.mark.parametrize("how", ["removed", "signature"])
@pytest.mark.parametrize("inst, target", TARGETS, ids=[t.name for _, t in TARGETS])
def test_a_changed_target_is_refused_loudly(ot, monkeypatch, inst, target, how):
    assert_changed_target_refused(monkeypatch, inst, target, how, "23df383")


def test_an_unknown_optimizer_in_a_config_is_never_silently_adamw(ot):
    """With the plugin installed LOLI_CLUSTERED is a real member; OneTrainer's from_dict fallback to
    ADAMW ("Could not set optimizer") can no longer happen to a LOLI_CLUSTERED config."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        cfg = ot.TrainConfig.default_values().from_dict({"__version": 11, "optimizer": {"optimizer": "LOLI_CLUSTERED"}})
    assert str(cfg.optimizer.optimizer) == "LOLI_CLUSTERED" and "Could not set" not in buf.getvalue()
