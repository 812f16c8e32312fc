"""What every trainer adapter gets from ``TrainerAdapter``, on a minimal adapter made here: the patch
features of a run from its requests, the refusal before the first step, and what happens to a
``LoliClustered`` built inside the trainer (started run, user's own optimizer, or refused)."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from loli_plugin import LoliClustered
from loli_plugin.adapter import FEATURES, TrainerAdapter
from loli_plugin.errors import ENV_DISABLE, LoliUnsupportedTrainerError
from loli_plugin.hookspecs import hookimpl
from loli_plugin.patches.instrument import FunctionPatch, Instrumentor
from loli_plugin.plugins import get_plugin_manager
from loli_plugin.run import LoliRun


def build_optimizer(args):
    return LoliClustered([torch.nn.Parameter(torch.zeros(2))], clusters=2)


def entry(context, wrapped, instance, args, kwargs):
    with context.building_optimizer(args[0]):
        return wrapped(*args, **kwargs)


class Minimal(TrainerAdapter):
    name = "minimal"
    library = "owner/minimal-trainer"
    supported = "every version"
    entry_patch = FunctionPatch(
        "minimal_trainer", "build_optimizer", "builds the optimizer", "activation", params=["args"], wrapper=entry
    )

    def __init__(self):
        super().__init__()
        self.patch = Instrumentor(self.library, self.supported, [self.entry_patch])
        self.started = []

    def instrumentors(self):
        return [(self.patch, "import")]

    def requests(self, args):
        return set(args)

    def inside_trainer(self):
        return "minimal_trainer" in sys.modules

    def activate(self, args, optimizer=None):
        self.run = LoliRun.for_optimizer(optimizer, config=args)
        self.started.append(args)
        return self.run


@pytest.fixture
def minimal(monkeypatch):
    module = types.ModuleType("minimal_trainer")
    module.build_optimizer = build_optimizer
    monkeypatch.setitem(sys.modules, "minimal_trainer", module)
    adapter = Minimal()

    class Plugin:
        @hookimpl
        def loli_trainer_adapters(self):
            return [adapter]

    get_plugin_manager().register(Plugin(), name="minimal-adapter")
    yield adapter, module
    get_plugin_manager().unregister(name="minimal-adapter")
    adapter.uninstrument()


def test_features_come_from_the_requests():
    adapter = Minimal()
    assert adapter.features_for(()) == set()
    assert adapter.features_for(("loss",)) == FEATURES["loss"]
    assert adapter.features_for(("optimizer", "probe")) == FEATURES["optimizer"] | FEATURES["probe"]
    adapter.run = LoliRun(stratify=True, loss_weights={"mse": 1.0})
    assert adapter.run_features() == FEATURES["optimizer"] | FEATURES["loss"]


def test_a_run_is_refused_before_its_first_step_when_a_patch_it_needs_does_not_fit():
    adapter = Minimal()
    adapter.record({"minimal_trainer.build_optimizer": "minimal_trainer.build_optimizer: no parameter 'args'"})
    adapter.check_request(())  # a plain run is never refused
    with pytest.raises(LoliUnsupportedTrainerError, match="no parameter 'args'.*every version") as refused:
        adapter.check_request(("optimizer",))
    assert "cannot run optimizer with this owner/minimal-trainer" in str(refused.value)
    assert ENV_DISABLE in str(refused.value)


def test_a_loli_optimizer_built_inside_the_trainers_entry_starts_its_run(minimal):
    adapter, module = minimal
    adapter.patch.instrument(adapter)
    optimizer = module.build_optimizer(("optimizer",))
    assert adapter.started == [("optimizer",)] and adapter.run.optimizer is optimizer


def test_built_elsewhere_while_the_entry_is_patched_it_is_the_users_own(minimal):
    adapter, _ = minimal
    adapter.patch.instrument(adapter)
    build_optimizer(("optimizer",))  # not through the trainer's (patched) attribute
    assert adapter.started == [] and adapter.run is None


def test_built_inside_the_trainer_without_its_integration_it_is_refused(minimal):
    adapter, module = minimal
    with pytest.raises(LoliUnsupportedTrainerError, match="inside minimal-trainer, but loli-plugin's minimal-trainer"):
        module.build_optimizer(("optimizer",))
    assert adapter.started == []
