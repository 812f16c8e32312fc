"""The pre-trained digits base models shipped in ``assets/`` and ``loli-plugin bench make-base``, the
command that regenerates them.

Pre-training the tiny UNet on digits 0-8 (600 steps) costs about 95 s of one CPU core per objective
(measured here), so the demo and ``bench quality`` load the shipped result instead of redoing it on
every run. Shipped: the bases that hold out digit 9 (UNet eps and flow, DiT flow). The bases that
hold out another digit (``bench quality --digits``) are made on first use with the same recipe and
kept in a cache folder (``cached``): 6 more files of up to 2.8 MB would make the package heavier for
what only the long benchmark profiles need.

Each file carries, in its safetensors metadata, the recipe that made it, the machine it was made on,
and a check of the run's first ``CHECK_STEPS`` steps (the weights' SHA-256 and the fixed-grid
validation losses at that step), so a test can regenerate that prefix cheaply and compare.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from ..cli_args import digit, positive_int, require
from ..errors import LoliConfigError
from .backbones import BACKBONES, UNET
from .digits import HELD_OUT, held_out_split, pretrain

ASSETS = Path(__file__).with_name("assets")
OBJECTIVES = ("eps", "flow")
CHECK_STEPS = 30  # ~10 s per objective on one thread: cheap enough for every CI run
CACHE_ENV = "LOLI_BENCH_CACHE"  # where bases holding out another digit than 9 are kept


def shipped(objective: str, backbone: str = "unet") -> Path:
    """The shipped base of ``backbone`` and ``objective`` (digit 9 held out)."""
    prefix = "digits_base" if backbone == "unet" else f"digits_base_{backbone}"
    return ASSETS / f"{prefix}_{objective}.safetensors"


def recipe(backbone: str = "unet", held_out: int = HELD_OUT) -> dict:
    """The pre-training recipe of a base: the backbone's, plus the held-out digit when it is not 9 (the
    shipped files, made before the rotation existed, hold out 9 and say nothing)."""
    return BACKBONES[backbone].recipe | ({"held_out": held_out} if held_out != HELD_OUT else {})


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "loli-plugin" / "bench-bases"


def cached(objective: str, backbone: str, held_out: int) -> Path:
    """Where the base holding out ``held_out`` lives: shipped for 9, else in the cache folder (its name
    carries a hash of the recipe, so a changed recipe never reads an old file)."""
    if held_out == HELD_OUT:
        return shipped(objective, backbone)
    key = hashlib.sha256(json.dumps(recipe(backbone, held_out), sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / f"digits_base_{backbone}_{objective}_without{held_out}_{key}.safetensors"


def ensure(objective: str, backbone: str, held_out: int, progress=iter, log=print) -> Path:
    """The base's path, pre-training and caching it first when it is not there yet."""
    import fcntl

    path = cached(objective, backbone, held_out)
    if path.is_file() or held_out == HELD_OUT:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # one process makes it; a parallel worker that needs the same base waits here, then reads it
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            log(
                f"pre-training the {backbone} {objective} base without digit {held_out} "
                f"({BACKBONES[backbone].recipe['steps']} steps, about 1-2 min of one CPU core; cached in {path.parent})"
            )
            state, meta = make_base(objective, progress=progress, backbone=backbone, held_out=held_out)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            save(state, meta, tmp)
            os.replace(tmp, path)  # atomic: an interrupted run never leaves half a file under the name
    return path


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


def validation_losses(objective, state: dict, backbone: str = "unet", held_out: int = HELD_OUT) -> list[float]:
    """Held-out losses on the fixed grid of ``objective`` for the base weights ``state`` (one per t)."""
    b = BACKBONES[backbone]
    model = b.build()
    model.load_state_dict(state)
    return objective.grid_losses(model, b.to_model(held_out_split(held_out)[1]))


def make_base(
    objective_name: str, steps: int | None = None, progress=iter, backbone: str = "unet", held_out: int = HELD_OUT
) -> tuple[dict, dict]:
    """Pre-train with the shipped recipe; returns (state_dict, safetensors metadata)."""
    b = BACKBONES[backbone]
    objective = b.objective(objective_name)
    steps = b.recipe["steps"] if steps is None else steps
    check = {}

    def after_step(n, state):
        if n == CHECK_STEPS:
            check["sha256"] = state_sha256(state)
            check["validation"] = validation_losses(objective, state, backbone, held_out)

    state = pretrain(objective, steps, progress=progress, after_step=after_step, backbone=b, held_out=held_out)
    meta = {
        "objective": objective_name,
        "recipe": json.dumps(recipe(backbone, held_out) | {"steps": steps}, sort_keys=True),
        "machine": machine(),
        "sha256": state_sha256(state),
        "check": json.dumps({"steps": CHECK_STEPS, **check}, sort_keys=True),
    }
    if backbone != UNET.name:  # the shipped UNet files predate this key: absent means the UNet
        meta["backbone"] = backbone
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
            f"`loli-plugin bench make-base --backbone BACKBONE --objective OBJ --out {path}`"
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

    backbone = BACKBONES[args.backbone]
    if args.objective not in backbone.objectives:
        raise LoliConfigError(
            f"--objective {args.objective}: the {backbone.name} backbone is trained with "
            f"{', '.join(backbone.objectives)} only"
        )
    state, meta = make_base(
        args.objective,
        args.steps,
        progress=lambda r: tqdm(
            r,
            desc=f"pre-training the {args.backbone} {args.objective} base without digit {args.held_out}",
            unit="step",
            mininterval=2,
        ),
        backbone=args.backbone,
        held_out=args.held_out,
    )
    save(state, meta, out)
    print(f"{out}: sha256 of the weights {meta['sha256']}, made on {meta['machine']}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "make-base",
        help="regenerate a shipped digits base model (what the demo and bench quality start from)",
        description="Pre-train a tiny digits model (the UNet or the Flux-style transformer) with the shipped "
        "recipe on one CPU thread and write it as safetensors; the same bits on every run of the same CPU type "
        "and torch build.",
    )
    p.add_argument(
        "--backbone",
        choices=list(BACKBONES),
        default="unet",
        help="unet (diffusers UNet2DModel, the default) or dit (a tiny FluxTransformer2DModel on packed tokens, "
        "flow only)",
    )
    p.add_argument(
        "--held-out",
        type=digit,
        default=HELD_OUT,
        help=f"the digit the base never sees (default {HELD_OUT}, the shipped bases')",
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
        default=None,
        help=f"pre-training steps (default the shipped recipe's: {UNET.recipe['steps']})",
    )
    p.add_argument(
        "--out",
        required=True,
        help="safetensors path to write (the shipped ones: loli_plugin/bench/assets/digits_base_OBJECTIVE.safetensors "
        "for the UNet, digits_base_dit_flow.safetensors for the transformer)",
    )
    p.set_defaults(func=run)
