"""Cluster sampling: draw a step's timesteps from one equal-probability slice of the trainer's own
timestep distribution.

``cluster_bounds``/``cluster_uniform`` handle the bins of ``[0, 1)``; the distribution classes
supply quantile functions for the families kohya sd-scripts, OneTrainer and diffusers use.
"""

from .bins import check_cluster_index, cluster_bounds, cluster_uniform
from .distributions import (
    MODE_SCALE_MAX,
    CosMap,
    Discrete,
    DiscreteUniform,
    Discretized,
    LogitNormal,
    Mapped,
    ModeScale,
    Shift,
    TimeShift,
    TimestepDistribution,
    Uniform,
)

__all__ = [
    "MODE_SCALE_MAX",
    "CosMap",
    "Discrete",
    "DiscreteUniform",
    "Discretized",
    "LogitNormal",
    "Mapped",
    "ModeScale",
    "Shift",
    "TimeShift",
    "TimestepDistribution",
    "Uniform",
    "check_cluster_index",
    "cluster_bounds",
    "cluster_uniform",
]
