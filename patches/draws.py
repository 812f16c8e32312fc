"""Replace a trainer's *first* random draw of a sampler call by a draw from one cluster's slice.

The trainers' timestep samplers draw inline (``torch.rand``, ``torch.randn``, ``torch.normal``,
``torch.multinomial`` over a pmf, ``torch.distributions.Beta(...).sample``) and then apply their own
transform. ``StratifiedTorch`` stands in for the sampler module's ``torch`` global during one call:
the first draw returns the same distribution restricted to quantile slice ``k`` of ``K``, computed
from uniforms in ``[k/K, (k+1)/K)`` (inverse CDF: identity for rand, ``ndtri`` for the normals, the
cumulative weights for multinomial, the regularised incomplete beta inverse for Beta). Every later
draw (noise, ip-noise strength) and every other attribute go to the real torch. So the trainer's own
transform runs unchanged and the cluster is a slice of the trainer's own distribution, whatever
its options.
"""

from __future__ import annotations

import contextlib
import math

import torch

from ..errors import LoliUnsupportedTrainerError
from ..sampling import Discrete, cluster_uniform


def _size_of(args, kwargs) -> tuple[int, ...]:
    if "size" in kwargs:
        size = kwargs["size"]
    elif len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        size = args[0]
    else:
        size = args
    return tuple(int(s) for s in (size if isinstance(size, (tuple, list, torch.Size)) else (size,)))


class StratifiedTorch:
    """Stands in for a sampler module's ``torch`` global during one sampler call."""

    def __init__(
        self,
        real,
        k: int,
        clusters: int,
        batch: int,
        where: str,
        supported: str = "",
        midpoint: bool = False,
        position: float | None = None,
    ):
        self._real, self._k, self._clusters, self._batch = real, k, clusters, batch
        self._where, self._supported = where, supported
        #: a fixed draw: every sample gets the quantile (k + position) / K (midpoint: position 0.5)
        self._position = 0.5 if midpoint and position is None else position
        self.drawn = False

    def __getattr__(self, name):
        if name == "distributions":
            return _StratifiedDistributions(self)
        return getattr(self._real, name)

    def _fail(self, what: str):
        raise LoliUnsupportedTrainerError(f"{self._where}: {what}. Supported: {self._supported}")

    def _uniform(self, size, generator, dtype) -> torch.Tensor | None:
        """Uniforms of cluster k for the first draw; None once the first draw has happened."""
        if self.drawn:
            return None
        n = math.prod(size) if size else 1
        if n != self._batch:
            self._fail(
                f"expected the timestep draw to have one value per sample ({self._batch}), got size {tuple(size)}"
            )
        self.drawn = True
        if self._position is not None:  # the probe / validation: (k + position) / K for every sample
            return torch.full(tuple(size), (self._k + self._position) / self._clusters, dtype=dtype)
        return cluster_uniform(n, self._k, self._clusters, generator=generator, dtype=dtype).reshape(tuple(size))

    @staticmethod
    def _finish(t, kwargs, generator=None):
        device = kwargs.get("device", generator.device if generator is not None else None)
        return t.to(device=device, dtype=kwargs.get("dtype") or torch.get_default_dtype())

    def rand(self, *args, **kwargs):
        dtype = kwargs.get("dtype") or torch.get_default_dtype()
        u = self._uniform(_size_of(args, kwargs), kwargs.get("generator"), dtype)
        return self._real.rand(*args, **kwargs) if u is None else u.to(kwargs.get("device"))

    def randn(self, *args, **kwargs):
        u = self._uniform(_size_of(args, kwargs), kwargs.get("generator"), torch.float64)
        return self._real.randn(*args, **kwargs) if u is None else self._finish(torch.special.ndtri(u), kwargs)

    def normal(self, *args, **kwargs):
        bound = dict(zip(("mean", "std", "size"), args), **kwargs)
        if self.drawn:
            return self._real.normal(*args, **kwargs)
        if "size" not in bound or any(isinstance(bound.get(k), torch.Tensor) for k in ("mean", "std")):
            self._fail("unexpected torch.normal form (expected float mean and std with a size)")
        u = self._uniform(_size_of((), bound), bound.get("generator"), torch.float64)
        return self._finish(
            float(bound["mean"]) + float(bound["std"]) * torch.special.ndtri(u), bound, bound.get("generator")
        )

    def multinomial(self, *args, **kwargs):
        bound = dict(zip(("input", "num_samples", "replacement"), args), **kwargs)
        if self.drawn:
            return self._real.multinomial(*args, **kwargs)
        weights = bound["input"]
        if weights.ndim != 1 or not bound.get("replacement", False):
            self._fail("unexpected torch.multinomial form (expected a 1-D pmf sampled with replacement)")
        generator = bound.get("generator")
        u = self._uniform((int(bound["num_samples"]),), generator, torch.float64)
        # inverse CDF of the pmf: the index whose cumulative weight first exceeds u
        index = Discrete(weights.detach().double().cpu()).quantile(u.cpu())
        return index.to(device=weights.device, dtype=torch.long)

    def beta_sample(self, alpha: float, beta: float, shape, device):
        u = self._uniform(tuple(shape), None, torch.float64)
        if u is None:
            return torch.distributions.Beta(
                torch.tensor(alpha, device=device), torch.tensor(beta, device=device)
            ).sample(shape)
        from scipy.special import betaincinv  # scipy: a dependency of OneTrainer, the only user of this path

        values = torch.from_numpy(betaincinv(alpha, beta, u.cpu().numpy()))
        return values.to(device=device, dtype=torch.get_default_dtype())


class _StratifiedDistributions:
    """``torch.distributions`` as seen through ``StratifiedTorch``: ``Beta(a, b).sample(shape)`` is stratified."""

    def __init__(self, proxy: StratifiedTorch):
        self._proxy = proxy

    def __getattr__(self, name):
        return getattr(torch.distributions, name)

    def Beta(self, concentration1, concentration0, *args, **kwargs):  # noqa: N802 - torch's name
        proxy = self._proxy
        a, b = float(concentration1), float(concentration0)
        device = concentration1.device if isinstance(concentration1, torch.Tensor) else None

        class _Beta:
            def sample(self, sample_shape=()):
                return proxy.beta_sample(a, b, tuple(sample_shape), device)

        return _Beta()


@contextlib.contextmanager
def cluster_draw(
    module,
    k: int,
    clusters: int,
    batch: int,
    where: str,
    supported: str,
    options: str,
    midpoint: bool = False,
    position: float | None = None,
):
    """Run the body with ``module.torch`` replaced by a ``StratifiedTorch`` for cluster ``k``; afterwards
    refuse loudly if the sampler made no draw the stand-in recognised (a trainer branch this plugin does
    not know would otherwise silently train with unrestricted timesteps). ``options`` describes the
    trainer's sampler settings for that message. ``midpoint``: every sample gets the cluster's quantile
    midpoint through the trainer's own transform (the progress probe's fixed timestep); ``position``:
    the quantile ``(k + position) / K`` instead (the validation also measures the cluster's edges)."""
    proxy = StratifiedTorch(module.torch, k, clusters, batch, where, supported, midpoint, position)
    real = module.torch
    module.torch = proxy
    try:
        yield proxy
    finally:
        module.torch = real
    if not proxy.drawn:
        raise LoliUnsupportedTrainerError(
            f"{where} made no timestep draw loli-plugin recognises ({options}). Supported: {supported}"
        )
