"""The state of one Loli training run inside a host trainer, shared by every trainer adapter: which
optimizer drives the clusters, which cluster the last training draw came from, the per-cluster loss
monitor, the progress probe and the validation (all carried in the optimizer's state_dict, so the
host's own save/resume carries them)."""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass, field

import torch

from .errors import LoliConfigError


@dataclass
class LoliRun:
    clusters: int = 1
    stratify: bool = False
    optimizer_ref: object = field(default=None, repr=False)
    monitor: object = field(default=None, repr=False)
    drawn_cluster: int | None = None
    #: the progress probe (loli_plugin.probe.TrainerProbe), or None
    probe: object = field(default=None, repr=False)
    #: the validation on held-out data (loli_plugin.validation.Validation), or None
    validation: object = field(default=None, repr=False)
    #: while the probe or the validation measures: the cluster whose fixed timestep the host's sampler must draw
    probe_cluster: int | None = None
    #: where in that cluster's quantile slice: 0.5, its midpoint (the measurement); near 0 and 1, its edges
    probe_position: float = 0.5
    #: the host's timestep of the last fixed draw, as its sampler noted it (``note_timesteps``)
    probe_timestep: float | None = None
    #: the weights of the Loli loss's terms; None: the trainer's own loss
    loss_weights: dict | None = None
    #: the trainer's options for this run (its parsed arguments or config object)
    config: object = field(default=None, repr=False)
    #: called once, at the first training draw: after the trainer has prepared its model and optimizer (with
    #: accelerate: after ``accelerator.prepare``), before the first step; for checks and bindings that need them
    before_first_draw: object = field(default=None, repr=False)

    @classmethod
    def for_optimizer(cls, optimizer, **kwargs) -> LoliRun:
        """A run whose timesteps follow ``optimizer``'s clusters, with a loss monitor carried in its state."""
        from .monitor import ClusterLossMonitor

        run = cls(clusters=optimizer.clusters, stratify=True, optimizer_ref=weakref.ref(optimizer), **kwargs)
        run.monitor = ClusterLossMonitor(optimizer.clusters)
        attach_monitor_state(optimizer, run.monitor)
        return run

    @property
    def optimizer(self):
        return self.optimizer_ref() if self.optimizer_ref is not None else None

    def take_cluster(self) -> int:
        """The cluster of the optimizer step being accumulated, for a training draw.

        The loss of the same micro-batch (the next recorded loss) is filed under it.
        """
        opt = self.optimizer
        if opt is None:
            raise LoliConfigError(
                "the LoliClustered optimizer of this run is gone; timesteps cannot follow its clusters"
            )
        if self.before_first_draw is not None:
            first, self.before_first_draw = self.before_first_draw, None
            first()
        self.drawn_cluster = opt.current_cluster
        return self.drawn_cluster

    def untracked_draw(self) -> None:
        """A draw handed to the trainer (validation): its loss must not enter the per-cluster history."""
        self.drawn_cluster = None

    @contextlib.contextmanager
    def probing(self, k: int, position: float = 0.5):
        """The probe or the validation measures cluster k: the host's sampler draws the quantile
        ``(k + position) / K`` of its own distribution (the midpoint by default); no loss is recorded."""
        self.probe_cluster, self.probe_position, self.probe_timestep, self.drawn_cluster = k, position, None, None
        try:
            yield
        finally:
            self.probe_cluster, self.probe_position, self.drawn_cluster = None, 0.5, None

    def fixed_quantile(self) -> float:
        """The quantile a fixed draw takes: ``(k + position) / K`` of cluster k being measured."""
        return (self.probe_cluster + self.probe_position) / self.clusters

    def note_timesteps(self, timesteps) -> None:
        """A sampler's fixed draw (every sample has the same timestep): kept for the validation's record."""
        if self.probe_cluster is not None and isinstance(timesteps, torch.Tensor) and timesteps.numel():
            self.probe_timestep = float(timesteps.detach().reshape(-1)[0])

    def describe(self) -> list[str]:
        """What the run does, one phrase per feature (the adapter joins them into its start-up line)."""
        parts = (self.describe_optimizer(), self.describe_loss(), self.describe_probe(), self.describe_validation())
        return [part for part in parts if part]

    def describe_optimizer(self) -> str | None:
        opt = self.optimizer
        if opt is None:
            return None
        return (
            f"LoliClustered(inner={opt.inner_name}, clusters={opt.clusters}, schedule={opt.schedule.strategy}); "
            "timesteps drawn from one cluster per optimizer step"
        )

    def describe_loss(self) -> str | None:
        if self.loss_weights is None:
            return None
        return "loss_type=loli(" + ",".join(f"{k}={v:g}" for k, v in self.loss_weights.items()) + ")"

    def describe_probe(self) -> str | None:
        if self.probe is None:
            return None
        probe = self.probe
        return f"progress probe: {probe.clusters} timesteps on {probe.samples} samples every {probe.every} steps"

    def describe_validation(self) -> str | None:
        if self.validation is None:
            return None
        return f"validation: {self.validation.clusters} timesteps on {self.validation.where}"

    def logs(self) -> dict[str, float]:
        """The run's scalars for the host's trackers: per-cluster losses, normalized, current cluster, and
        the last probe's and the last validation's values once."""
        logs = self.monitor.logs() if self.monitor is not None else {}
        if self.probe is not None:
            logs.update(self.probe.take_logs())
        if self.validation is not None:
            logs.update(self.validation.take_logs())
        return logs

    def record_loss(self, loss) -> None:
        """Record a training micro-batch's loss under its cluster (no device sync: the monitor keeps the tensor)."""
        if self.monitor is not None and self.drawn_cluster is not None and torch.is_grad_enabled():
            self.monitor.update(self.drawn_cluster, loss.detach().float().mean())
        self.drawn_cluster = None


def attach_monitor_state(optimizer, monitor, key: str = "loli_monitor") -> None:
    """Carry the loss monitor (or the probe: anything with ``clusters`` and a state_dict) inside the
    optimizer's state_dict; the trainers' save/resume of the optimizer state then carries it together
    with the cluster banks. Any torch optimizer has these hooks, so a probe rides in AdamW's state too."""

    def save(opt, state_dict):
        state_dict[key] = monitor.state_dict()
        return state_dict

    def load(opt, state_dict):
        saved = state_dict.pop(key, None)
        if saved is not None and saved.get("clusters") == monitor.clusters:
            monitor.load_state_dict(saved)
        return state_dict

    optimizer.register_state_dict_post_hook(save)
    optimizer.register_load_state_dict_pre_hook(load)


def count_steps(optimizer, probe, after_step) -> None:
    """Count the optimizer's steps for the probe (a step skipped by a GradScaler or by DeepSpeed is not one)
    and call ``after_step()`` after each. A LoliClustered says itself when a step is complete (DeepSpeed
    ZeRO calls its ``step()`` once per param group or sub-group); any other optimizer, after its ``step()``."""

    def done(*_):
        count_probe_step(probe, after_step)

    if hasattr(optimizer, "register_step_complete_hook"):
        optimizer.register_step_complete_hook(done)
    else:
        optimizer.register_step_post_hook(done)


def count_probe_step(probe, after_step) -> None:
    """One optimizer step for the probe: counted, then ``after_step()`` (from an optimizer's hook, or after a
    DeepSpeed engine's own step: ``loli_plugin.deepspeed.after_engine_step``)."""
    probe.steps += 1
    after_step()
