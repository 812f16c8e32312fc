"""loli-plugin: timestep-clustered optimizer states, one-cluster timestep sampling and the Loli loss.

Public API::

    from loli_plugin import LoliClustered, loli_loss, ClusterLossMonitor
    from loli_plugin.sampling import cluster_bounds, cluster_uniform
"""

from .clustered import LoliClustered
from .errors import LoliConfigError, LoliDependencyError, LoliError, LoliStateError
from .hookspecs import hookimpl
from .loss import DEFAULT_WEIGHTS, loli_loss, parse_loss_weights
from .monitor import ClusterLossMonitor
from .plugins import get_plugin_manager
from .schedule import ClusterSchedule

__version__ = "0.1.0"

__all__ = [
    "LoliClustered",
    "ClusterSchedule",
    "ClusterLossMonitor",
    "loli_loss",
    "parse_loss_weights",
    "DEFAULT_WEIGHTS",
    "hookimpl",
    "get_plugin_manager",
    "LoliError",
    "LoliConfigError",
    "LoliStateError",
    "LoliDependencyError",
]
