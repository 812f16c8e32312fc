"""What scripts/compat-matrix runs against a version of OneTrainer (scripts/compat_checks.py says how):
this folder's drift driver with a plain config and with LOLI_CLUSTERED (OneTrainer's closed optimizer
list is the only route). Constants only: read by the matrix without OneTrainer or torch."""

DRIVER = "drift_driver.py"
MODES = {
    "plain": {"optimizer": {"optimizer": "ADAMW"}, "learning_rate": 1e-2},
    "LOLI_CLUSTERED": {
        "optimizer": {"optimizer": "LOLI_CLUSTERED", "loli_inner": "ADAMW", "loli_clusters": 4},
        "learning_rate": 1e-2,
    },
}
#: _get_timestep_discrete draws integers in [0, 1000): one of 4 clusters spans at most 249
CLUSTER_SPAN = {"timesteps": 250}


def env(pinned: dict) -> dict:
    """OneTrainer imports mgds: the pinned export (``pinned``: {name in trainers.toml: its folder})."""
    return {"PYTHONPATH": str(pinned["mgds"] / "src")}
