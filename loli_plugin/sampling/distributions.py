"""Timestep distributions the trainers sample from, each with its quantile function.

Every class offers three things:

* ``sample(n)``: the plain sampler, written the way the trainers write it (``torch.rand``,
  ``torch.randn`` through a sigmoid, ``torch.multinomial`` over a pmf, ``torch.randint``...). It is
  the reference the clustered sampler is tested against, so it deliberately does *not* go through
  ``quantile``.
* ``quantile(u)``: the inverse CDF, float64 in, float64 (or int64 for discrete families) out.
* ``sample_cluster(n, k, K)``: ``quantile`` of uniforms in cluster k's bin, i.e. draws from the
  k-th of K equal-probability slices of the same distribution.

Both samplers compute in float64 and return torch's default float dtype (int64 for the discrete
families) unless ``dtype`` is given.

Time runs on the trainer's scale: ``t`` in ``[0, 1]`` for the flow-matching families, integer
timesteps for ``Discrete``/``DiscreteUniform``/``Discretized``. Decreasing transforms (SD3's
"mode" sampling) are handled by reflecting ``u`` so ``quantile`` stays increasing; the cluster
with the highest index always holds the largest timesteps.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..errors import LoliConfigError
from ..options import check_clusters
from .bins import cluster_bounds, cluster_uniform

_F64 = torch.float64


def _finite(name: str, value, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise LoliConfigError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise LoliConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


def _draw_device(generator, device):
    return generator.device if generator is not None else device


class TimestepDistribution:
    """Base class: subclasses implement ``quantile`` and ``sample``."""

    #: True for integer-valued families; their draws are int64 tensors.
    discrete: bool = False

    @property
    def admissible(self) -> int | None:
        """Number of distinct values with positive probability (None when continuous)."""
        return None

    def quantile(self, u: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _sample(
        self, n: int, generator: torch.Generator | None = None, device=None
    ) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _cast(self, t: torch.Tensor, dtype) -> torch.Tensor:
        # Computed in float64; handed out as the host's default float dtype (or int64 when discrete).
        if dtype is None:
            dtype = torch.long if self.discrete else torch.get_default_dtype()
        return t.to(dtype)

    def sample(self, n: int, generator: torch.Generator | None = None, device=None, dtype=None) -> torch.Tensor:
        """``n`` draws of the plain sampler (the trainer's own formula), as ``dtype`` on ``device``."""
        return self._cast(self._sample(n, generator=generator, device=device), dtype)

    def check_clusters(self, clusters, option: str = "clusters") -> int:
        """Validate K against this distribution (a discrete one needs K <= admissible values)."""
        return check_clusters(clusters, self.admissible, option=option)

    def sample_cluster(
        self, n: int, k: int, clusters: int, generator: torch.Generator | None = None, device=None, dtype=None
    ) -> torch.Tensor:
        """``n`` draws from the k-th of ``clusters`` equal-probability slices of this distribution."""
        self.check_clusters(clusters)
        u = cluster_uniform(n, k, clusters, generator=generator, device=_draw_device(generator, device))
        return self._cast(self.quantile(u).to(device), dtype)

    def cluster_range(self, k: int, clusters: int) -> tuple[float, float]:
        """The closed value range ``[Q(k/K), Q((k+1)/K)]`` cluster k draws from.

        For discrete families the upper end is the value just below ``(k+1)/K`` (half-open bins).
        """
        self.check_clusters(clusters)
        lo, hi = cluster_bounds(k, clusters)
        below_hi = math.nextafter(hi, 0.0)
        q = self.quantile(torch.tensor([lo, below_hi if self.discrete else hi], dtype=_F64))
        return q[0].item(), q[1].item()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({fields})"


class Uniform(TimestepDistribution):
    """``t ~ U[low, high)``; kohya's ``--timestep_sampling uniform`` with min/max timestep."""

    def __init__(self, low: float = 0.0, high: float = 1.0):
        self.low, self.high = _finite("low", low), _finite("high", high)
        if not self.low < self.high:
            raise LoliConfigError(f"Uniform timesteps need low < high, got low={low}, high={high}")

    def quantile(self, u):
        return self.low + u.to(_F64) * (self.high - self.low)

    def _sample(self, n, generator=None, device=None):
        u = torch.rand(n, generator=generator, device=_draw_device(generator, device), dtype=_F64)
        return (u * (self.high - self.low) + self.low).to(device)


class LogitNormal(TimestepDistribution):
    """``t = sigmoid(mean + std * N(0, 1))``: SD3's logit-normal and kohya's ``sigmoid`` sampling.

    kohya's ``--timestep_sampling sigmoid --sigmoid_scale s`` is ``LogitNormal(0, s)``; diffusers'
    ``logit_normal`` weighting scheme is ``LogitNormal(logit_mean, logit_std)``.
    """

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        self.mean, self.std = _finite("mean", mean), _finite("std", std, positive=True)

    def quantile(self, u):
        # ndtri(0) = -inf and ndtri(1) = +inf map to exactly 0 and 1 through the sigmoid.
        return torch.sigmoid(self.mean + self.std * torch.special.ndtri(u.to(_F64)))

    def _sample(self, n, generator=None, device=None):
        z = torch.randn(n, generator=generator, device=_draw_device(generator, device), dtype=_F64)
        return torch.sigmoid(self.mean + self.std * z).to(device)


class CosMap(TimestepDistribution):
    """diffusers' ``cosmap`` weighting scheme: ``t = 1 - 1 / (tan(pi/2 * u) + 1)``, increasing."""

    def quantile(self, u):
        return 1 - 1 / (torch.tan(math.pi / 2 * u.to(_F64)) + 1)

    def _sample(self, n, generator=None, device=None):
        u = torch.rand(n, generator=generator, device=_draw_device(generator, device), dtype=_F64)
        return (1 - 1 / (torch.tan(math.pi / 2 * u) + 1)).to(device)


class Mapped(TimestepDistribution):
    """A monotone map ``fn`` applied to draws of ``base``.

    For an increasing ``fn`` the quantile is ``fn(base.quantile(u))``; for a decreasing one it is
    ``fn(base.quantile(1 - u))``, so ``quantile`` stays increasing either way.
    """

    def __init__(self, base: TimestepDistribution, fn: Callable[[torch.Tensor], torch.Tensor], increasing: bool = True):
        if base.discrete:
            raise LoliConfigError("Mapped needs a continuous base distribution; discretize after mapping")
        self.base, self._fn, self.increasing = base, fn, bool(increasing)

    def quantile(self, u):
        u = u.to(_F64)
        return self._fn(self.base.quantile(u if self.increasing else 1 - u))

    def _sample(self, n, generator=None, device=None):
        return self._fn(self.base._sample(n, generator=generator, device=device))


class Shift(Mapped):
    """SD3/Flux's resolution shift ``t' = s t / (1 + (s - 1) t)`` (kohya's ``--discrete_flow_shift``,
    ``--timestep_sampling shift``; diffusers' ``FlowMatchEulerDiscreteScheduler(shift=s)``)."""

    def __init__(self, base: TimestepDistribution, shift: float):
        self.shift = _finite("shift", shift, positive=True)
        s = self.shift
        super().__init__(base, lambda t: s * t / (1 + (s - 1) * t))


class TimeShift(Mapped):
    """Flux's ``time_shift(mu, sigma, t) = e^mu / (e^mu + (1/t - 1)^sigma)`` (kohya's
    ``--timestep_sampling flux_shift``, where mu depends on the image's token count)."""

    def __init__(self, base: TimestepDistribution, mu: float, sigma: float = 1.0):
        self.mu, self.sigma = _finite("mu", mu), _finite("sigma", sigma, positive=True)
        em, sg = math.exp(self.mu), self.sigma
        # Written as e^mu t^s / (e^mu t^s + (1 - t)^s): finite at t = 0 and t = 1, same values elsewhere.
        super().__init__(base, lambda t: em * t**sg / (em * t**sg + (1 - t) ** sg))


MODE_SCALE_MAX = 1 / (math.pi / 2 - 1)


class ModeScale(Mapped):
    """SD3's "mode" sampling (OneTrainer's heavy tail): ``t = 1 - u - s (cos^2(pi u / 2) - 1 + u)``.

    The map is decreasing in u (its derivative ``-1 - s + s pi/2 sin(pi u)`` is <= 0) exactly for
    ``-1 <= s <= 1/(pi/2 - 1) ~ 1.752``; outside that range it folds over itself, has no quantile
    function, and is refused.
    """

    def __init__(self, scale: float = 1.29):
        s = _finite("mode_scale", scale)
        if not -1.0 <= s <= MODE_SCALE_MAX:
            raise LoliConfigError(
                f"mode_scale={scale} makes the mode map non-monotone, so its quantile bins are undefined; "
                f"use -1 <= mode_scale <= {MODE_SCALE_MAX:.4f}"
            )
        self.scale = s
        super().__init__(Uniform(), lambda u: 1 - u - s * (torch.cos(math.pi * u / 2) ** 2 - 1 + u), increasing=False)


class Discrete(TimestepDistribution):
    """Integer timesteps ``values[i]`` with probability proportional to ``weights[i]``.

    OneTrainer draws its discrete timesteps this way (``torch.multinomial`` over a pmf of the
    ``num_train_timesteps`` values). The quantile is the inverse CDF: the first index whose
    cumulative weight exceeds ``u``; zero-weight values are never returned.
    """

    discrete = True

    def __init__(self, weights: Sequence[float] | torch.Tensor, values: Sequence[int] | torch.Tensor | None = None):
        w = torch.as_tensor(weights, dtype=_F64).flatten().cpu()
        if w.numel() == 0 or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
            raise LoliConfigError("timestep weights must be finite, >= 0 and not all zero")
        self.weights = w
        self.values = (
            torch.arange(w.numel(), dtype=torch.long)
            if values is None
            else torch.as_tensor(values, dtype=torch.long).flatten().cpu()
        )
        if self.values.numel() != w.numel():
            raise LoliConfigError(f"got {w.numel()} timestep weights for {self.values.numel()} values")
        if self.values.numel() > 1 and not (self.values[1:] > self.values[:-1]).all():
            raise LoliConfigError("discrete timestep values must be strictly increasing")
        cdf = torch.cumsum(w, 0)
        self._cdf = cdf / cdf[-1]
        self._cdf[-1] = 1.0  # exact, so u in [0, 1) never runs past the last value

    @property
    def admissible(self) -> int:
        return int((self.weights > 0).sum())

    def quantile(self, u):
        u = u.to(_F64)
        idx = torch.searchsorted(self._cdf.to(u.device), u, right=True).clamp_(max=self.values.numel() - 1)
        return self.values.to(u.device)[idx]

    def _sample(self, n, generator=None, device=None):
        w = self.weights.to(_draw_device(generator, device))
        idx = torch.multinomial(w, n, replacement=True, generator=generator)
        return self.values.to(idx.device)[idx].to(device)


class DiscreteUniform(TimestepDistribution):
    """Integer timesteps uniform in ``[low, high)``: kohya's SD1/SD2/SDXL ``torch.randint(min_timestep,
    max_timestep, ...)``."""

    discrete = True

    def __init__(self, low: int = 0, high: int = 1000):
        if any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in (low, high)) or not low < high:
            raise LoliConfigError(f"integer timesteps need whole numbers low < high, got low={low!r}, high={high!r}")
        self.low, self.high = int(low), int(high)

    @property
    def admissible(self) -> int:
        return self.high - self.low

    def quantile(self, u):
        idx = torch.floor(u.to(_F64) * (self.high - self.low)).long().clamp_(0, self.high - self.low - 1)
        return idx + self.low

    def _sample(self, n, generator=None, device=None):
        return torch.randint(self.low, self.high, (n,), generator=generator, device=_draw_device(generator, device)).to(
            device
        )


class Discretized(TimestepDistribution):
    """A continuous ``base`` on ``[0, 1]`` scaled to ``steps`` integer timesteps: ``floor(t * steps)``,
    the last one clamped to ``steps - 1``. ``floor`` is monotone, so the bins carry over exactly."""

    discrete = True

    def __init__(self, base: TimestepDistribution, steps: int = 1000):
        if base.discrete:
            raise LoliConfigError("Discretized needs a continuous base distribution")
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
            raise LoliConfigError(f"steps must be a positive integer, got {steps!r}")
        self.base, self.steps = base, int(steps)

    @property
    def admissible(self) -> int:
        return self.steps

    def _discretize(self, t):
        return torch.floor(t * self.steps).long().clamp_(0, self.steps - 1)

    def quantile(self, u):
        return self._discretize(self.base.quantile(u))

    def _sample(self, n, generator=None, device=None):
        return self._discretize(self.base._sample(n, generator=generator, device=device))
