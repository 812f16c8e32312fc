"""pluggy hook specifications: the only contract between the core and anything that extends it.

Built-in behaviour is implemented as ordinary ``hookimpl`` functions (``loli_plugin.builtins``);
third-party packages add theirs through the ``loli_plugin`` entry-point group, exactly like
pytest plugins do.
"""

from __future__ import annotations

import pluggy

PROJECT = "loli_plugin"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def loli_inner_optimizers():
    """Return a mapping ``{name: loli_plugin.inner.InnerSpec}`` of inner optimizers this plugin offers.

    Names are matched case-insensitively. A spec only describes how to import the class, so
    listing an optimizer whose package is absent costs nothing until it is used.
    """


@hookspec
def loli_schedules():
    """Return a mapping ``{name: factory}``; ``factory(clusters, seed)`` returns a ``ClusterOrder``.

    A cluster order maps a step index to a cluster, deterministically, so that every rank of a
    distributed run agrees without communicating.
    """


@hookspec
def loli_loss_terms():
    """Return a mapping ``{name: term}`` of loss terms usable as keys of ``loli_loss`` weights.

    ``term(pred, target, dim)`` returns a tensor that broadcasts to ``pred``'s shape
    (reduction "none"); the loss multiplies it by the user's weight and sums the terms.
    """


@hookspec
def loli_trainer_adapters():
    """Return a list of ``loli_plugin.adapter.TrainerAdapter`` objects: one per trainer integration.

    An adapter declares the trainer modules it watches (a ``.watch`` manifest read at start-up), its
    patches (instrumentors with a scope), how a run activates and which features it needs; see
    ``loli_plugin.adapter`` and docs/development.md, "Adding a trainer". The adapters this package ships are
    registered through the same ``loli_plugin`` entry-point group as third-party ones.
    """


@hookspec
def loli_log(step, logs):
    """Called with the per-cluster loss logs (``{"loss/cluster_03": ..., ...}``) whenever a host asks
    ``ClusterLossMonitor.logs()``; implementations may forward them to their own loggers."""


@hookspec
def loli_optimizer_created(optimizer):
    """Called once when a ``LoliClustered`` is built, before it steps; for observers (a logger, a
    checkpoint tool). The trainer adapters get it first, through this same call
    (``TrainerAdapter.on_optimizer_created``): an observer sees the optimizer with its run started."""
