"""The pre-trained digits base models shipped in ``assets/`` and ``loli-plugin bench make-base``, the
command that regenerates them.

Pre-training the tiny UNet on digits 0-8 (600 steps) costs about 95 s of one CPU core per objective
(measured here), so the demo and ``bench quality`` load the shipped result instead of redoing it on
every run. Each file carries, in its safetensors metadata, the recipe that made it, the machine it
was made on, and a check of the run's first ``CHECK_STEPS`` steps (the weights' SHA-256 and the
fixed-grid validation losses at that step), so a test can regenerate that prefix cheaply and
compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from ..cli_args import positive_int, require
from ..errors import LoliConfigError
from .digits import PRETRAIN, Objective, nine_split, pretrain, tiny_unet

ASSETS = Path(__file__).with_name("assets")
OBJECTIVES = ("eps", "flow")
CHECK_STEPS = 30  # ~10 s per objective on one thread: cheap enough for every CI run


def shipped(objective: str) -> Path:
    return ASSETS / f"digits_base_{objective}.safetensors"


def state_sha256(state: dict) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


# Environment variables that change which kernels oneDNN and MKL pick, hence the low bits.
KERNEL_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")


def machine() -> str:
    """What decides the bits of a one-thread CPU run: the torch build, the vector ISA of its own
    kernels, the CPU (model and feature flags, which oneDNN and MKL dispatch on) and any variable
    that overrides that dispatch. Measured: ONEDNN_MAX_CPU_ISA=SSE41 changes the bits while the
    torch build, ISA and model stay the same."""
    info = _cpuinfo()
    model = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), platform.machine())
    flags = next((line.split(":", 1)[1].split() for line in info if line.startswith("flags")), [])
    overrides = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ]
    return " | ".join(
        [
            f"torch {torch.__version__}",
            torch.backends.cpu.get_cpu_capability(),
            model,
            f"cpu flags {hashlib.sha256(' '.join(sorted(flags)).encode()).hexdigest()[:12]}",
            *overrides,
        ]
    )


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:  # not Linux: the architecture name stands in for the model
        return []


def validation_losses(objective, state: dict) -> list[float]:
    """Held-out losses on the fixed grid of ``objective`` for the base weights ``state`` (one per t)."""
    model = tiny_unet()
    model.load_state_dict(state)
    return objective.grid_losses(model, nine_split()[1])


def make_base(objective_name: str, steps: int, progress=iter) -> tuple[dict, dict]:
    """Pre-train with the shipped recipe; returns (state_dict, safetensors metadata)."""
    objective = Objective(objective_name)
    check = {}

    def after_step(n, state):
        if n == CHECK_STEPS:
            check["sha256"] = state_sha256(state)
            check["validation"] = validation_losses(objective, state)

    state = pretrain(objective, steps, progress=progress, after_step=after_step)
    meta = {
        "objective": objective_name,
        "recipe": json.dumps(PRETRAIN | {"steps": steps}, sort_keys=True),
        "machine": machine(),
        "sha256": state_sha256(state),
        "check": json.dumps({"steps": CHECK_STEPS, **check}, sort_keys=True),
    }
    return state, meta


def save(state: dict, meta: dict, path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata=meta)


def load(path: Path) -> tuple[dict, dict]:
    """(state_dict, metadata) of a base model file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        raise LoliConfigError(
            f"base model {path} not found: regenerate it with "
            f"`loli-plugin bench make-base --objective OBJ --out {path}`"
        )
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    return load_file(str(path)), meta


def run(args) -> int:
    require("sklearn", "diffusers", "tqdm", extra="demo")
    out = Path(args.out)
    if out.is_dir():
        raise LoliConfigError(f"--out {out} is a folder; give the path of the .safetensors file to write")
    from tqdm import tqdm

    state, meta = make_base(
        args.objective,
        args.steps,
        progress=lambda r: tqdm(
            r, desc=f"pre-training the {args.objective} base on digits 0-8", unit="step", mininterval=2
        ),
    )
    save(state, meta, out)
    print(f"{out}: sha256 of the weights {meta['sha256']}, made on {meta['machine']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "make-base",
        help="regenerate a shipped digits base model (what the demo and bench quality start from)",
        description="Pre-train the tiny digits UNet with the shipped recipe on one CPU thread and write it "
        "as safetensors; the same bits on every run of the same CPU type and torch build.",
    )
    p.add_argument(
        "--objective",
        choices=OBJECTIVES,
        required=True,
        help="training objective: eps (epsilon prediction) or flow (rectified flow)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=PRETRAIN["steps"],
        help=f"pre-training steps (default {PRETRAIN['steps']}, the shipped recipe)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="safetensors path to write (the shipped ones: loli_plugin/bench/assets/digits_base_OBJECTIVE.safetensors)",
    )
    p.set_defaults(func=run)
