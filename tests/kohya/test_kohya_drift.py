"""Version drift: every sd-scripts function the plugin patches, removed or with another signature,
gives a loud error naming the target and the supported commit (never a silent fallback)."""

import importlib

import pytest

from loli_plugin.patches import kohya as kp
from loli_plugin.patches.base import LoliUnsupportedTrainerError

INSTRUMENTORS = [("ENTRY", kp.ENTRY), ("TRAINING", kp.TRAINING)] + [(m, i) for m, i in kp.FAMILIES.items()]
TARGETS = [(name, inst, t) for name, inst in INSTRUMENTORS for t in inst.targets]


def changed_signature(*args, **kwargs):
    raise AssertionError("must never be called")


@pytest.mark.parametrize("how", ["removed", "signature"])
@pytest.mark.parametrize("group, inst, target", TARGETS, ids=[t.name for _, _, t in TARGETS])
def test_a_changed_target_is_refused_loudly(kohya, monkeypatch, group, inst, target, how):
    owner, leaf = target.owner(importlib.import_module(target.module))
    if how == "removed":
        monkeypatch.delattr(owner, leaf)
    else:
        monkeypatch.setattr(owner, leaf, changed_signature)
    with pytest.raises(LoliUnsupportedTrainerError) as err:
        inst.check()
    message = str(err.value)
    assert target.name in message and "48d368f" in message and "v0.10.0 or newer" in message
    assert ("not found" in message) if how == "removed" else ("found (args, kwargs)" in message)
