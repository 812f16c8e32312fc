"""Every bad input the core can be given, with the message the user reads (before any step, and
without touching an optimizer that was already set up)."""

from __future__ import annotations

import io

import pytest
import torch

from loli_plugin import LoliClustered, LoliConfigError, LoliStateError, loli_loss, parse_loss_weights
from loli_plugin.errors import LoliDependencyError
from loli_plugin.sampling import DiscreteUniform


def params():
    return [torch.nn.Parameter(torch.ones(3))]


def stepped(**kw):
    p = params()
    opt = LoliClustered(p, lr=1e-2, **kw)
    p[0].grad = torch.ones(3)
    opt.step()
    return opt


def saved(**kw) -> dict:
    buf = io.BytesIO()
    torch.save(stepped(**kw).state_dict(), buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def truncated_file(tmp_path):
    path = tmp_path / "opt.pt"
    torch.save(stepped(clusters=2).state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


CASES = [
    ("clusters 0", lambda: LoliClustered(params(), clusters=0), LoliConfigError, "clusters must be >= 1"),
    ("clusters negative", lambda: LoliClustered(params(), clusters=-3), LoliConfigError, "clusters must be >= 1"),
    (
        "clusters non-integer",
        lambda: LoliClustered(params(), clusters=2.5),
        LoliConfigError,
        "clusters must be a positive integer",
    ),
    (
        "clusters bool",
        lambda: LoliClustered(params(), clusters=True),
        LoliConfigError,
        "clusters must be a positive integer",
    ),
    (
        "clusters above admissible timesteps",
        lambda: DiscreteUniform(0, 8).sample_cluster(1, 0, 9),
        LoliConfigError,
        "clusters=9 is larger than the 8 distinct timesteps",
    ),
    ("loss weight negative", lambda: parse_loss_weights({"mse": -1}), LoliConfigError, "loli_loss_weights"),
    ("loss weights all zero", lambda: parse_loss_weights("mse=0,l1=0,cos=0"), LoliConfigError, "all weights are zero"),
    ("loss weights malformed", lambda: parse_loss_weights("mse:0.4;l1"), LoliConfigError, "loli_loss_weights"),
    (
        "loss weight unknown term",
        lambda: loli_loss(torch.ones(1, 2), torch.ones(1, 2), weights={"hubber": 1.0}),
        LoliConfigError,
        "hubber",
    ),
    ("unknown inner optimizer", lambda: LoliClustered(params(), inner="AdamQ"), LoliConfigError, "AdamQ"),
    (
        "schedule-free inner optimizer",
        lambda: LoliClustered(params(), inner="AdamWScheduleFree"),
        LoliConfigError,
        "schedule-free",
    ),
    (
        "AdaFactor with its own relative step",
        lambda: LoliClustered(params(), inner="AdaFactor", lr=1e-3, relative_step=True),
        LoliConfigError,
        "relative_step=True / warmup_init=True make Adafactor compute its own learning rate",
    ),
    (
        "unknown schedule",
        lambda: LoliClustered(params(), schedule="sometimes"),
        LoliConfigError,
        "unknown schedule='sometimes'",
    ),
    (
        "checkpoint with another K",
        lambda: stepped(clusters=3).load_state_dict(saved(clusters=2)),
        LoliStateError,
        "clusters=2 but this run uses clusters=3; set clusters=2",
    ),
    (
        "checkpoint with another inner",
        lambda: stepped(inner="SGD").load_state_dict(saved(inner="AdamW")),
        LoliStateError,
        "inner='AdamW' but this run uses inner='SGD'",
    ),
    (
        "plain optimizer's checkpoint",
        lambda: stepped().load_state_dict(torch.optim.AdamW(params()).state_dict()),
        LoliStateError,
        "was not saved by LoliClustered",
    ),
    (
        "checkpoint without state",
        lambda: stepped(clusters=2).load_state_dict({"loli": saved(clusters=2)["loli"]}),
        LoliStateError,
        "incomplete",
    ),
]


@pytest.mark.parametrize("name, make, error, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(name, make, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        make()


def test_missing_optional_package_names_the_pip_package(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "lion_pytorch", None)
    with pytest.raises(LoliDependencyError, match="pip install lion-pytorch"):
        LoliClustered(params(), inner="Lion")


def test_truncated_file_fails_on_load_and_leaves_the_optimizer_untouched(tmp_path):
    opt = stepped(clusters=2)
    before = {k: {id(p): {key: v.clone() for key, v in st.items()} for p, st in opt.bank(k).items()} for k in range(2)}
    # torch's own error for a cut file (PytorchStreamReader, a RuntimeError): it never reaches the optimizer
    with pytest.raises(RuntimeError):
        opt.load_state_dict(torch.load(truncated_file(tmp_path), weights_only=True))
    after = {k: {id(p): st for p, st in opt.bank(k).items()} for k in range(2)}
    assert all(
        torch.equal(before[k][i][key], after[k][i][key]) for k in before for i in before[k] for key in before[k][i]
    )


def test_nan_gradients_keep_the_inner_behaviour_and_spare_other_banks():
    p = params()
    opt = LoliClustered(p, inner="AdamW", clusters=2, schedule="round_robin", lr=1e-2)
    ref_p = [torch.nn.Parameter(torch.ones(3))]
    ref = torch.optim.AdamW(ref_p, lr=1e-2)
    p[0].grad = torch.ones(3)
    opt.step()  # bank 0
    bank0 = {key: v.clone() for key, v in opt.bank(0)[p[0]].items()}
    p[0].grad = torch.tensor([float("nan"), 1.0, float("inf")])
    ref_p[0].grad = p[0].grad.clone()
    opt.step()  # bank 1 gets the bad gradient, as plain AdamW would
    ref.step()
    assert torch.equal(torch.isnan(opt.bank(1)[p[0]]["exp_avg"]), torch.isnan(ref.state[ref_p[0]]["exp_avg"]))
    assert all(torch.equal(bank0[key], v) for key, v in opt.bank(0)[p[0]].items())  # bank 0 untouched
