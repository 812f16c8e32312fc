"""What scripts/compat-matrix runs against a version of musubi-tuner (scripts/compat_checks.py says how):
this folder's drift driver with a plain command line and with each way a user asks for LoliClustered.
Constants only: read by the matrix without musubi-tuner or torch."""

DRIVER = "drift_driver.py"
MODES = {
    "plain": ["--optimizer_type", "AdamW"],
    # the short name, with the Loli loss (README quick start)
    "LoliClustered": [
        "--optimizer_type",
        "LoliClustered",
        "--optimizer_args",
        "inner=AdamW",
        "clusters=4",
        "--loss_type",
        "loli",
    ],
    # musubi-tuner's own dotted-class route, which needs no patch to build the optimizer (issue 19: on
    # v0.2.15 it built LoliClustered and trained with musubi's stock timesteps)
    "loli_plugin.LoliClustered": [
        "--optimizer_type",
        "loli_plugin.LoliClustered",
        "--optimizer_args",
        "inner='AdamW'",
        "clusters=4",
    ],
}
#: one of 4 clusters of musubi's 1..1000 timesteps ("sigma" sampling through the scheduler's table)
CLUSTER_SPAN = {"timesteps": 251}
