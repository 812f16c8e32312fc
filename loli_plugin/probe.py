"""Progress probe: the training loss at K fixed timesteps, on fixed samples, with fixed noise.

A training loss moves with the timesteps, the samples and the noise each step drew, so even a
per-cluster EMA of it is noisy. The probe holds all three still: K timesteps, one per cluster (the
quantile midpoint ``Q((k + 0.5) / K)`` of the run's own timestep distribution), a small set of
samples taken once, and noise seeded once. Between two probes only the weights change, so its
curves are smooth, and a falling ``probe/cluster_KK`` means the model fits those samples better at
that noise level.

Trainer-agnostic: the host hands over the samples (latents, as it prepared them) and a
``loss_fn(samples, noise, timesteps) -> per-sample loss`` that runs its own forward, target and loss
weighting; fixed conditioning for those samples lives with the host's ``loss_fn``. The
probe calls it under ``torch.no_grad()``, with the model in eval mode when given, and puts back every
random-number state (torch CPU and CUDA, numpy, Python's ``random``) afterwards, so the training
run draws exactly what it would have drawn without the probe.

Logs: ``probe/cluster_KK``, ``probe/mean`` and ``probe/normalized`` (mean over clusters of each
cluster's value / its value at the first probe: exactly 1.0 at the first probe).
``state_dict()`` keeps the samples, noise, timesteps and first-probe values, so a resumed run
continues the same curves.
"""

from __future__ import annotations

import contextlib
import random
from typing import Callable

import torch

from .errors import LoliStateError
from .options import check_clusters

FORMAT = 1


def midpoint_timesteps(distribution, clusters: int) -> torch.Tensor:
    """``Q((k + 0.5) / K)`` for k < K: each cluster's quantile midpoint. ``distribution`` is a
    ``loli_plugin.sampling`` distribution (its cluster count is checked against its admissible
    values) or a quantile function ``Q(u)``. Continuous values come as the default float dtype,
    integer ones as int64, like the distribution's own draws."""
    if hasattr(distribution, "check_clusters"):
        clusters = distribution.check_clusters(clusters)
    else:
        clusters = check_clusters(clusters)
    quantile = getattr(distribution, "quantile", distribution)
    t = quantile((torch.arange(clusters, dtype=torch.float64) + 0.5) / clusters)
    return t.to(torch.get_default_dtype()) if t.is_floating_point() else t.long()


@contextlib.contextmanager
def preserved_rng():
    """Put back torch (CPU and every initialised CUDA device), numpy and Python random states."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    py = random.getstate()
    try:
        import numpy
    except ImportError:  # numpy is optional for the plugin
        numpy = None
    np_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        random.setstate(py)
        if numpy is not None:
            numpy.random.set_state(np_state)


class ProgressProbe:
    """``ProgressProbe(samples, distribution, clusters)``; call ``probe(loss_fn, model)`` every N steps."""

    def __init__(self, samples: torch.Tensor, distribution, clusters: int = 10, seed: int = 0, prefix: str = "probe"):
        self.timesteps = midpoint_timesteps(distribution, clusters)
        self.clusters = len(self.timesteps)
        self.samples = samples.detach().clone()
        # seeded on the CPU and moved: the same noise whatever device the samples live on
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        self.noise = noise.to(device=samples.device, dtype=samples.dtype)
        self.prefix = prefix
        self.reference: list[float] | None = None

    def __call__(self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], model=None) -> dict[str, float]:
        """Run the probe; returns ``{"probe/cluster_00": ..., "probe/mean": ..., "probe/normalized": ...}``."""
        training = model.training if model is not None else None
        if model is not None:
            model.eval()
        try:
            with preserved_rng(), torch.no_grad():
                n = len(self.samples)
                losses = [loss_fn(self.samples, self.noise, t.to(self.samples.device).expand(n)).float().mean()
                          for t in self.timesteps]
                values = torch.stack(losses).cpu().tolist()  # one device sync for all K
        finally:
            if model is not None:
                model.train(training)
        if self.reference is None:
            self.reference = values
        return self.logs(values)

    def logs(self, values: list[float]) -> dict[str, float]:
        width = max(2, len(str(self.clusters - 1)))
        out = {f"{self.prefix}/cluster_{k:0{width}d}": v for k, v in enumerate(values)}
        out[f"{self.prefix}/mean"] = sum(values) / len(values)
        ratios = [v / r for v, r in zip(values, self.reference) if r > 0]
        if ratios:
            out[f"{self.prefix}/normalized"] = sum(ratios) / len(ratios)
        return out

    def state_dict(self) -> dict:
        return {"format": FORMAT, "clusters": self.clusters, "timesteps": self.timesteps.cpu(), "samples": self.samples.cpu(),
                "noise": self.noise.cpu(), "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        """Take over a saved probe: its samples, noise, timesteps and first-probe values."""
        if state.get("format") != FORMAT or state.get("clusters") != self.clusters:
            raise LoliStateError(f"saved progress probe has format {state.get('format')!r} and clusters={state.get('clusters')!r}; "
                                 f"this one format {FORMAT}, clusters={self.clusters}: resume with the same clusters")
        device = self.samples.device
        self.timesteps = state["timesteps"].clone()
        self.samples = state["samples"].to(device)
        self.noise = state["noise"].to(device)
        self.reference = None if state["reference"] is None else [float(v) for v in state["reference"]]
