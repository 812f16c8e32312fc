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
import math
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

from ..cli_args import digit, nonnegative_int, positive_float, positive_int, require
from ..errors import LoliConfigError
from .machine import machine_line
from .quality_grid import PROFILES, SETTINGS, VARIANTS, job_key, planned, run_key, setups

SAMPLER_CLUSTERS = 10  # the cluster count of "AdamW + sampler"
MIN_SNR_GAMMA = 5.0

# How users run the baselines' optimizers, where that differs from the cell's lr and weight decay 0:
# Prodigy at lr 1 (its d sets the step size) with the two switches LoRA guides for kohya set. AdamW8bit
# with 8-bit states on every tensor: bitsandbytes keeps tensors under min_8bit_size (4096) elements in
# 32 bit, which on a real model's LoRA (rank x 640 and up) is almost none, but on this tiny one is all
# of them (the largest has 9216 elements, most 256-2304), where AdamW8bit would be plain AdamW.
OPTIMIZER_ARGS = {
    "Prodigy": {"lr": 1.0, "use_bias_correction": True, "safeguard_warmup": True},
    "ProdigySharedD": {"lr": 1.0, "use_bias_correction": True, "safeguard_warmup": True},
    "AdamW8bit": {"min_8bit_size": 0},
}

RESULTS = "quality.jsonl"
EVAL_VERSION = 2  # 2: two classifiers (fd, fd_cnn), share of the held-out digit, any held-out digit and backbone


def make_optimizer(variant: dict, params: list, lr: float, seed: int):
    """The variant's optimizer over ``params``; LoliClustered for variants with ``clusters``."""
    from .. import LoliClustered
    from ..inner import resolve_inner
    from ..plugins import inner_specs

    name = variant["optimizer"]
    kwargs = {"lr": lr, "weight_decay": 0.0} | OPTIMIZER_ARGS.get(name, {})
    if "clusters" not in variant:
        _, factory, implied = resolve_inner(name, inner_specs())
        return factory(params, **{**implied, **kwargs})
    return LoliClustered(
        params,
        inner=name,
        clusters=variant["clusters"],
        schedule="shuffle",
        seed=seed,
        **kwargs,
        **variant.get("options", {}),
    )


def min_snr_weight(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma loss weight for epsilon prediction, per sample: min(SNR(t), gamma) / SNR(t), with
    SNR(t) = alpha_bar_t / (1 - alpha_bar_t) of the noise schedule (Hang et al. 2023, as sd-scripts'
    --min_snr_gamma weighs each sample's mean loss; written from the formula)."""
    ac = alphas_cumprod.double()[timesteps]
    snr = ac / (1 - ac)
    return (snr.clamp(max=gamma) / snr).float()


def training_loss(pred, target, variant: dict, backbone, objective, t, normalizer=None, cluster=None) -> torch.Tensor:
    """The step's loss: per-element MSE or Loli loss (cosine along the backbone's dim), each sample's mean,
    weighted per sample where the variant says so, then the batch mean (the trainers' order); with
    ``weighting="cluster_norm"``, divided by the step's cluster's running mean loss (``normalizer``)."""
    from .. import loli_loss

    if variant.get("loss") == "loli":
        per_element = loli_loss(pred, target, dim=backbone.loss_dim)
    else:
        per_element = (pred - target).square()
    per_sample = per_element.mean(dim=tuple(range(1, pred.dim())))
    if variant.get("weighting") == "min_snr":
        per_sample = per_sample * min_snr_weight(t, objective.sched.alphas_cumprod, MIN_SNR_GAMMA)
    if variant.get("weighting") == "cluster_norm":
        return normalizer(per_sample.mean(), cluster)
    return per_sample.mean()


def group_values(opt) -> dict:
    """What an adaptive optimizer learned about its step size, for the report: Prodigy's ``d`` (per cluster
    inside LoliClustered)."""
    from .. import LoliClustered

    if isinstance(opt, LoliClustered):
        banks = [opt._bank_values[k][0] for k in range(opt.clusters)]
        if any("d" in b for b in banks):  # a cluster whose d has not moved yet still has the initial one
            return {"d": [float(b.get("d", opt._initial[0].get("d", math.nan))) for b in banks]}
        return {}
    d = opt.param_groups[0].get("d")
    return {"d": [float(d)]} if d is not None else {}


def fit(
    objective_name: str,
    variant_name: str,
    batch: int,
    lr: float,
    seed: int,
    horizons: list[int],
    samples: int,
    sample_steps: int,
    backbone_name: str = "unet",
    digit: int = 9,
    observer=None,
) -> dict:
    """Fit one LoRA for max(horizons) steps and evaluate it at every horizon; returns the JSONL row.
    ``observer(step, model, objective, loss, t)``, if given, is called with step 0 (loss and t None)
    before the first step and after every optimizer step with that step's training loss and timesteps
    (``loli-plugin demo`` draws its curves from it); it must not draw from the run's generators (the
    probe and the samples use their own fixed noise)."""
    from .. import LoliClustered
    from ..schedule import ClusterSchedule
    from ..weighting import ClusterLossNormalizer
    from . import base as base_model
    from .backbones import BACKBONES
    from .digits import add_lora, held_out_split
    from .metrics import evaluate

    variant = VARIANTS[variant_name]
    backbone = BACKBONES[backbone_name]
    objective = backbone.objective(objective_name)
    started, cpu_started = time.perf_counter(), time.process_time()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = base_model.ensure(objective_name, backbone_name, digit, log=lambda *a: None)
        torch.manual_seed(seed)  # the LoRA's initial weights
        data_g, noise_g, t_g = (torch.Generator().manual_seed(1000 * seed + stream) for stream in (1, 2, 3))
        x_train = backbone.to_model(held_out_split(digit)[0])
        model = backbone.build()
        model.load_state_dict(base_model.load(path)[0])
        model, lora = add_lora(model, backbone.lora_targets)
        opt = make_optimizer(variant, lora, lr, seed)
        if isinstance(opt, LoliClustered):
            schedule = opt.schedule  # advanced by the optimizer's step()
        else:
            schedule = ClusterSchedule(SAMPLER_CLUSTERS, "shuffle", seed)
        stratified = isinstance(opt, LoliClustered) or variant.get("sampler", False)
        normalizer = ClusterLossNormalizer(schedule.clusters) if variant.get("weighting") == "cluster_norm" else None
        evaluations = {}
        if observer is not None:
            observer(0, model, objective, None, None)
        for step in range(1, max(horizons) + 1):
            x0 = x_train[torch.randint(len(x_train), (batch,), generator=data_g)]
            if stratified:
                t = objective.dist.sample_cluster(batch, schedule.current, schedule.clusters, generator=t_g)
            else:
                t = objective.dist.sample(batch, generator=t_g)
            noise = backbone.to_model(torch.randn((batch, 1, 8, 8), generator=noise_g))
            xt, tt, target = objective.noised(x0, noise, t)
            loss = training_loss(
                model(xt, tt).sample, target, variant, backbone, objective, t, normalizer, schedule.current
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            if not isinstance(opt, LoliClustered):
                schedule.advance()
            if observer is not None:
                observer(step, model, objective, loss.item(), t)
            if step in horizons:
                evaluations[str(step)] = evaluate(model, objective, samples, sample_steps, backbone, digit)
        learned = group_values(opt)
    finally:
        torch.set_num_threads(threads)
    return {
        "digit": digit,
        "backbone": backbone_name,
        "objective": objective_name,
        "variant": variant_name,
        "batch": batch,
        "lr": lr,
        "seed": seed,
        "eval": eval_settings(horizons, samples, sample_steps),
        "horizons": evaluations,
        **({"learned": learned} if learned else {}),
        "seconds": round(time.perf_counter() - started, 1),
        # this process's CPU time: what the run costs on an idle core, whatever else shares the machine
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
    }


def eval_settings(horizons, samples, sample_steps) -> dict:
    """What makes two runs of the same cell comparable; a restart reuses only rows with the same."""
    return {"horizons": sorted(horizons), "samples": samples, "sample_steps": sample_steps, "version": EVAL_VERSION}


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
    planned_keys = {job_key(j) for j in planned(settings)}
    return [r for r in rows if run_key(r) in planned_keys]


def _one_thread_worker() -> None:
    torch.set_num_threads(1)


def run_all(todo: list[dict], path: Path, workers: int, log) -> list[str]:
    """Run ``todo`` (``fit`` keyword sets), appending each finished row to ``path``; returns the
    failures, one line each (one broken run must not throw away the hours of the others)."""
    failures = []
    for job, row in _results(todo, workers):
        if isinstance(row, Exception):
            failures.append(
                f"digit {job['digit']} {job['backbone_name']} {job['objective_name']} {job['variant_name']} "
                f"batch {job['batch']} lr {job['lr']} seed {job['seed']}: {type(row).__name__}: {row}"
            )
            print(f"FAILED {failures[-1]}", flush=True)
            continue
        append_rows(path, [row])
        log(job, row)
    return failures


def append_rows(path: Path, rows: list[dict]) -> None:
    """Append rows as JSON lines, each flushed to disk (an interruption loses at most the line being written)."""
    with path.open("a") as f:
        if f.tell() and not path.read_bytes().endswith(b"\n"):
            f.write("\n")  # an interruption cut the last line short: start a fresh one
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


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
    """Per digit, backbone and objective, the scores of the base model without a LoRA (where every variant
    starts) and of real training images of the held-out digit in place of samples (what a perfect
    generator would score)."""
    from . import base as base_model
    from .backbones import BACKBONES
    from .metrics import evaluate, real_reference

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = {}
        for digit in settings["digits"]:
            for b, o in setups(settings):
                backbone = BACKBONES[b]
                model = backbone.build()
                model.load_state_dict(base_model.load(base_model.ensure(o, b, digit))[0])
                result[digit, b, o] = {
                    "base model": evaluate(
                        model, backbone.objective(o), settings["samples"], settings["sample_steps"], backbone, digit
                    ),
                    "real images": real_reference(settings["samples"], digit),
                }
        return result
    finally:
        torch.set_num_threads(threads)


def settings_from(args) -> dict:
    profile = PROFILES[args.profile]
    settings = {key: getattr(args, key) if getattr(args, key, None) is not None else profile[key] for key in SETTINGS}
    settings["horizons"] = sorted(set(settings["horizons"]))
    grids = profile["grids"]
    if args.batch is not None or args.variants is not None:
        # one grid: the given batches and variants, the profile's (all of its grids') for the one not given
        grids = [
            dict(
                batch=args.batch or sorted({b for g in grids for b in g["batch"]}),
                variants=args.variants or list(dict.fromkeys(v for g in grids for v in g["variants"])),
            )
        ]
    settings["grids"] = grids
    if not setups(settings):
        raise LoliConfigError(
            f"--backbones {' '.join(settings['backbones'])} with --objectives {' '.join(settings['objectives'])}: "
            "nothing to run (the dit backbone is trained with flow only)"
        )
    if any("AdamW" not in g["variants"] for g in grids):
        raise LoliConfigError("--variants must include AdamW: every result is reported against it")
    if settings["samples"] < 2:
        raise LoliConfigError(
            f"--samples {settings['samples']}: the Fréchet distance needs a covariance, so at least 2 samples"
        )
    return settings


def command_line(args, settings: dict) -> str:
    """The command that reproduces these results (every setting spelled out; the grids of a profile are
    its own, so a command with the profile's grids names no --batch or --variants)."""

    def values(v):
        return " ".join(f'"{x}"' if " " in str(x) else str(x) for x in v)

    grid = settings["grids"][0] if len(settings["grids"]) == 1 else None
    same_grids = settings["grids"] == PROFILES[args.profile]["grids"]
    return (
        f"loli-plugin bench quality --profile {args.profile} --out {args.out} --workers {args.workers} "
        f"--backbones {values(settings['backbones'])} --objectives {values(settings['objectives'])} "
        f"--digits {values(settings['digits'])} "
        + ("" if same_grids else f"--batch {values(grid['batch'])} ")
        + f"--lr {values(settings['lr'])} --seeds {values(settings['seeds'])} "
        f"--horizons {values(settings['horizons'])} --samples {settings['samples']} "
        f"--sample-steps {settings['sample_steps']}" + ("" if same_grids else f" --variants {values(grid['variants'])}")
    )


def run(args) -> int:
    require("sklearn", "peft", "matplotlib", extra="demo")
    from . import quality_plan, quality_report

    settings = settings_from(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoliConfigError(f"--out {out} is a file; give a folder for {RESULTS}, quality.md and the plots")
    path = out / RESULTS
    finished = load_rows(path, settings)
    done = {run_key(r) for r in finished}
    reused = []
    for other in args.reuse or []:
        taken = [r for r in load_rows(Path(other), settings) if run_key(r) not in done]
        reused += taken
        finished += taken
        done |= {run_key(r) for r in taken}
        print(f"{len(taken)} finished run(s) taken from {other} (same settings and evaluation)")
    cost = quality_plan.CostModel(finished)
    jobs = planned(settings)
    todo = [j for j in jobs if job_key(j) not in done]
    missing = len(todo)
    print(f"# machine: {machine_line()}")
    print(
        f"{len(jobs)} runs of {max(settings['horizons'])} steps; {len(jobs) - missing} already in {path}, "
        f"{missing} missing",
        flush=True,
    )
    if args.max_hours is not None and not args.report_only:
        todo = quality_plan.within(todo, cost, args.max_hours, args.workers)
        print(
            f"--max-hours {args.max_hours:g}: the first {len(todo)} of them (whole cells, in the profile's order) fit "
            f"with {args.workers} worker(s) on idle cores; the rest stay for the next command"
        )
    if args.plan:
        print("\n".join(quality_plan.plan_lines(todo, cost, args.workers, missing)))
        return 0
    out.mkdir(parents=True, exist_ok=True)
    if reused:
        append_rows(path, reused)
    print(
        "--report-only: none run" if args.report_only else f"{len(todo)} to run with {args.workers} worker(s)",
        flush=True,
    )
    if args.report_only:
        todo = []  # the tables of what is there; the missing runs stay missing (and the report says so)
    started = time.perf_counter()
    count = [0]

    def log(job, row):
        count[0] += 1
        last = row["horizons"][str(max(settings["horizons"]))]
        print(
            f"[{time.perf_counter() - started:6.0f}s {count[0]}/{len(todo)}] digit {row['digit']} {row['backbone']} "
            f"{row['objective']} lr {row['lr']:g} batch {row['batch']} seed {row['seed']} {row['variant']:34s} "
            f"{row['seconds']:5.0f}s  mean MSE {last['mean']:.4f}  FD {last['fd']:.3f}/{last['fd_cnn']:.3f}  "
            f"share {last['share']:.2f}",
            flush=True,
        )

    failures = run_all(todo, path, args.workers, log)
    rows = load_rows(path, settings)
    # references of the digits that have runs (a partial report does not pre-train the others' bases)
    present = {**settings, "digits": [d for d in settings["digits"] if any(r.get("digit", 9) == d for r in rows)]}
    written = quality_report.write(
        rows, settings, references(present), out, command=command_line(args, settings), machine=machine_line()
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
        help="decide (the committed results): every baseline (AdamW, AdamW8bit, Prodigy, AdamW + Min-SNR 5) "
        "beside its LoliClustered counterpart at batch 1 and 2, the recommended configuration against AdamW at "
        "batch 4 and 8, UNet (eps, flow) and transformer (flow), held-out digits 9 3 6, 3 seeds, horizons 100 and "
        "400 (576 runs; --plan estimates the time of the missing ones from the finished ones); smoke: the same "
        "pipeline on digit 9, 2 seeds, 100 steps; "
        "options: LoliClustered's own options on the UNet (digit 9, 1000 steps); quick: 4 variants, 200 steps "
        "(~10 min). Default quick",
    )
    p.add_argument("--out", default="out/bench-quality", help="folder for the results (default out/bench-quality)")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: write the tables and plots from the finished runs already in --out (an interrupted or "
        "still-running benchmark's partial results; missing cells and seeds are marked)",
    )
    p.add_argument(
        "--plan",
        action="store_true",
        help="run nothing, write nothing: print the missing runs and their estimated time (from the CPU time of the "
        "finished runs in --out most like each one), with --max-hours the part that fits",
    )
    p.add_argument(
        "--max-hours",
        type=positive_float,
        metavar="H",
        help="run only the first missing runs (whole cells, in the profile's order) whose estimated time with "
        "--workers on idle cores fits H hours; the next command with the same settings goes on from there",
    )
    p.add_argument(
        "--reuse",
        nargs="+",
        metavar="JSONL",
        help="other results files whose finished runs with the same settings and evaluation are copied in instead "
        "of re-running them (the runs are deterministic: the same bits on the same CPU type and torch build)",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        help="runs in parallel, one CPU thread each (default 1; use at most the number of free cores)",
    )
    p.add_argument(
        "--backbones",
        nargs="+",
        choices=["unet", "dit"],
        help="unet (diffusers UNet2DModel) and/or dit (a tiny FluxTransformer2DModel on packed tokens, flow only)",
    )
    p.add_argument("--objectives", nargs="+", choices=["eps", "flow"], help="training objectives")
    p.add_argument(
        "--digits",
        type=digit,
        nargs="+",
        help="held-out digits: each gets its own base models (pre-trained on the other digits; made and cached "
        "on first use, except the shipped 9) and its own LoRA runs",
    )
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
