"""Run from a musubi-tuner tree (``python drift_driver.py TREE ARGV_JSON``): what a LoRA script does
before and at its first step, through musubi-tuner's own code: parse with Qwen-Image's parser, enter
``NetworkTrainer.train`` (which stops at musubi's own "dataset_config is required"), build the optimizer
and step it once, draw timesteps, compute the loss. Prints "stage ..." lines as it goes and, last, one
JSON line with exact (hex) values, so two runs can be compared bit for bit. Used by
test_musubi_drift.py on drifted copies of the pinned tree and by scripts/compat-matrix and
test_musubi_old_layout.py on other versions (its ``src`` goes first on sys.path, ahead of the
musubi-tuner installed in the venv); a version without compute_loss (before v0.3.0) skips the loss."""

import json
import sys
from pathlib import Path

tree, argv = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, f"{tree}/src")
# the command line a LoRA script sees (what loli-plugin reads at musubi_tuner's import on a layout it cannot serve)
sys.argv = [f"{tree}/src/musubi_tuner/qwen_image_train_network.py", "--dit", "unused", "--learning_rate", "1e-3", *argv]

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, for drift_support

import torch  # noqa: E402
from drift_support import hexes, step_once  # noqa: E402
from musubi_tuner import qwen_image_train_network as script  # noqa: E402
from musubi_tuner.modules.scheduling_flow_match_discrete import FlowMatchDiscreteScheduler  # noqa: E402

try:
    from musubi_tuner.training.trainer_base import DiTOutput
except ImportError:  # musubi-tuner before v0.3.0 (NetworkTrainer in hv_train_network.py): no compute_loss
    DiTOutput = None

assert script.__file__.startswith(tree), script.__file__  # the drifted copy, not the venv's


out = {}
parser = script.qwen_image_setup_parser(script.setup_parser_common())
args = parser.parse_args(sys.argv[1:])
print("stage parsed", flush=True)
trainer = script.QwenImageNetworkTrainer()
try:
    trainer.train(args)
except ValueError as exc:  # musubi's own first check: a plain run and an accepted Loli run get here
    assert "dataset_config is required" in str(exc), exc
print("stage train", flush=True)

torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
# a drifted tree may have renamed get_optimizer: call what it has, as its own train() would
get_optimizer = getattr(trainer, "get_optimizer", None) or trainer.get_optimizer_v2
_, _, optimizer, _, _ = get_optimizer(args, params)
out["optimizer"] = type(optimizer).__name__
out["params_after_step"] = step_once(optimizer, params)
print("stage optimizer", flush=True)

scheduler = FlowMatchDiscreteScheduler(shift=args.discrete_flow_shift, reverse=True, solver="euler")
torch.manual_seed(1)
latents = torch.randn(8, 16, 1, 8, 8)
noise = torch.randn_like(latents)
noisy, timesteps = trainer.get_noisy_model_input_and_timesteps(
    args, noise, latents, None, scheduler, "cpu", torch.float32
)
out["timesteps"] = hexes(timesteps)
out["noisy"] = hexes(noisy[:, 0, 0, 0, 0])
print("stage timesteps", flush=True)

if DiTOutput is not None:
    torch.manual_seed(3)
    pred, target = torch.randn(2, 16, 1, 8, 8), torch.randn(2, 16, 1, 8, 8)
    loss, _ = trainer.compute_loss(
        args,
        DiTOutput(pred=pred, target=target),
        torch.tensor([100.0, 900.0]),
        scheduler,
        torch.float32,
        torch.float32,
        0,
    )
    out["loss"] = hexes(loss)
    print("stage loss", flush=True)
print(json.dumps(out))
