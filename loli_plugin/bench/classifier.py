"""A small digits classifier that scores generated samples in ``bench quality``: which digit a sample
shows, and low-dimensional features for a Fréchet distance to real images.

An MLP 64 -> 64 -> FEATURES -> 10 on scikit-learn's 8x8 digits. The FEATURES-dimensional layer (tanh)
is what the Fréchet distance compares: it must be small, because its covariance is estimated from the
~60 real held-out 9s (a 16 x 16 covariance has 136 entries; Inception's 2048 x 2048 would be hopeless).
Trained once per process, deterministically (one CPU thread, fixed seed, full-batch Adam), in about
4 s, and kept in memory; the held-out 9s and every 5th remaining image are kept out of its training
set so its accuracy can be checked (``accuracy``)."""

from __future__ import annotations

import functools

import torch

FEATURES = 16
RECIPE = {
    "hidden": 64,
    "features": FEATURES,
    "steps": 400,
    "lr": 1e-2,
    "weight_decay": 1e-4,
    "seed": 0,
    "test_every": 5,
}


class DigitsClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(64, RECIPE["hidden"]),
            torch.nn.ReLU(),
            torch.nn.Linear(RECIPE["hidden"], FEATURES),
            torch.nn.Tanh(),
        )
        self.head = torch.nn.Linear(FEATURES, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(n, FEATURES) features of (n, 1, 8, 8) images in [-1, 1]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(1)


@functools.lru_cache(maxsize=1)
def split() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, labels), (test images, labels)): the test set is every ``test_every``-th image
    of the digits outside the LoRA's held-out 9s, plus those held-out 9s (the FD's reference set)."""
    from .digits import digits, nine_split

    images, labels = [], []
    for digit in range(10):
        x = digits([digit]) if digit != 9 else nine_split()[0]
        images.append(x)
        labels.append(torch.full((len(x),), digit))
    x, y = torch.cat(images), torch.cat(labels)
    test = torch.arange(len(x)) % RECIPE["test_every"] == 0
    held_out_nines = nine_split()[1]
    return (
        (x[~test], y[~test]),
        (torch.cat([x[test], held_out_nines]), torch.cat([y[test], torch.full((len(held_out_nines),), 9)])),
    )


@functools.lru_cache(maxsize=1)
def classifier() -> DigitsClassifier:
    """The trained classifier (trained on the first call in a process, then cached)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bits in every process: thread count changes how sums split
    try:
        torch.manual_seed(RECIPE["seed"])
        model = DigitsClassifier()
        (x, y), _ = split()
        opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        for _ in range(RECIPE["steps"]):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval().requires_grad_(False)
    finally:
        torch.set_num_threads(threads)


def accuracy() -> float:
    """Share of the held-out test images the classifier labels correctly."""
    _, (x, y) = split()
    return (classifier().predict(x) == y).float().mean().item()
