"""What scripts/compat-matrix runs against a version of sd-scripts (scripts/compat_checks.py says how):
this folder's drift driver with a plain command line and with each way a user asks for LoliClustered.
Constants only: read by the matrix without sd-scripts or torch."""

DRIVER = "drift_driver.py"
MODES = {
    "plain": ["--optimizer_type", "AdamW", "--loss_type", "l2"],
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
    # sd-scripts' own dotted-class route, which needs no patch to build the optimizer
    "loli_plugin.LoliClustered": [
        "--optimizer_type",
        "loli_plugin.LoliClustered",
        "--optimizer_args",
        "inner='AdamW'",
        "clusters=4",
    ],
}
#: get_timesteps draws integers in [0, 1000): one of 4 clusters spans at most 249
CLUSTER_SPAN = {"sd_timesteps": 250}
