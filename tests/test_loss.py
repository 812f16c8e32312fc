"""loli_loss against its direct formula, with masks, gradients, zero vectors and weight validation."""

import pytest
import torch

from loli_plugin import DEFAULT_WEIGHTS, LoliConfigError, loli_loss, parse_loss_weights


def direct(pred, target, w, dim=1):
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=dim, eps=1e-12).unsqueeze(dim)
    return w["mse"] * (pred - target) ** 2 + w["l1"] * (pred - target).abs() + w["cos"] * (1 - cos)


def tensors(shape=(3, 4, 5, 6), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=dtype), torch.randn(shape, generator=g, dtype=dtype)


def test_matches_direct_formula_per_element():
    p, t = tensors()
    out = loli_loss(p, t)
    assert out.shape == p.shape
    torch.testing.assert_close(out, direct(p, t, DEFAULT_WEIGHTS))
    w = {"mse": 1.0, "l1": 0.25, "cos": 2.0}
    torch.testing.assert_close(loli_loss(p, t, weights=w), direct(p, t, w))
    torch.testing.assert_close(loli_loss(p, t, reduction="mean"), direct(p, t, DEFAULT_WEIGHTS).mean())
    torch.testing.assert_close(loli_loss(p, t, reduction="sum"), direct(p, t, DEFAULT_WEIGHTS).sum())


def test_pure_terms_reduce_to_known_losses():
    p, t = tensors()
    torch.testing.assert_close(loli_loss(p, t, {"mse": 1.0}), torch.nn.functional.mse_loss(p, t, reduction="none"))
    torch.testing.assert_close(loli_loss(p, t, "l1=1"), torch.nn.functional.l1_loss(p, t, reduction="none"))


def test_sequence_latents_use_last_dim():
    p, t = tensors((2, 16, 64))
    out = loli_loss(p, t, dim=-1)
    torch.testing.assert_close(out, direct(p, t, DEFAULT_WEIGHTS, dim=-1))
    # the cosine term is constant along the compared dim
    cos_only = loli_loss(p, t, {"cos": 1.0}, dim=-1)
    assert torch.allclose(cos_only, cos_only[..., :1].expand_as(cos_only))


def test_masked_loss_and_gradients_match_direct():
    p, t = tensors((2, 4, 8, 8))
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(3)) > 0.5).double()
    p1 = p.clone().requires_grad_()
    p2 = p.clone().requires_grad_()
    (loli_loss(p1, t) * mask).mean(dim=(1, 2, 3)).sum().backward()
    (direct(p2, t, DEFAULT_WEIGHTS) * mask).mean(dim=(1, 2, 3)).sum().backward()
    torch.testing.assert_close(p1.grad, p2.grad)
    assert torch.autograd.gradcheck(
        lambda x: loli_loss(x, t[:1, :, :2, :2]), (p[:1, :, :2, :2].clone().requires_grad_(),)
    )


def test_zero_vectors_are_finite_with_finite_gradients():
    p = torch.zeros(2, 4, 3, 3, requires_grad=True)
    t = torch.zeros(2, 4, 3, 3)
    t[0] = 1.0
    out = loli_loss(p, t)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(p.grad).all()


@pytest.mark.parametrize(
    "weights, message",
    [
        ({"mse": -0.1}, "must be finite and >= 0"),
        ({"mse": 0.0, "l1": 0.0}, "all weights are zero"),
        ({"huber": 1.0}, "unknown loss term 'huber'"),
        ("mse=0.4,l1", "not of the form name=value"),
        ("mse=abc", "not a number"),
        ({"mse": float("nan")}, "finite"),
        ({}, "at least one term"),
    ],
)
def test_bad_weights_name_the_option(weights, message):
    with pytest.raises(LoliConfigError, match=message):
        parse_loss_weights(weights)


def test_aliases_and_string_form():
    assert parse_loss_weights("mse=0.4, mae=0.4, cosine=0.2") == DEFAULT_WEIGHTS
    assert parse_loss_weights(None) == DEFAULT_WEIGHTS


def test_shape_mismatch_and_bad_reduction():
    p, t = tensors()
    with pytest.raises(ValueError, match="same shape"):
        loli_loss(p, t[:, :2])
    with pytest.raises(LoliConfigError, match="reduction"):
        loli_loss(p, t, reduction="max")
