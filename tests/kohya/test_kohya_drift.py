"""Version drift: every sd-scripts function the plugin patches, removed or with another signature,
gives a loud error naming the target and the supported commit (never a silent fallback)."""

import pytest

from loli_plugin.patches import kohya as kp

from ..trainer_support import assert_changed_target_refused

INSTRUMENTORS = [("ENTRY", kp.ENTRY), ("TRAINING", kp.TRAINING)] + [(m, i) for m, i in kp.FAMILIES.items()]
TARGETS = [(name, inst, t) for name, inst in INSTRUMENTORS for t in inst.targets]


@pytest.mark.parametrize("how", ["removed", "signature"])
@pytest.mark.parametrize("group, inst, target", TARGETS, ids=[t.name for _, _, t in TARGETS])
def test_a_changed_target_is_refused_loudly(kohya, monkeypatch, group, inst, target, how):
    assert_changed_target_refused(monkeypatch, inst, target, how, "48d368f", "v0.10.0 or newer")
