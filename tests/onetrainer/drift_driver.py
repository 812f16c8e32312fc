"""Run from a OneTrainer tree (``python drift_driver.py TREE CONFIG_JSON``, mgds on PYTHONPATH): what a
training run does before and at its first step, through OneTrainer's own functions: load the config
from a dict (as from a JSON file), create the trainer, build the optimizer and step it once, draw
timesteps through the model-setup mixin, compute the loss. Prints "stage ..." lines as it goes and,
last, one JSON line with exact (hex) values, so two runs can be compared bit for bit. Used by
test_onetrainer_drift.py on drifted copies of the pinned tree."""

import inspect
import json
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

tree, config = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, tree)

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, for drift_support

import torch  # noqa: E402
from drift_support import hexes, step_once  # noqa: E402
from modules.modelSetup.mixin.ModelSetupDiffusionLossMixin import ModelSetupDiffusionLossMixin  # noqa: E402
from modules.modelSetup.mixin.ModelSetupNoiseMixin import ModelSetupNoiseMixin  # noqa: E402
from modules.util import create  # noqa: E402
from modules.util.callbacks.TrainCallbacks import TrainCallbacks  # noqa: E402
from modules.util.commands.TrainCommands import TrainCommands  # noqa: E402
from modules.util.config.TrainConfig import TrainConfig  # noqa: E402
from modules.util.NamedParameterGroup import NamedParameterGroup, NamedParameterGroupCollection  # noqa: E402


class Setup(ModelSetupNoiseMixin, ModelSetupDiffusionLossMixin):  # what every model setup mixes in
    def __init__(self):
        ModelSetupNoiseMixin.__init__(self)
        ModelSetupDiffusionLossMixin.__init__(self)


out = {}
version = TrainConfig.default_values().to_settings_dict(secrets=False)["__version"]  # a current config: no migration
cfg = TrainConfig.default_values().from_dict(
    {"__version": version, **config, "workspace_dir": tempfile.mkdtemp(), "tensorboard": False}
)
out["optimizer_in_config"] = str(cfg.optimizer.optimizer)
print("stage config", flush=True)
create.create_trainer(cfg, TrainCallbacks(), TrainCommands())
print("stage trainer", flush=True)

g = torch.Generator().manual_seed(0)
params = [torch.nn.Parameter(torch.randn(8, 4, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]
collection = NamedParameterGroupCollection()
collection.add_group(NamedParameterGroup("unet", params, 1e-2))
# the caller's last argument as the version has it: the layer keys, or the model (OneTrainer pull requests
# #1344 and #1557, whose optimizer_util passes model=model); a stand-in, which this driver's optimizers ignore
last = list(inspect.signature(create.create_optimizer).parameters)[3:]
extra = {"model": SimpleNamespace(name="the caller's model")} if last == ["model"] else {}
optimizer = create.create_optimizer(collection, None, cfg, **extra)
out["optimizer"] = type(optimizer).__name__
out["params_after_step"] = step_once(optimizer, params)
print("stage optimizer", flush=True)

setup = Setup()
with torch.enable_grad():
    out["timesteps"] = setup._get_timestep_discrete(1000, False, torch.Generator().manual_seed(1), 8, cfg).tolist()
    g = torch.Generator().manual_seed(2)
    pred, target = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    data = {"predicted": pred, "target": target, "loss_type": "target", "timestep": torch.tensor([10, 500])}
    out["loss"] = hexes(setup._diffusion_losses({"loss_weight": torch.ones(2)}, data, cfg, torch.device("cpu")))
print("stage loss", flush=True)
print(json.dumps(out))
