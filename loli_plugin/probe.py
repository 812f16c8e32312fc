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
from collections.abc import Callable

import torch

from .errors import LoliStateError
from .options import DEFAULT_CLUSTERS, check_clusters

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


@contextlib.contextmanager
def evaluating(*modules):
    """Every module given, with all its submodules, in eval mode for the block; afterwards each one
    gets back its own mode (a frozen base left in eval beside a LoRA in train stays exactly so)."""
    modes = {m: m.training for root in modules if root is not None for m in root.modules()}
    for root in modules:
        if root is not None:
            root.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


def reseed(seed: int) -> None:
    """Seed every generator a trainer draws its noise from (torch CPU and CUDA, numpy, Python)."""
    torch.manual_seed(seed)  # seeds the CUDA devices too
    random.seed(seed)
    try:
        import numpy
    except ImportError:
        return
    numpy.random.seed(seed % 2**32)


class ProbeCurves:
    """K values per probe, kept against the first probe's values; the shared part of every probe.

    ``measure(evaluate)`` calls ``evaluate(k)`` (the loss at cluster k's fixed timestep, per sample or
    a mean) for every k, under ``torch.no_grad()``, with ``modules`` in eval mode, every random state
    reseeded with ``seed`` before each k (so noise drawn by the host's own code is the same at every
    probe) and put back afterwards (so the training run draws exactly what it would have drawn)."""

    def __init__(self, clusters: int, seed: int = 0, prefix: str = "probe"):
        self.clusters = check_clusters(clusters)
        self.seed, self.prefix = int(seed), prefix
        self.reference: list[float] | None = None

    def measure(self, evaluate: Callable[[int], torch.Tensor], modules=(), reduce=None) -> dict[str, float]:
        with preserved_rng(), torch.no_grad(), evaluating(*modules):
            losses = []
            for k in range(self.clusters):
                reseed(self.seed)
                losses.append(evaluate(k).detach().float().mean())
            values = torch.stack(losses)
            if reduce is not None:  # e.g. the mean over the ranks of a distributed run
                values = reduce(values)
            values = values.cpu().tolist()  # one device sync for all K
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
        return {"format": FORMAT, "clusters": self.clusters, "seed": self.seed, "reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        if state.get("format") != FORMAT or state.get("clusters") != self.clusters:
            raise LoliStateError(
                f"saved progress probe has format {state.get('format')!r} and clusters={state.get('clusters')!r}; "
                f"this one format {FORMAT}, clusters={self.clusters}: resume with the same clusters"
            )
        self.seed = int(state.get("seed", self.seed))
        self.reference = None if state["reference"] is None else [float(v) for v in state["reference"]]


class ProgressProbe(ProbeCurves):
    """For a plain PyTorch loop: ``ProgressProbe(samples, distribution, clusters)``; call
    ``probe(loss_fn, model)`` every N steps. The fixed noise is drawn here, once; ``loss_fn(samples,
    noise, timesteps) -> per-sample loss`` runs the loop's own forward, target and loss."""

    def __init__(
        self,
        samples: torch.Tensor,
        distribution,
        clusters: int = DEFAULT_CLUSTERS,
        seed: int = 0,
        prefix: str = "probe",
    ):
        timesteps = midpoint_timesteps(distribution, clusters)
        super().__init__(len(timesteps), seed, prefix)
        self.timesteps = timesteps
        self.samples = samples.detach().clone()
        # seeded on the CPU and moved: the same noise whatever device the samples live on
        noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
        self.noise = noise.to(device=samples.device, dtype=samples.dtype)

    def __call__(
        self, loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], model=None
    ) -> dict[str, float]:
        """Run the probe; returns ``{"probe/cluster_00": ..., "probe/mean": ..., "probe/normalized": ...}``."""
        n = len(self.samples)
        return self.measure(
            lambda k: loss_fn(self.samples, self.noise, self.timesteps[k].to(self.samples.device).expand(n)),
            modules=(model,) if model is not None else (),
        )

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "timesteps": self.timesteps.cpu(),
            "samples": self.samples.cpu(),
            "noise": self.noise.cpu(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Take over a saved probe: its samples, noise, timesteps and first-probe values."""
        super().load_state_dict(state)
        device = self.samples.device
        self.timesteps = state["timesteps"].clone()
        self.samples = state["samples"].to(device)
        self.noise = state["noise"].to(device)


class TrainerProbe(ProbeCurves):
    """The probe inside a host trainer (kohya, OneTrainer): it keeps the host's own prepared batches,
    taken once from the first training steps (``keep``), and every ``every`` optimizer steps measures
    the host's own forward and loss on them for each cluster (``run``; the host's sampler, told the
    cluster, draws the cluster's midpoint through its own transform, and its noise is fixed by the
    reseed). ``state_dict`` holds the batches, the first values and the step count, so the curves
    continue after a resume."""

    def __init__(self, clusters: int, every: int, samples: int, seed: int = 0, prefix: str = "probe"):
        super().__init__(clusters, seed, prefix)
        if every < 1 or samples < 1:
            raise ValueError(f"progress probe: every={every} and samples={samples} must be >= 1")
        self.every, self.samples = int(every), int(samples)
        self.batches: list = []
        self.kept = 0  # samples in the kept batches
        self.steps = 0  # optimizer steps seen
        self.last: int | None = None  # the step of the last probe
        self.pending: dict[str, float] = {}

    def wants(self) -> bool:
        return self.kept < self.samples

    def keep(self, batch, size: int) -> None:
        """Keep a detached copy of one of the host's training batches (``size`` samples)."""
        self.batches.append(_copy(batch))
        self.kept += int(size)

    def due(self) -> bool:
        """Samples are kept, ``every`` steps have passed since the last probe, and its values were logged
        (a host logs once per step: a second probe before that would replace the first unseen)."""
        return (
            bool(self.batches)
            and not self.wants()
            and not self.pending
            and (self.last is None or self.steps - self.last >= self.every)
        )

    def run(self, evaluate: Callable[[object, int], torch.Tensor], modules=(), reduce=None) -> dict[str, float]:
        """``evaluate(batch, k)``: the host's loss on one kept batch at cluster k's timestep."""
        logs = self.measure(
            lambda k: torch.stack([evaluate(b, k).detach().float().mean() for b in self.batches]).mean(),
            modules,
            reduce,
        )
        self.last = self.steps
        self.pending = logs
        return logs

    def take_logs(self) -> dict[str, float]:
        """The values of the last probe, once (the host logs them at its next log call)."""
        logs, self.pending = self.pending, {}
        return logs

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "every": self.every,
            "samples": self.samples,
            "steps": self.steps,
            "last": -1 if self.last is None else self.last,
            "kept": self.kept,
            "batches": _copy(self.batches, "cpu"),
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.steps, self.kept = int(state["steps"]), int(state["kept"])
        self.last = None if int(state["last"]) < 0 else int(state["last"])
        self.batches = list(state["batches"])


def to_device(value, device):
    """A batch with its tensors on ``device`` (containers rebuilt; the same tensor where it is there already);
    ``device=None``: the batch itself."""
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def _copy(value, device=None):
    """A detached copy of a batch: tensors cloned (to ``device`` if given), containers rebuilt."""
    if isinstance(value, torch.Tensor):
        return value.detach().to(device, copy=True) if device is not None else value.detach().clone()
    if isinstance(value, dict):
        return {k: _copy(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v, device) for v in value)
    return value
