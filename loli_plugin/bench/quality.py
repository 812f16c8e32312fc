"""``loli-plugin bench quality``: a training-quality benchmark that can decide LoliClustered's defaults.

A tiny diffusers ``UNet2DModel`` pre-trained on scikit-learn's digits 0-8 (shipped in ``assets/``);
a rank-8 peft LoRA is fitted on the held-out digit 9 with each variant, for two objectives (``eps``:
epsilon prediction, DDPM schedule, integer timesteps; ``flow``: rectified flow, logit-normal t), at
several batch sizes, learning rates, seeds and horizons. Each fitted LoRA is scored by ``metrics.py``
(held-out MSE per noise band, its mean and geometric mean, and samples generated from fixed noise,
scored by a digits classifier); ``quality_report.py`` turns the runs into tables, the rule's verdict
and a plot.

Design:
* One run per (objective, variant, batch, lr, seed), evaluated at every horizon on the way: the LR is
  constant (no scheduler, no warm-up) and nothing in a run depends on its total length, so the model
  after 200 steps of a 1000-step run is exactly the model of a 200-step run.
* Paired seeds: the seed fixes the LoRA's initial weights, the training images drawn, the noise and
  the cluster schedule, each from its own generator, so every variant sees the same images and noise
  in the same order; only the timesteps differ where a variant draws them per cluster.
* Each run uses one CPU thread (the same bits whichever process runs it) and is appended to a JSONL
  file as soon as it finishes; a restarted command skips the runs already there, so a long run
  survives interruptions. ``--workers`` runs that many in parallel.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..cli_args import nonnegative_int, positive_float, positive_int, require
from ..errors import LoliConfigError
from .machine import machine_line

CSM = "AdamWClusteredSecondMoment"
SAMPLER_CLUSTERS = 10  # the cluster count of "AdamW + sampler"

# inner=None: plain torch AdamW; otherwise LoliClustered(inner=..., clusters=..., **options).
# sampler: every step draws its timesteps from one cluster (the schedule's, or the optimizer's).
VARIANTS = {
    "AdamW": dict(inner=None, sampler=False),
    "AdamW + sampler": dict(inner=None, sampler=True),
    "Loli K=5": dict(inner="AdamW", clusters=5, sampler=True),
    "Loli K=10": dict(inner="AdamW", clusters=10, sampler=True),
    "Loli CSM K=10": dict(inner=CSM, clusters=10, sampler=True),
    "Loli CSM K=10 normalized": dict(inner=CSM, clusters=10, sampler=True, options={"momentum": "normalized"}),
    "Loli K=10 + loli loss": dict(inner="AdamW", clusters=10, sampler=True, loss="loli"),
    "Loli K=10 beta_horizon": dict(inner="AdamW", clusters=10, sampler=True, options={"beta_horizon": True}),
    "Loli K=10 warm_start": dict(inner="AdamW", clusters=10, sampler=True, options={"warm_start": True}),
    "AdamW + loli loss": dict(inner=None, sampler=False, loss="loli"),
}

# The candidates for the default, and what separates their parts: "AdamW + sampler" (the sampler
# alone), "AdamW + loli loss" (the loss alone). Of the existing options, beta_horizon (the closest
# to never worse in the 2-seed benchmark before this one) and the Loli loss (the only one better
# than plain K=10 in all its settings there); warm_start was worse than plain K=10 in 4 of 6.
DECIDING_VARIANTS = [
    "AdamW",
    "AdamW + sampler",
    "Loli K=5",
    "Loli K=10",
    "Loli CSM K=10",
    "Loli CSM K=10 normalized",
    "Loli K=10 beta_horizon",
    "Loli K=10 + loli loss",
    "AdamW + loli loss",
]
PROFILES = {
    # what the committed results in docs/bench/quality.md were made with: the small batches LoRA users
    # train with, 1000 steps, 3 paired seeds (1.9 CPU-thread hours: about an hour with --workers 2 on 2 cores)
    "decide": dict(
        objectives=["eps", "flow"],
        batch=[1, 2],
        lr=[1e-3],
        seeds=[0, 1, 2],
        horizons=[200, 1000],
        variants=DECIDING_VARIANTS,
        samples=64,
        sample_steps=30,
    ),
    # the whole grid (about 5 hours with --workers 2 on 2 cores; not run for the committed results)
    "full": dict(
        objectives=["eps", "flow"],
        batch=[1, 2, 4, 8],
        lr=[1e-3, 3e-3],
        seeds=[0, 1, 2],
        horizons=[200, 1000],
        variants=DECIDING_VARIANTS,
        samples=64,
        sample_steps=30,
    ),
    # the same questions on fewer cells: about 10 minutes with --workers 2 on 2 cores
    "quick": dict(
        objectives=["eps", "flow"],
        batch=[2, 8],
        lr=[3e-3],
        seeds=[0, 1, 2],
        horizons=[200],
        variants=["AdamW", "Loli K=10", "Loli CSM K=10", "Loli CSM K=10 normalized"],
        samples=64,
        sample_steps=30,
    ),
}
SETTINGS = ("objectives", "batch", "lr", "seeds", "horizons", "variants", "samples", "sample_steps")
RESULTS = "quality.jsonl"


def fit(
    objective_name: str,
    variant_name: str,
    batch: int,
    lr: float,
    seed: int,
    horizons: list[int],
    samples: int,
    sample_steps: int,
    observer=None,
) -> dict:
    """Fit one LoRA for max(horizons) steps and evaluate it at every horizon; returns the JSONL row.
    ``observer(step, model, objective, loss, t)``, if given, is called with step 0 (loss and t None)
    before the first step and after every optimizer step with that step's training loss and timesteps
    (``loli-plugin demo`` draws its curves from it); it must not draw from the run's generators (the
    probe and the samples use their own fixed noise)."""
    from .. import LoliClustered, loli_loss
    from ..schedule import ClusterSchedule
    from . import base as base_model
    from .digits import Objective, add_lora, nine_split, tiny_unet
    from .metrics import evaluate

    variant = VARIANTS[variant_name]
    objective = Objective(objective_name)
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)  # the LoRA's initial weights
        data_g, noise_g, t_g = (torch.Generator().manual_seed(1000 * seed + stream) for stream in (1, 2, 3))
        x_train, _ = nine_split()
        model = tiny_unet()
        model.load_state_dict(base_model.load(base_model.shipped(objective_name))[0])
        model, lora = add_lora(model)
        if variant["inner"] is None:
            opt = torch.optim.AdamW(lora, lr=lr, weight_decay=0.0)
            schedule = ClusterSchedule(SAMPLER_CLUSTERS, "shuffle", seed)
        else:
            opt = LoliClustered(
                lora,
                inner=variant["inner"],
                clusters=variant["clusters"],
                schedule="shuffle",
                seed=seed,
                lr=lr,
                weight_decay=0.0,
                **variant.get("options", {}),
            )
            schedule = opt.schedule  # advanced by the optimizer's step()
        evaluations = {}
        if observer is not None:
            observer(0, model, objective, None, None)
        for step in range(1, max(horizons) + 1):
            x0 = x_train[torch.randint(len(x_train), (batch,), generator=data_g)]
            if variant["sampler"]:
                t = objective.dist.sample_cluster(batch, schedule.current, schedule.clusters, generator=t_g)
            else:
                t = objective.dist.sample(batch, generator=t_g)
            xt, tt, target = objective.noised(x0, torch.randn(x0.shape, generator=noise_g), t)
            pred = model(xt, tt).sample
            loss = (
                loli_loss(pred, target).mean()
                if variant.get("loss") == "loli"
                else torch.nn.functional.mse_loss(pred, target)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            if variant["inner"] is None:
                schedule.advance()
            if observer is not None:
                observer(step, model, objective, loss.item(), t)
            if step in horizons:
                evaluations[str(step)] = evaluate(model, objective, samples, sample_steps)
    finally:
        torch.set_num_threads(threads)
    return {
        "objective": objective_name,
        "variant": variant_name,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "eval": eval_settings(horizons, samples, sample_steps),
        "horizons": evaluations,
        "seconds": round(time.perf_counter() - started, 1),
    }


def eval_settings(horizons, samples, sample_steps) -> dict:
    """What makes two runs of the same cell comparable; a restart reuses only rows with the same."""
    return {"horizons": sorted(horizons), "samples": samples, "sample_steps": sample_steps}


def run_key(row: dict) -> tuple:
    return row["objective"], row["variant"], row["batch"], float(row["lr"]), row["seed"]


def planned(settings: dict) -> list[dict]:
    """Every run of the settings, whole cells first (all variants and seeds of one lr, batch and
    objective together), so an interrupted benchmark leaves complete cells of both objectives behind."""
    return [
        dict(
            objective_name=o,
            variant_name=v,
            batch=b,
            lr=lr,
            seed=s,
            horizons=settings["horizons"],
            samples=settings["samples"],
            sample_steps=settings["sample_steps"],
        )
        for lr in settings["lr"]
        for b in settings["batch"]
        for o in settings["objectives"]
        for s in settings["seeds"]
        for v in settings["variants"]
    ]


def load_rows(path: Path, settings: dict) -> list[dict]:
    """The rows in ``path`` made with these evaluation settings (others are kept in the file, unused)."""
    if not path.exists():
        return []
    wanted = eval_settings(settings["horizons"], settings["samples"], settings["sample_steps"])
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line an interruption cut short: that run is simply redone
            print(f"{path}:{n}: unreadable line skipped (an interrupted write?)")
            continue
        if row.get("eval") == wanted:
            rows.append(row)
    # only the runs these settings plan: a narrower command over a shared file reports what it asked for
    planned_keys = {
        (j["objective_name"], j["variant_name"], j["batch"], float(j["lr"]), j["seed"]) for j in planned(settings)
    }
    return [r for r in rows if run_key(r) in planned_keys]


def _one_thread_worker() -> None:
    torch.set_num_threads(1)


def run_all(todo: list[dict], path: Path, workers: int, log) -> list[str]:
    """Run ``todo`` (``fit`` keyword sets), appending each finished row to ``path``; returns the
    failures, one line each (one broken run must not throw away the hours of the others)."""
    if path.exists() and not path.read_bytes().endswith(b"\n") and path.stat().st_size:
        with path.open("a") as f:  # an interruption cut the last line short: start a fresh one
            f.write("\n")
    failures = []
    for job, row in _results(todo, workers):
        if isinstance(row, Exception):
            failures.append(
                f"{job['objective_name']} {job['variant_name']} batch {job['batch']} lr {job['lr']} "
                f"seed {job['seed']}: {type(row).__name__}: {row}"
            )
            print(f"FAILED {failures[-1]}", flush=True)
            continue
        with path.open("a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()
            os.fsync(f.fileno())
        log(job, row)
    return failures


def _results(todo: list[dict], workers: int):
    """(job, row or the exception it raised), in order of completion."""
    if workers == 1:
        for job in todo:
            try:
                yield job, fit(**job)
            except Exception as exc:
                yield job, exc
        return
    with ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread_worker
    ) as pool:
        futures = {pool.submit(fit, **job): job for job in todo}
        for future in as_completed(futures):
            try:
                yield futures[future], future.result()
            except Exception as exc:
                yield futures[future], exc


def references(settings: dict) -> dict:
    """Per objective, the scores of the base model without a LoRA (where every variant starts) and of
    real training 9s in place of samples (what a perfect generator would score)."""
    from . import base as base_model
    from .digits import Objective, tiny_unet
    from .metrics import evaluate, real_reference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for name in settings["objectives"]:
            model = tiny_unet()
            model.load_state_dict(base_model.load(base_model.shipped(name))[0])
            result[name] = {
                "base model": evaluate(model, Objective(name), settings["samples"], settings["sample_steps"]),
                "real 9s": real_reference(settings["samples"]),
            }
        return result
    finally:
        torch.set_num_threads(threads)


def settings_from(args) -> dict:
    profile = PROFILES[args.profile]
    settings = {key: getattr(args, key) if getattr(args, key) is not None else profile[key] for key in SETTINGS}
    settings["horizons"] = sorted(set(settings["horizons"]))
    if "AdamW" not in settings["variants"]:
        raise LoliConfigError("--variants must include AdamW: every result is reported against it")
    if settings["samples"] < 2:
        raise LoliConfigError(
            f"--samples {settings['samples']}: the Fréchet distance needs a covariance, so at least 2 samples"
        )
    return settings


def command_line(args, settings: dict) -> str:
    """The command that reproduces these results (every setting spelled out)."""

    def values(v):
        return " ".join(f'"{x}"' if " " in str(x) else str(x) for x in v)

    return (
        f"loli-plugin bench quality --profile {args.profile} --out {args.out} --workers {args.workers} "
        f"--objectives {values(settings['objectives'])} --batch {values(settings['batch'])} "
        f"--lr {values(settings['lr'])} --seeds {values(settings['seeds'])} "
        f"--horizons {values(settings['horizons'])} --samples {settings['samples']} "
        f"--sample-steps {settings['sample_steps']} --variants {values(settings['variants'])}"
    )


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", extra="demo")
    from . import quality_report

    settings = settings_from(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoliConfigError(f"--out {out} is a file; give a folder for {RESULTS}, quality.md and the plots")
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    done = {run_key(r) for r in load_rows(path, settings)}
    jobs = planned(settings)
    todo = [
        j for j in jobs if (j["objective_name"], j["variant_name"], j["batch"], float(j["lr"]), j["seed"]) not in done
    ]
    print(f"# machine: {machine_line()}")
    print(
        f"{len(jobs)} runs of {max(settings['horizons'])} steps; {len(jobs) - len(todo)} already in {path}, "
        f"{len(todo)} to run with {args.workers} worker(s)",
        flush=True,
    )
    started = time.perf_counter()
    count = [0]

    def log(job, row):
        count[0] += 1
        last = row["horizons"][str(max(settings["horizons"]))]
        print(
            f"[{time.perf_counter() - started:6.0f}s {count[0]}/{len(todo)}] {row['objective']} "
            f"lr {row['lr']:g} batch {row['batch']} seed {row['seed']} {row['variant']:26s} {row['seconds']:5.0f}s  "
            f"mean MSE {last['mean']:.4f}  FD {last['fd']:.3f}  share 9 {last['share9']:.2f}",
            flush=True,
        )

    failures = run_all(todo, path, args.workers, log)
    rows = load_rows(path, settings)
    written = quality_report.write(
        rows, settings, references(settings), out, command=command_line(args, settings), machine=machine_line()
    )
    print(f"written: {', '.join(str(p) for p in [path, *written])} ({time.perf_counter() - started:.0f} s)")
    if failures:
        print(f"{len(failures)} run(s) failed; re-run the same command to retry them:\n" + "\n".join(failures))
        return 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "quality",
        help="LoRA quality of each optimizer variant on digits: held-out loss per noise band and "
        "classifier-scored samples (CPU)",
        description="Fit a LoRA on a held-out digit with each variant and score it; writes quality.jsonl "
        "(one line per run; a restarted command skips finished runs), quality.md (tables and "
        "the default rule's verdict), quality-bands.md, quality.png (FD) and quality-loss.png. Every setting below "
        "overrides the profile's.",
    )
    p.add_argument(
        "--profile",
        choices=list(PROFILES),
        default="quick",
        help="quick: 2 batch sizes x 1 lr x 3 seeds x 4 variants, 200 steps (~10 min with --workers 2 on 2 cores); "
        "decide: batch 1 2, lr 1e-3, 3 seeds, horizons 200 and 1000, 9 variants "
        "(the committed results, ~1 h with --workers 2); "
        "full: batch 1 2 4 8, lr 1e-3 3e-3 (~5 h). Default quick",
    )
    p.add_argument("--out", default="out/bench-quality", help="folder for the results (default out/bench-quality)")
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="runs in parallel, one CPU thread each (default 1; use at most the number of free cores)",
    )
    p.add_argument("--objectives", nargs="+", choices=["eps", "flow"], help="training objectives")
    p.add_argument(
        "--variants",
        nargs="+",
        choices=list(VARIANTS),
        metavar="VARIANT",
        help=f"variants to fit, AdamW among them (choices: {', '.join(VARIANTS)})",
    )
    p.add_argument("--batch", type=positive_int, nargs="+", help="batch sizes")
    p.add_argument("--lr", type=positive_float, nargs="+", help="learning rates (constant)")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", help="seeds (each is one paired set of runs)")
    p.add_argument(
        "--horizons",
        type=positive_int,
        nargs="+",
        help="steps after which each run is evaluated; the run lasts the largest",
    )
    p.add_argument("--samples", type=positive_int, help="images generated per evaluation (from fixed noise)")
    p.add_argument(
        "--sample-steps", type=positive_int, help="model calls per generated image (DDIM for eps, Euler for flow)"
    )
    p.set_defaults(func=run)
