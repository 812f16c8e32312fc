"""Two small digits classifiers of different kinds that score generated samples in ``bench quality``:
which digit a sample shows, and low-dimensional features for a Fréchet distance to real images.

* ``mlp``: an MLP 64 -> 64 -> FEATURES -> 10 on the flattened 8x8 pixels (sees each pixel position on
  its own).
* ``cnn``: a small convolutional network, two 3x3 convolutions (8 and 16 channels, the second with
  stride 2) -> FEATURES -> 10 (sees local strokes wherever they are).

Their FEATURES-dimensional layer (tanh) is what the Fréchet distance compares: it must be small,
because its covariance is estimated from the ~60 real held-out images (a 16 x 16 covariance has 136
entries; Inception's 2048 x 2048 would be hopeless). Two kinds, because a verdict that holds for one
learned feature space only may be that space's quirk. Each is trained once per process and held-out
digit, deterministically (one CPU thread, fixed seed, Adam: the MLP full-batch, the CNN on minibatches of
CNN_BATCH), in a few seconds, and kept
in memory; the held-out digit's validation images (the FD's reference) and every 5th remaining image
are kept out of its training set so its accuracy can be checked (``accuracy``)."""

from __future__ import annotations

import functools

import torch

FEATURES = 16
KINDS = ("mlp", "cnn")
RECIPE = {
    "hidden": 64,
    "features": FEATURES,
    "steps": 400,
    "lr": 1e-2,
    "weight_decay": 1e-4,
    "seed": 0,
    "test_every": 5,
}
CNN_BATCH = 128
NOTES = {
    "mlp": f"MLP 64-64-{FEATURES}-10 on the pixels",
    "cnn": f"CNN conv3x3(8)-conv3x3/2(16)-{FEATURES}-10",
}


class DigitsClassifier(torch.nn.Module):
    def __init__(self, kind: str = "mlp"):
        super().__init__()
        if kind == "mlp":
            self.body = torch.nn.Sequential(
                torch.nn.Flatten(),
                torch.nn.Linear(64, RECIPE["hidden"]),
                torch.nn.ReLU(),
                torch.nn.Linear(RECIPE["hidden"], FEATURES),
                torch.nn.Tanh(),
            )
        elif kind == "cnn":
            self.body = torch.nn.Sequential(
                torch.nn.Conv2d(1, 8, 3, padding=1),
                torch.nn.ReLU(),
                torch.nn.Conv2d(8, 16, 3, stride=2, padding=1),
                torch.nn.ReLU(),
                torch.nn.Flatten(),
                torch.nn.Linear(16 * 4 * 4, FEATURES),
                torch.nn.Tanh(),
            )
        else:
            raise ValueError(f"unknown classifier kind {kind!r}; one of {', '.join(KINDS)}")
        self.head = torch.nn.Linear(FEATURES, 10)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(n, FEATURES) features of (n, 1, 8, 8) images in [-1, 1]."""
        return self.body(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(images))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self(images).argmax(1)


@functools.lru_cache(maxsize=10)
def split(held_out: int = 9) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((train images, labels), (test images, labels)): the test set is every ``test_every``-th image
    of the digits outside the LoRA's held-out validation images, plus those validation images (the
    FD's reference set)."""
    from .digits import digits, held_out_split

    train_part, validation = held_out_split(held_out)
    images, labels = [], []
    for digit in range(10):
        x = digits([digit]) if digit != held_out else train_part
        images.append(x)
        labels.append(torch.full((len(x),), digit))
    x, y = torch.cat(images), torch.cat(labels)
    test = torch.arange(len(x)) % RECIPE["test_every"] == 0
    return (
        (x[~test], y[~test]),
        (torch.cat([x[test], validation]), torch.cat([y[test], torch.full((len(validation),), held_out)])),
    )


@functools.lru_cache(maxsize=20)
def classifier(held_out: int = 9, kind: str = "mlp") -> DigitsClassifier:
    """The trained classifier (trained on the first call in a process, then cached)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same bits in every process: thread count changes how sums split
    try:
        torch.manual_seed(RECIPE["seed"])
        model = DigitsClassifier(kind)
        (x, y), _ = split(held_out)
        opt = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"])
        g = torch.Generator().manual_seed(RECIPE["seed"])
        for _ in range(RECIPE["steps"]):
            # the MLP on every image each step; the CNN (convolutions cost more) on a random minibatch
            pick = torch.randint(len(x), (CNN_BATCH,), generator=g) if kind == "cnn" else slice(None)
            loss = torch.nn.functional.cross_entropy(model(x[pick]), y[pick])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return model.eval().requires_grad_(False)
    finally:
        torch.set_num_threads(threads)


def accuracy(held_out: int = 9, kind: str = "mlp") -> float:
    """Share of the held-out test images the classifier labels correctly."""
    _, (x, y) = split(held_out)
    return (classifier(held_out, kind).predict(x) == y).float().mean().item()
