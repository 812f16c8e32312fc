"""The grid of ``bench quality``: its variants, the baselines users run and their LoliClustered
counterparts, its profiles, and the runs a profile plans, in their order. Read by ``quality`` (which
runs them) and ``quality_report`` (which reports them), so neither imports the other."""

from __future__ import annotations

CSM = "AdamWClusteredSecondMoment"

# A variant: ``optimizer`` (a name LoliClustered's ``inner=`` accepts; alone when ``clusters`` is absent,
# else LoliClustered(inner=optimizer, clusters=..., **options), which also draws each step's timesteps
# from one cluster); ``sampler``: a plain optimizer drawing one cluster per step too; ``loss``: "mse"
# (the trainers' default) or "loli"; ``weighting``: "min_snr" (sd-scripts' --min_snr_gamma 5, epsilon
# prediction only); ``objectives``: where it applies (default everywhere).
VARIANTS = {
    # the baselines users run
    "AdamW": dict(optimizer="AdamW"),
    "AdamW8bit": dict(optimizer="AdamW8bit"),
    "Prodigy": dict(optimizer="Prodigy"),
    "AdamW + Min-SNR 5": dict(optimizer="AdamW", weighting="min_snr", objectives=("eps",)),
    # each one's LoliClustered counterpart: the recommended configuration (K=10, one cluster per step,
    # Loli loss) with the baseline's optimizer as the inner one, or with its weighting
    "Loli K=10 + loli loss": dict(optimizer="AdamW", clusters=10, loss="loli"),
    "Loli AdamW8bit K=10 + loli loss": dict(optimizer="AdamW8bit", clusters=10, loss="loli"),
    "Loli Prodigy K=10 + loli loss": dict(optimizer="Prodigy", clusters=10, loss="loli"),
    "Loli K=10 + loli loss + Min-SNR 5": dict(
        optimizer="AdamW", clusters=10, loss="loli", weighting="min_snr", objectives=("eps",)
    ),
    # the options compared before (profile "options")
    "AdamW + sampler": dict(optimizer="AdamW", sampler=True),
    "Loli K=5": dict(optimizer="AdamW", clusters=5),
    "Loli K=10": dict(optimizer="AdamW", clusters=10),
    "Loli CSM K=10": dict(optimizer=CSM, clusters=10),
    "Loli CSM K=10 normalized": dict(optimizer=CSM, clusters=10, options={"momentum": "normalized"}),
    "Loli K=10 beta_horizon": dict(optimizer="AdamW", clusters=10, options={"beta_horizon": True}),
    "Loli K=10 warm_start": dict(optimizer="AdamW", clusters=10, options={"warm_start": True}),
    "AdamW + loli loss": dict(optimizer="AdamW", loss="loli"),
    # candidates for the moonshot (profile "moonshot"): what the architecture allows beyond the defaults
    "Loli K=5 + loli loss": dict(optimizer="AdamW", clusters=5, loss="loli"),
    "Loli K=20 + loli loss": dict(optimizer="AdamW", clusters=20, loss="loli"),
    "Loli CSM K=10 normalized + loli loss": dict(
        optimizer=CSM, clusters=10, loss="loli", options={"momentum": "normalized"}
    ),
    "Loli K=10 + loli loss warm_start": dict(optimizer="AdamW", clusters=10, loss="loli", options={"warm_start": True}),
    "Loli Prodigy K=10 + loli loss warm_start": dict(
        optimizer="Prodigy", clusters=10, loss="loli", options={"warm_start": True}
    ),
    # Prodigy with one d for all clusters (loli_plugin.prodigy_shared_d), the moments per cluster
    "Loli ProdigySharedD K=10 + loli loss": dict(optimizer="ProdigySharedD", clusters=10, loss="loli"),
    # per-cluster loss normalisation (loli_plugin.weighting, EDM2's uncertainty weight at its optimum): on a
    # single AdamW state with one cluster per step, and inside LoliClustered
    "AdamW + sampler + cluster norm": dict(optimizer="AdamW", sampler=True, weighting="cluster_norm"),
    "Loli K=10 + loli loss + cluster norm": dict(optimizer="AdamW", clusters=10, loss="loli", weighting="cluster_norm"),
}
# Each baseline and its LoliClustered counterpart; every comparison in the report pairs them on the same seeds.
BASELINES = {
    "AdamW": "Loli K=10 + loli loss",
    "AdamW8bit": "Loli AdamW8bit K=10 + loli loss",
    "Prodigy": "Loli Prodigy K=10 + loli loss",
    "AdamW + Min-SNR 5": "Loli K=10 + loli loss + Min-SNR 5",
}
RECOMMENDED = "Loli K=10 + loli loss"
CANDIDATE = "Loli CSM K=10 normalized + loli loss"  # the moonshot screening's best (docs/bench/moonshot)

# The candidates for the default in the options comparison, and what separates their parts: "AdamW +
# sampler" (the sampler alone), "AdamW + loli loss" (the loss alone).
OPTION_VARIANTS = [
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
PAIRED_VARIANTS = [v for pair in BASELINES.items() for v in pair]
MOONSHOT_VARIANTS = [
    "Loli K=5 + loli loss",
    "Loli K=20 + loli loss",
    "Loli CSM K=10 normalized + loli loss",
    "Loli K=10 + loli loss warm_start",
    "Loli Prodigy K=10 + loli loss warm_start",
    "Loli ProdigySharedD K=10 + loli loss",
    "AdamW + sampler + cluster norm",
    "Loli K=10 + loli loss + cluster norm",
]
SETUPS = [("unet", "eps"), ("unet", "flow"), ("dit", "flow")]
PROFILES = {
    # the committed results in docs/bench: every baseline beside its counterpart at the small batches of
    # LoRA training, the recommended configuration against AdamW at batch 4 and 8 too, on both backbones,
    # three held-out digits, 3 paired seeds
    "decide": dict(
        backbones=["unet", "dit"],
        objectives=["eps", "flow"],
        digits=[9, 3, 6],
        # the AdamW8bit pair last (phase 1): bitsandbytes' 8-bit kernels cost about as much CPU per step as
        # the whole tiny model, so these runs cost twice the others; an interrupted profile misses them first
        # and the moonshot screening's best candidate (CSM normalized + Loli loss) on the whole small-batch grid,
        # then at batch 4 and 8 (phase 2), so that the rule can judge it like the recommended configuration
        grids=[
            dict(batch=[1, 2], variants=[v for v in PAIRED_VARIANTS if "AdamW8bit" not in v] + [CANDIDATE]),
            dict(batch=[4, 8], variants=["AdamW", RECOMMENDED]),
            dict(batch=[1, 2], variants=["AdamW", *[v for v in PAIRED_VARIANTS if "AdamW8bit" in v]], phase=1),
            dict(batch=[4, 8], variants=["AdamW", CANDIDATE], phase=2),
        ],
        lr=[1e-3],
        seeds=[0, 1, 2],
        horizons=[100, 400],
        samples=64,
        sample_steps=30,
    ),
    # the same questions on one digit, one seed pair less and shorter runs: a smoke test of the whole
    # pipeline (about 15 minutes with --workers 2 on 2 idle cores)
    "smoke": dict(
        backbones=["unet", "dit"],
        objectives=["eps", "flow"],
        digits=[9],
        grids=[dict(batch=[2], variants=PAIRED_VARIANTS), dict(batch=[8], variants=["AdamW", RECOMMENDED])],
        lr=[1e-3],
        seeds=[0, 1],
        horizons=[50, 100],
        samples=32,
        sample_steps=10,
    ),
    # the moonshot candidates beside every baseline and its counterpart, on decide's digit-9 batch-2 cells
    # (same evaluation, so `--reuse docs/bench/quality.jsonl` takes decide's finished runs instead of
    # re-running them); a candidate that clears batch 2 is then run on the rest of decide's grid
    "moonshot": dict(
        backbones=["unet", "dit"],
        objectives=["eps", "flow"],
        digits=[9],
        grids=[dict(batch=[2], variants=PAIRED_VARIANTS + MOONSHOT_VARIANTS)],
        lr=[1e-3],
        seeds=[0, 1, 2],
        horizons=[100, 400],
        samples=64,
        sample_steps=30,
    ),
    # the option variants of LoliClustered itself (the earlier decide profile: UNet, digit 9, 1000 steps)
    "options": dict(
        backbones=["unet"],
        objectives=["eps", "flow"],
        digits=[9],
        grids=[dict(batch=[1, 2], variants=OPTION_VARIANTS)],
        lr=[1e-3],
        seeds=[0, 1, 2],
        horizons=[200, 1000],
        samples=64,
        sample_steps=30,
    ),
    # the same questions on fewer cells: about 10 minutes with --workers 2 on 2 cores
    "quick": dict(
        backbones=["unet"],
        objectives=["eps", "flow"],
        digits=[9],
        grids=[dict(batch=[2, 8], variants=["AdamW", "Loli K=10", "Loli CSM K=10", "Loli CSM K=10 normalized"])],
        lr=[3e-3],
        seeds=[0, 1, 2],
        horizons=[200],
        samples=64,
        sample_steps=30,
    ),
}
SETTINGS = ("backbones", "objectives", "digits", "lr", "seeds", "horizons", "samples", "sample_steps")


def applies(variant_name: str, backbone: str, objective: str) -> bool:
    """Whether a variant runs on this backbone and objective (Min-SNR: epsilon prediction only)."""
    from .backbones import BACKBONES

    wanted = VARIANTS[variant_name].get("objectives")
    return objective in BACKBONES[backbone].objectives and (wanted is None or objective in wanted)


def run_key(row: dict) -> tuple:
    return (
        row.get("digit", 9),
        row.get("backbone", "unet"),
        row["objective"],
        row["variant"],
        row["batch"],
        float(row["lr"]),
        row["seed"],
    )


def job_key(job: dict) -> tuple:
    return (
        job["digit"],
        job["backbone_name"],
        job["objective_name"],
        job["variant_name"],
        job["batch"],
        float(job["lr"]),
        job["seed"],
    )


def setups(settings: dict) -> list[tuple[str, str]]:
    """The (backbone, objective) pairs of the settings: every backbone with each objective it trains with
    (the transformer: flow matching only)."""
    from .backbones import BACKBONES

    return [(b, o) for b in settings["backbones"] for o in settings["objectives"] if o in BACKBONES[b].objectives]


def planned(settings: dict) -> list[dict]:
    """Every run of the settings once, phase by phase (a grid's ``phase``, default 0), in each phase digit
    by digit (each digit's grids in order), in whole cells (all variants and seeds of one lr, batch,
    backbone and objective together), so an interrupted benchmark leaves complete cells and complete
    digits behind, the first digit's first."""
    jobs = [
        dict(
            digit=d,
            backbone_name=b,
            objective_name=o,
            variant_name=v,
            batch=batch,
            lr=lr,
            seed=s,
            horizons=settings["horizons"],
            samples=settings["samples"],
            sample_steps=settings["sample_steps"],
        )
        for phase in sorted({g.get("phase", 0) for g in settings["grids"]})
        for d in settings["digits"]
        for grid in settings["grids"]
        if grid.get("phase", 0) == phase
        for lr in settings["lr"]
        for batch in grid["batch"]
        for b, o in setups(settings)
        for s in settings["seeds"]
        for v in grid["variants"]
        if applies(v, b, o)
    ]
    unique = {job_key(j): j for j in reversed(jobs)}  # a run two grids share (AdamW) runs where it comes first
    return [j for j in jobs if unique.pop(job_key(j), None) is j]
