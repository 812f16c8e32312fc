"""What ``bench quality`` measures on one trained model, all on the LoRA's held-out digit-9 images
and all with fixed randomness, so two models' numbers differ only by their weights:

* ``bands``: held-out MSE at BANDS noise levels (band i is centred on the i-th tenth of the timestep
  range, low noise first), each with fixed noise; ``mean`` is their arithmetic mean and ``geomean``
  their geometric mean. Under epsilon prediction the lowest-noise band's loss is ~100x the highest's,
  so the arithmetic mean is mostly that one band; the geometric mean weighs a relative change in
  every band the same.
* ``share9`` and ``fd``: a fixed set of samples generated from fixed noise (``samples.py``), the share
  the digits classifier labels 9, and the Fréchet distance between their classifier features and the
  real held-out 9s' (``classifier.py``, ``frechet.py``). Users judge images, not losses.
"""

from __future__ import annotations

import functools
import math
import statistics

import torch

from .classifier import FEATURES, classifier
from .digits import nine_split
from .frechet import frechet_distance
from .samples import fixed_noise, generate

BANDS = 10
TARGET_DIGIT = 9
BAND_NOISE_SEED = 1234


def band_timesteps(objective) -> torch.Tensor:
    """The centre of each noise band in the objective's own timestep units, low noise first."""
    centres = (torch.arange(BANDS, dtype=torch.float64) + 0.5) / BANDS
    return (centres * 1000).long() if objective.name == "eps" else centres.float()


@torch.no_grad()
def band_losses(model, objective, x_val: torch.Tensor) -> list[float]:
    g = torch.Generator().manual_seed(BAND_NOISE_SEED)
    losses = []
    for value in band_timesteps(objective):
        t = value.expand(len(x_val))
        xt, tt, target = objective.noised(x_val, torch.randn(x_val.shape, generator=g), t)
        losses.append(torch.nn.functional.mse_loss(model(xt, tt).sample, target).item())
    return losses


@functools.lru_cache(maxsize=1)
def real_features() -> torch.Tensor:
    """Classifier features of the real held-out 9s: the Fréchet distance's reference set."""
    return classifier().features(nine_split()[1])


def image_scores(images: torch.Tensor) -> dict:
    """``share9`` and ``fd`` of a set of images in [-1, 1]."""
    clf = classifier()
    return {
        "share9": (clf.predict(images) == TARGET_DIGIT).float().mean().item(),
        "fd": frechet_distance(clf.features(images), real_features()),
    }


def evaluate(model, objective, samples: int, sample_steps: int) -> dict:
    """Every metric of ``model`` (see the module docstring)."""
    bands = band_losses(model, objective, nine_split()[1])
    images = generate(model, objective, fixed_noise(samples), sample_steps)
    return {
        "bands": bands,
        "mean": statistics.fmean(bands),
        "geomean": math.exp(statistics.fmean(math.log(b) for b in bands)),
        **image_scores(images),
    }


def real_reference(samples: int) -> dict:
    """``share9`` and ``fd`` of real images instead of samples: ``samples`` of the LoRA's training 9s
    against the held-out 9s, the floor a perfect generator of 9s would reach at this sample count."""
    return image_scores(nine_split()[0][:samples])


FEATURE_NOTE = (
    f"classifier: MLP 64-64-{FEATURES}-10 on scikit-learn's digits; Fréchet distance on its {FEATURES}-dimensional "
    "tanh layer against the real held-out 9s"
)
