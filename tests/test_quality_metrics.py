"""The sample-based metric of ``bench quality``: the two digits classifiers, the Fréchet distance, the
held-out splits, the transformer's token packing and the two samplers (checked against models whose
exact answer is known, in both layouts)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sklearn")

from loli_plugin.bench.backbones import DIT, UNET  # noqa: E402
from loli_plugin.bench.classifier import FEATURES, KINDS, accuracy, classifier, split  # noqa: E402
from loli_plugin.bench.digits import digits, held_out_split, nine_split  # noqa: E402
from loli_plugin.bench.dit import pack, unpack  # noqa: E402
from loli_plugin.bench.frechet import frechet_distance  # noqa: E402
from loli_plugin.bench.metrics import image_scores, real_reference  # noqa: E402
from loli_plugin.bench.samples import fixed_noise, generate  # noqa: E402


@pytest.fixture(autouse=True)
def one_thread():
    """8x8 images are too small to split; two threads on a busy 2-core machine wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind", KINDS)
def test_classifiers_recognise_real_digits_they_never_saw(kind):
    assert accuracy(9, kind) > 0.95
    assert (classifier(9, kind).predict(nine_split()[1]) == 9).float().mean().item() > 0.85  # the FD's reference 9s


def test_another_held_out_digit_gets_its_own_split_and_classifier():
    train, validation = held_out_split(3)
    assert len(train) == 120 and len(train) + len(validation) == len(digits([3]))
    (x_train, y_train), (x_test, y_test) = split(3)
    train_rows = {tuple(r.tolist()) for r in x_train.flatten(1)}
    assert not {tuple(r.tolist()) for r in validation.flatten(1)} & train_rows
    assert (y_test == 3).sum() >= len(validation) and (y_train == 3).sum() > 0
    # measured 0.83: the last 3s of scikit-learn's set include several the MLP takes for 8s
    assert (classifier(3).predict(validation) == 3).float().mean().item() > 0.75


def test_classifier_keeps_its_test_images_out_of_training():
    (x_train, _), (x_test, _) = split()
    train_rows = {tuple(r.tolist()) for r in x_train.flatten(1)}
    held_out_nines = {tuple(r.tolist()) for r in nine_split()[1].flatten(1)}
    assert not held_out_nines & train_rows
    assert len(x_train) + len(x_test) == 1797  # every digit image, each on one side


def test_classifiers_are_the_same_in_a_fresh_process():
    import subprocess
    import sys

    code = (
        "from loli_plugin.bench.classifier import classifier; import torch; "
        "print(*(float(sum(p.double().sum() for p in classifier(9, k).parameters())) for k in ('mlp', 'cnn')))"
    )
    again = [float(x) for x in subprocess.check_output([sys.executable, "-c", code], text=True).split()]
    assert again == [float(sum(p.double().sum() for p in classifier(9, k).parameters())) for k in KINDS]


def test_frechet_distance_of_a_set_with_itself_is_zero_and_grows_with_a_shift():
    feats = classifier().features(nine_split()[1])
    assert feats.shape[1] == FEATURES
    assert abs(frechet_distance(feats, feats)) < 1e-9
    shifted = [frechet_distance(feats, feats + s) for s in (0.1, 0.3, 1.0)]
    assert shifted == sorted(shifted) and shifted[0] > 0
    # a pure mean shift leaves the covariances equal: the distance is exactly |shift|^2
    assert shifted[2] == pytest.approx(FEATURES * 1.0**2, rel=1e-6)


def test_frechet_distance_matches_scipys_matrix_square_root():
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(0)
    a = torch.randn(60, 5, generator=g, dtype=torch.float64)
    b = torch.randn(64, 5, generator=g, dtype=torch.float64) @ torch.randn(5, 5, generator=g, dtype=torch.float64) + 0.5
    ca, cb = torch.cov(a.T).numpy(), torch.cov(b.T).numpy()
    cross = scipy_linalg.sqrtm(ca @ cb).real.trace()
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum().item() + ca.trace() + cb.trace() - 2 * cross
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_refuses_sets_without_a_covariance():
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(5, 3))
    with pytest.raises(ValueError, match="same d"):
        frechet_distance(torch.zeros(4, 3), torch.zeros(5, 2))


def test_real_nines_score_as_nines_and_close_to_the_held_out_ones():
    real = real_reference(64)
    noise = image_scores(fixed_noise(64).clamp(-1, 1))
    assert real["share"] > 0.9 and noise["share"] < 0.5
    assert real["fd"] < 0.2 * noise["fd"] and real["fd_cnn"] < 0.2 * noise["fd_cnn"]


def test_packing_is_fluxs_two_by_two_patches_and_unpacks_exactly():
    images = torch.arange(2 * 64, dtype=torch.float32).reshape(2, 1, 8, 8)
    tokens = pack(images)
    assert tokens.shape == (2, 16, 4)
    # token 1 is the patch at row 0, column 1: pixels (0, 2), (0, 3), (1, 2), (1, 3)
    assert tokens[0, 1].tolist() == [2.0, 3.0, 10.0, 11.0]
    assert tokens[1, 4].tolist() == [64 + 16.0, 64 + 17.0, 64 + 24.0, 64 + 25.0]  # row 1, column 0
    assert torch.equal(unpack(tokens), images)


class _Out:
    def __init__(self, sample):
        self.sample = sample


class OracleEps(torch.nn.Module):
    """The exact noise prediction when the data is one image ``x0``: eps = (x - sqrt(a) x0) / sqrt(1 - a)."""

    def __init__(self, x0, alphas_cumprod):
        super().__init__()
        self.x0, self.ac = x0, alphas_cumprod.double()

    def forward(self, x, t):
        a = self.ac[t].view(-1, 1, 1, 1)
        return _Out(((x - a.sqrt() * self.x0) / (1 - a).sqrt()).float())


class OracleFlow(torch.nn.Module):
    """The exact velocity when the data is one image ``x0`` (in the model's layout): x_t = (1 - t) x0 + t n,
    so v = (x - x0) / t."""

    def __init__(self, x0):
        super().__init__()
        self.x0 = x0

    def forward(self, x, t):
        return _Out((x - self.x0) / (t / 1000).view(-1, *[1] * (x.dim() - 1)))


@pytest.mark.parametrize("objective,backbone", [("eps", UNET), ("flow", UNET), ("flow", DIT)])
def test_samplers_land_on_the_data_with_an_exact_model(objective, backbone):
    obj = backbone.objective(objective)
    x0 = nine_split()[1][:1] * 0.9  # one image inside (-1, 1), so the final clamp does not touch it
    model = OracleEps(x0, obj.sched.alphas_cumprod) if objective == "eps" else OracleFlow(backbone.to_model(x0))
    out = generate(model, obj, fixed_noise(6), steps=7, backbone=backbone)
    torch.testing.assert_close(out, x0.expand_as(out), atol=1e-4, rtol=0)


def test_the_transformer_samples_on_the_shifted_grid():
    """An oracle that records the timesteps it is called at: SD3's shift 3 maps the even grid's 0.5 to 0.75."""
    seen = []

    class Recording(OracleFlow):
        def forward(self, x, t):
            seen.append(round(float(t[0]) / 1000, 6))
            return super().forward(x, t)

    obj = DIT.objective("flow")
    generate(Recording(DIT.to_model(nine_split()[1][:1])), obj, fixed_noise(2), steps=2, backbone=DIT)
    assert seen == [1.0, 0.75]
    assert obj.dist.quantile(torch.tensor([0.5], dtype=torch.float64)).item() == pytest.approx(0.75)


@pytest.mark.parametrize("objective,backbone", [("eps", UNET), ("flow", UNET), ("flow", DIT)])
def test_samplers_reproduce_fixed_noise_deterministically(objective, backbone):
    from loli_plugin.bench import base as base_model

    obj = backbone.objective(objective)
    model = backbone.build()
    model.load_state_dict(base_model.load(base_model.shipped(objective, backbone.name))[0])
    first = generate(model, obj, fixed_noise(8), steps=4, backbone=backbone)
    assert first.shape == (8, 1, 8, 8)
    assert torch.equal(fixed_noise(8), fixed_noise(8))
    assert torch.equal(first, generate(model, obj, fixed_noise(8), steps=4, backbone=backbone))
    assert not torch.equal(first, generate(model, obj, fixed_noise(8, seed=7), steps=4, backbone=backbone))
    assert first.min() >= -1 and first.max() <= 1
