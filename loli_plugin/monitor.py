"""Per-cluster training-loss tracking.

A raw diffusion loss mostly says which timesteps a batch drew, so its curve is noise. Within one
cluster the timesteps are alike and the loss is comparable over time. The monitor keeps, per
cluster, an exponential moving average (EMA) and a count, and derives ``loss/normalized``:

    reference_k  = mean of the first ``warmup`` losses seen in cluster k
    normalized   = mean over clusters with a reference of  EMA_k / reference_k

Each cluster's loss is divided by its own starting level, so a high-noise cluster's large loss and
a low-noise cluster's small one count alike; the ratio starts near 1 and falls as training makes
progress, whichever cluster the last step drew.

It is cheap: ``update()`` only keeps the detached loss tensor. Values are read from the device in
one batch when ``logs()`` is called, i.e. at the host's own logging cadence, where the host
already synchronises to print or log its loss.
"""

from __future__ import annotations

import math

import torch

from .options import DEFAULT_CLUSTERS, check_clusters


class ClusterLossMonitor:
    def __init__(self, clusters: int = DEFAULT_CLUSTERS, ema: float = 0.9, warmup: int = 3, prefix: str = "loss"):
        self.clusters = check_clusters(clusters)
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        if warmup < 1:
            raise ValueError(f"warmup must be >= 1, got {warmup}")
        self.ema_decay, self.warmup, self.prefix = ema, int(warmup), prefix
        self.ema: list[float | None] = [None] * self.clusters
        self.count = [0] * self.clusters
        self._ref_sum = [0.0] * self.clusters
        self.last_cluster: int | None = None
        self.step = 0
        self._pending: list[tuple[int, torch.Tensor | float]] = []

    def update(self, cluster: int, loss) -> None:
        """Record one optimizer step's (or micro-batch's) loss for ``cluster``. No device sync."""
        if not 0 <= cluster < self.clusters:
            raise ValueError(f"cluster {cluster} outside [0, {self.clusters})")
        if isinstance(loss, torch.Tensor):
            loss = loss.detach()
            if loss.numel() != 1:
                loss = loss.float().mean()
        self._pending.append((cluster, loss))
        self.last_cluster = cluster
        self.step += 1

    def _flush(self) -> None:
        if not self._pending:
            return
        tensors = [v for _, v in self._pending if isinstance(v, torch.Tensor)]
        values = iter(torch.stack([t.float().reshape(()) for t in tensors]).cpu().tolist()) if tensors else iter(())
        for cluster, v in self._pending:
            value = next(values) if isinstance(v, torch.Tensor) else float(v)
            if not math.isfinite(value):
                continue  # a NaN step must not poison the cluster's history
            n = self.count[cluster]
            if n < self.warmup:
                self._ref_sum[cluster] += value
            prev = self.ema[cluster]
            self.ema[cluster] = value if prev is None else self.ema_decay * prev + (1.0 - self.ema_decay) * value
            self.count[cluster] = n + 1
        self._pending.clear()

    def reference(self, cluster: int) -> float | None:
        self._flush()
        n = min(self.count[cluster], self.warmup)
        if n < self.warmup:
            return None
        return self._ref_sum[cluster] / n

    def normalized(self) -> float | None:
        self._flush()
        ratios = []
        for k in range(self.clusters):
            ref = self.reference(k)
            if ref is not None and ref > 0 and self.ema[k] is not None:
                ratios.append(self.ema[k] / ref)
        return sum(ratios) / len(ratios) if ratios else None

    def logs(self) -> dict[str, float]:
        """``{"loss/cluster_03": EMA, ..., "loss/normalized": ..., "loli/cluster": last cluster}``."""
        self._flush()
        width = max(2, len(str(self.clusters - 1)))
        out: dict[str, float] = {}
        for k, value in enumerate(self.ema):
            if value is not None:
                out[f"{self.prefix}/cluster_{k:0{width}d}"] = value
        norm = self.normalized()
        if norm is not None:
            out[f"{self.prefix}/normalized"] = norm
        if self.last_cluster is not None:
            out["loli/cluster"] = float(self.last_cluster)
        from .plugins import get_plugin_manager

        get_plugin_manager().hook.loli_log(step=self.step, logs=out)
        return out

    def state_dict(self) -> dict:
        self._flush()
        return {
            "clusters": self.clusters,
            "ema": [v if v is not None else float("nan") for v in self.ema],
            "count": list(self.count),
            "ref_sum": list(self._ref_sum),
            "step": self.step,
            "last_cluster": -1 if self.last_cluster is None else self.last_cluster,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["clusters"] != self.clusters:
            raise ValueError(f"saved loss monitor has clusters={state['clusters']}, this one {self.clusters}")
        self.ema = [None if math.isnan(v) else float(v) for v in state["ema"]]
        self.count = [int(c) for c in state["count"]]
        self._ref_sum = [float(v) for v in state["ref_sum"]]
        self.step = int(state["step"])
        self.last_cluster = None if state["last_cluster"] < 0 else int(state["last_cluster"])
        self._pending.clear()
