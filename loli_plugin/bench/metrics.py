"""What ``bench quality`` measures on one trained model, all on the LoRA's held-out digit-9 images
and all with fixed randomness, so two models' numbers differ only by their weights:

* ``bands``: held-out MSE at BANDS noise levels (band i is centred on the i-th tenth of the timestep
  range, low noise first), each with fixed noise; ``mean`` is their arithmetic mean and ``geomean``
  their geometric mean. Under epsilon prediction the lowest-noise band's loss is ~100x the highest's,
  so the arithmetic mean is mostly that one band; the geometric mean weighs a relative change in
  every band the same.
* ``share``, ``fd`` and ``fd_cnn``: a fixed set of samples generated from fixed noise (``samples.py``),
  the share the MLP digits classifier labels as the held-out digit, and the Fréchet distance between
  their features and the real held-out images', on two classifiers of different kinds (``fd``: the MLP,
  ``fd_cnn``: the CNN; ``classifier.py``, ``frechet.py``). Users judge images, not losses.
"""

from __future__ import annotations

import functools
import math
import statistics

import torch

from .classifier import KINDS, NOTES, classifier
from .digits import HELD_OUT, held_out_split
from .frechet import frechet_distance
from .samples import fixed_noise, generate

BANDS = 10
BAND_NOISE_SEED = 1234
FD_KEYS = {"mlp": "fd", "cnn": "fd_cnn"}  # the metric names of each classifier's Fréchet distance


def band_timesteps(objective) -> torch.Tensor:
    """The centre of each noise band in the objective's own timestep units, low noise first."""
    centres = (torch.arange(BANDS, dtype=torch.float64) + 0.5) / BANDS
    return (centres * 1000).long() if objective.name == "eps" else centres.float()


@torch.no_grad()
def band_losses(model, objective, x_val: torch.Tensor, backbone=None) -> list[float]:
    """Held-out MSE per band of ``x_val`` (images), in ``backbone``'s layout (default the UNet's). The noise
    is drawn as images and packed like them, so both backbones see the same noise."""
    from .backbones import UNET

    backbone = backbone or UNET
    g = torch.Generator().manual_seed(BAND_NOISE_SEED)
    x_model = backbone.to_model(x_val)
    losses = []
    for value in band_timesteps(objective):
        t = value.expand(len(x_val))
        noise = backbone.to_model(torch.randn(x_val.shape, generator=g))
        xt, tt, target = objective.noised(x_model, noise, t)
        losses.append(torch.nn.functional.mse_loss(model(xt, tt).sample, target).item())
    return losses


@functools.lru_cache(maxsize=20)
def real_features(held_out: int = HELD_OUT, kind: str = "mlp") -> torch.Tensor:
    """Classifier features of the real held-out images: the Fréchet distance's reference set."""
    return classifier(held_out, kind).features(held_out_split(held_out)[1])


def image_scores(images: torch.Tensor, held_out: int = HELD_OUT) -> dict:
    """``share`` (labelled as the held-out digit by the MLP) and the Fréchet distance on each classifier's
    features (``fd``, ``fd_cnn``) of a set of images in [-1, 1]."""
    scores = {"share": (classifier(held_out).predict(images) == held_out).float().mean().item()}
    for kind in KINDS:
        feats = classifier(held_out, kind).features(images)
        scores[FD_KEYS[kind]] = frechet_distance(feats, real_features(held_out, kind))
    return scores


def evaluate(model, objective, samples: int, sample_steps: int, backbone=None, held_out: int = HELD_OUT) -> dict:
    """Every metric of ``model`` (see the module docstring)."""
    bands = band_losses(model, objective, held_out_split(held_out)[1], backbone)
    images = generate(model, objective, fixed_noise(samples), sample_steps, backbone)
    return {
        "bands": bands,
        "mean": statistics.fmean(bands),
        "geomean": math.exp(statistics.fmean(math.log(b) for b in bands)),
        **image_scores(images, held_out),
    }


def real_reference(samples: int, held_out: int = HELD_OUT) -> dict:
    """``share`` and the FDs of real images instead of samples: ``samples`` of the LoRA's training images
    against the held-out ones, the floor a perfect generator of that digit would reach at this sample count."""
    return image_scores(held_out_split(held_out)[0][:samples], held_out)


FEATURE_NOTE = (
    "two classifiers trained on scikit-learn's digits, "
    + " and ".join(f"{FD_KEYS[k]}: {NOTES[k]}" for k in KINDS)
    + "; Fréchet distance on each one's 16-dimensional tanh layer against the real held-out images"
)
