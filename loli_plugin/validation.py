"""Per-cluster validation: the loss on held-out samples at one fixed timestep per cluster, with fixed noise.

The progress probe (``probe.py``) measures training samples it kept, so it shows fit: a LoRA that
memorises its images looks as good there as one that learns the concept. Validation is the same
measurement on samples the run never trains on: the trainer's own validation set (sd-scripts'
``--validation_split`` or validation datasets, OneTrainer's VALIDATION concepts, a second musubi-tuner
dataset config), through the trainer's own forward and loss, at each cluster's quantile midpoint
``Q((k + 0.5) / K)`` of the run's own timestep distribution (the trainer's sampler, told the cluster,
draws it through its own transform and shift, as for the probe).

* **Fixed noise.** Before each cluster of each held-out batch every random state is reseeded from the
  run's seed and a digest of the batch's content, so a held-out sample gets the same noise at every
  pass whatever order the trainer's loader hands the set over in; afterwards every random state (torch
  CPU and CUDA, numpy, Python) is put back, so training draws exactly what it would have drawn.
* **A pass** is ``add`` per held-out batch, then ``finish(step)``: per cluster the mean over the set's
  samples. The host calls it on the trainer's own validation schedule where it has one, or every
  ``every`` optimizer steps, and at the end of training.
* **Multi-GPU**: every rank measures its part of the set and hands ``reduce`` (the mean over ranks)
  in; the logged values are that mean.
* **Logs**: ``val/cluster_KK``, ``val/mean`` and ``val/normalized`` (mean over clusters of each
  cluster's value / its value at the first pass: exactly 1.0 at the first pass).
* **Comparability record** (``take_record``, once per run, logged as TensorBoard text under
  ``loli/validation``): K, the seed, each cluster's timesteps as the trainer drew them (at the lower
  edge, the midpoint and the upper edge of its quantile slice), the trainer's timestep options in
  words, and a fingerprint of the held-out set. ``loli-plugin compare`` refuses runs whose records
  differ in K, set or timesteps.
* ``state_dict()`` keeps the first values, the step of the last pass, the timesteps and the
  fingerprint, so a resumed run continues the same curves.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import torch

from .adapter import warn  # the plugin's one-line stderr report
from .errors import LoliStateError
from .probe import ProbeCurves, evaluating, preserved_rng, reseed

FORMAT = 1
PREFIX = "val"
#: the TensorBoard text tag of the comparability record
RECORD_TAG = "loli/validation"
#: where a cluster's edges are measured: (k + EDGE) / K and (k + 1 - EDGE) / K (the exact edges of some
#: distributions are infinite or outside the trainer's timestep table)
EDGE = 1e-3
#: batch keys whose tensor identifies a held-out batch (kohya, OneTrainer, musubi-tuner), first found wins
CONTENT_KEYS = ("latents", "latent_image", "images", "image")


def tensor_digest(tensor: torch.Tensor) -> int:
    """A 63-bit digest of a tensor's values (any dtype, any device)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def batch_digest(batch) -> int:
    """A digest of a held-out batch's content: its latents or images (``CONTENT_KEYS``), else every tensor."""
    if isinstance(batch, torch.Tensor):
        return tensor_digest(batch)
    if isinstance(batch, dict):
        for key in CONTENT_KEYS:
            if isinstance(batch.get(key), torch.Tensor):
                return tensor_digest(batch[key])
        tensors = [(str(k), v) for k, v in batch.items() if isinstance(v, torch.Tensor)]
        if tensors:
            joined = b"".join(k.encode() + tensor_digest(v).to_bytes(8, "little") for k, v in sorted(tensors))
            return int.from_bytes(hashlib.blake2b(joined, digest_size=8).digest(), "little") >> 1
    raise TypeError(f"cannot identify a held-out batch of type {type(batch).__name__} (no tensor in it)")


def fingerprint(digests) -> str:
    """The held-out set's fingerprint: independent of the order its batches came in."""
    joined = b"".join(d.to_bytes(8, "little") for d in sorted(digests))
    return "blake2b:" + hashlib.blake2b(joined, digest_size=8).hexdigest()


class Validation(ProbeCurves):
    """Validation inside a host trainer. ``every``: optimizer steps between two passes when the host
    has no schedule of its own (None: the host's own schedule decides). ``description``: the trainer's
    timestep options in words, for the comparability record; ``where``: what it measures and when, in
    words, for the run's start-up line."""

    def __init__(
        self,
        clusters: int,
        seed: int = 0,
        every: int | None = None,
        description: str = "",
        where: str = "held-out data",
    ):
        super().__init__(clusters, seed, PREFIX)
        if every is not None and every < 1:
            raise ValueError(f"validation: every={every} must be >= 1")
        self.every, self.description, self.where = every, description, where
        self.last: int | None = None  # the step of the last pass
        self.passes = 0
        #: per cluster [lower edge, midpoint, upper edge] in the trainer's own timestep units (first pass)
        self.timesteps: list[list[float]] | None = None
        self.set_fingerprint: str | None = None
        self.samples = 0  # held-out samples in the last pass
        self.pending: dict[str, float] = {}
        self._recorded = False
        #: one line on stderr per pass (its size and time); the wall and CPU seconds of the last pass and its
        #: forward passes (CPU time: the process's, which other jobs on a shared machine move less)
        self.report, self.seconds, self.cpu_seconds, self.forwards = True, 0.0, 0.0, 0
        self._reset_pass()

    # ------------------------------------------------------------------ schedule
    def due(self, step: int, final: bool = False) -> bool:
        """A pass is due at ``step``: every ``every`` steps (if set), or ``final`` (the end of training),
        unless this step was measured already."""
        if self.last == step:
            return False
        return final or (self.every is not None and step % self.every == 0)

    @property
    def in_pass(self) -> bool:
        return self._samples > 0

    def _reset_pass(self) -> None:
        self._sum: torch.Tensor | None = None
        self._samples = 0
        self._digests: list[int] = []
        self._forwards = 0  # the host's forward passes in this pass
        self._seconds = 0.0  # the time spent measuring in this pass
        self._cpu_seconds = 0.0  # the process's CPU time spent measuring in this pass

    def discard(self) -> None:
        """Forget a pass in progress (a rank that never logs it: the next pass starts clean)."""
        self._reset_pass()

    # ------------------------------------------------------------------ measuring
    def add(
        self,
        evaluate: Callable[[int, float, int], torch.Tensor],
        batch,
        size: int,
        modules=(),
        reduce=None,
        seen: Callable[[], float | None] | None = None,
    ) -> torch.Tensor:
        """Measure one held-out batch. ``evaluate(k, position, seed)``: the host's loss on it (per sample
        or a mean) with its sampler drawing the quantile ``(k + position) / K`` of its own distribution;
        every global random state is already reseeded with ``seed`` (a host whose noise generator is
        seeded otherwise seeds it with ``seed``); ``seen()``: the trainer's timestep of that draw (for
        the record); ``reduce``: the mean over ranks (every rank calls ``add`` as often). Returns the K
        values (on the device: no sync)."""
        started, cpu_started = time.perf_counter(), time.process_time()
        digest = batch_digest(batch)
        seed = (self.seed + digest) % 2**63
        measure_edges = self.timesteps is None and seen is not None and not self._digests
        with preserved_rng(), torch.no_grad(), evaluating(*modules):
            losses, middles = [], []
            for k in range(self.clusters):
                reseed(seed)
                losses.append(evaluate(k, 0.5, seed).detach().float().mean())
                middles.append(seen() if seen is not None else None)
            if measure_edges:  # once per run: the noise range of each cluster, as the trainer draws it
                edges = []
                for k in range(self.clusters):
                    low_high = []
                    for position in (EDGE, 1.0 - EDGE):
                        reseed(seed)
                        evaluate(k, position, seed)
                        low_high.append(seen())
                    edges.append(low_high)
                if all(v is not None for pair in edges for v in pair) and None not in middles:
                    self.timesteps = [[min(e), m, max(e)] for e, m in zip(edges, middles)]
                self._forwards += 2 * self.clusters
            values = torch.stack(losses)
            self._forwards += self.clusters
        if reduce is not None:
            values = reduce(values)
        weighted = values * int(size)
        self._sum = weighted if self._sum is None else self._sum + weighted
        self._samples += int(size)
        self._digests.append(digest)
        self._seconds += time.perf_counter() - started
        self._cpu_seconds += time.process_time() - cpu_started
        return values

    def finish(self, step: int) -> dict[str, float]:
        """End the pass: per cluster the mean over the held-out samples; the logs (also kept for
        ``take_logs``)."""
        if not self.in_pass:
            return {}
        values = (self._sum / self._samples).cpu().tolist()  # one device sync per pass
        self.seconds, self.cpu_seconds, self.forwards = self._seconds, self._cpu_seconds, self._forwards
        if self.report:
            warn(
                f"validation at step {step}: {self.clusters} timesteps x {self._samples} held-out samples "
                f"({self._forwards} forward passes) in {self._seconds:.1f} s ({self._cpu_seconds:.1f} s CPU)"
            )
        found = fingerprint(self._digests)
        if self.set_fingerprint is not None and found != self.set_fingerprint:
            warn(
                f"the validation set changed ({self.set_fingerprint} -> {found}); val/normalized starts again "
                "from this pass"
            )
            self.reference = None
        self.set_fingerprint = found
        if self.reference is None:
            self.reference = values
        self.samples, self.last = self._samples, int(step)
        self.passes += 1
        self._reset_pass()
        self.pending = self.logs(values)
        return self.pending

    def take_logs(self) -> dict[str, float]:
        """The values of the last pass, once."""
        logs, self.pending = self.pending, {}
        return logs

    # ------------------------------------------------------------------ comparability
    def record(self) -> dict:
        return {
            "format": FORMAT,
            "clusters": self.clusters,
            "seed": self.seed,
            "timesteps": self.timesteps,
            "distribution": self.description,
            "validation_set": self.set_fingerprint,
            "samples": self.samples,
        }

    def take_record(self) -> str | None:
        """The comparability record as JSON, once per process, after the first pass."""
        if self._recorded or self.set_fingerprint is None:
            return None
        self._recorded = True
        return json.dumps(self.record(), sort_keys=True)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "kind": "validation",
            "every": self.every,
            "last": -1 if self.last is None else self.last,
            "passes": self.passes,
            "timesteps": self.timesteps,
            "validation_set": self.set_fingerprint,
            "samples": self.samples,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind") != "validation":
            raise LoliStateError("the saved state is not a validation state")
        super().load_state_dict(state)
        self.last = None if int(state["last"]) < 0 else int(state["last"])
        self.passes = int(state["passes"])
        self.timesteps = state["timesteps"]
        self.set_fingerprint = state["validation_set"]
        self.samples = int(state["samples"])
