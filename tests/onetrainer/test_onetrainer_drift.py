"""Version drift: every OneTrainer function the plugin patches, removed or with another signature,
gives a loud error naming the target and the supported commit (never a silent fallback)."""

import importlib

import pytest

from loli_plugin.patches import onetrainer as op
from loli_plugin.patches import onetrainer_ui as ui
from loli_plugin.patches.base import LoliUnsupportedTrainerError

INSTRUMENTORS = [op.TRAINING, ui.OPTIMIZER_WINDOW, ui.TRAINING_TAB]
TARGETS = [(inst, t) for inst in INSTRUMENTORS for t in inst.targets]


def changed_signature(*args, **kwargs):
    raise AssertionError("must never be called")


@pytest.mark.parametrize("how", ["removed", "signature"])
@pytest.mark.parametrize("inst, target", TARGETS, ids=[t.name for _, t in TARGETS])
def test_a_changed_target_is_refused_loudly(ot, monkeypatch, inst, target, how):
    owner, leaf = target.owner(importlib.import_module(target.module))
    if how == "removed":
        if isinstance(owner, type):
            monkeypatch.delattr(owner, leaf)
        else:
            monkeypatch.delattr(owner, leaf)
    else:
        monkeypatch.setattr(owner, leaf, changed_signature)
    with pytest.raises(LoliUnsupportedTrainerError) as err:
        inst.check()
    message = str(err.value)
    assert target.name in message and "23df383" in message
    assert ("not found" in message) if how == "removed" else ("found (args, kwargs)" in message)


def test_an_unknown_optimizer_in_a_config_is_never_silently_adamw(ot):
    """With the plugin installed LOLI_CLUSTERED is a real member; OneTrainer's from_dict fallback to
    ADAMW ("Could not set optimizer") can no longer happen to a LOLI_CLUSTERED config."""
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        cfg = ot.TrainConfig.default_values().from_dict({"__version": 11, "optimizer": {"optimizer": "LOLI_CLUSTERED"}})
    assert str(cfg.optimizer.optimizer) == "LOLI_CLUSTERED" and "Could not set" not in buf.getvalue()
