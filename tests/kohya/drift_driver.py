"""Run from an sd-scripts tree (``python drift_driver.py TREE ARGV_JSON``): what a training script does
before and at its first step, through sd-scripts' own functions: parse, prepare_accelerator, build the
optimizer and step it once, draw SD timesteps and Flux timesteps, compute the loss. Prints "stage ..."
lines as it goes and, last, one JSON line with exact (hex) values, so two runs can be compared bit for
bit. Used by test_kohya_drift.py on drifted copies of the pinned tree."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

tree, argv = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, tree)

sys.path.append(str(Path(__file__).resolve().parents[1]))  # tests/, for drift_support

import torch  # noqa: E402
import train_network  # noqa: E402
from drift_support import hexes, step_once  # noqa: E402
from library import flux_train_utils, train_util  # noqa: E402

out = {}
args = train_network.setup_parser().parse_args(
    ["--pretrained_model_name_or_path", "unused", "--learning_rate", "1e-3", *argv]
)
print("stage parsed", flush=True)
train_util.prepare_accelerator(args)
print("stage accelerator", flush=True)

torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]
# a drifted tree may have renamed or moved get_optimizer: call what it has, as its own scripts would
get_optimizer = getattr(train_util, "get_optimizer", None) or train_util.get_optimizer_v2
_, _, optimizer = get_optimizer(args, params)
out["optimizer"] = type(optimizer).__name__
out["params_after_step"] = step_once(optimizer, params)
print("stage optimizer", flush=True)

torch.manual_seed(1)
get_timesteps = getattr(train_util, "get_timesteps", None) or train_util.get_timesteps_v2
out["sd_timesteps"] = get_timesteps(0, 1000, 8, "cpu").tolist()

flux_args = SimpleNamespace(
    timestep_sampling="sigmoid",
    sigmoid_scale=1.0,
    ip_noise_gamma=None,
    weighting_scheme="none",
    logit_mean=0.0,
    logit_std=1.0,
    mode_scale=1.29,
    discrete_flow_shift=3.0,
)
scheduler = SimpleNamespace(config=SimpleNamespace(num_train_timesteps=1000))
torch.manual_seed(2)
latents = torch.randn(4, 4, 8, 8)
noisy, flux_t, sigmas = flux_train_utils.get_noisy_model_input_and_timesteps(
    flux_args, scheduler, latents, torch.randn_like(latents), "cpu", torch.float32
)
out["flux_timesteps"] = hexes(flux_t)
print("stage timesteps", flush=True)

torch.manual_seed(3)
pred, target = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
out["loss"] = hexes(train_util.conditional_loss(pred, target, args.loss_type, "none", None).mean(dim=(1, 2, 3)))
print("stage loss", flush=True)
print(json.dumps(out))
