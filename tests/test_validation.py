"""Validation (loli_plugin.validation) in a plain loop: a host whose sampler draws the quantile it is told,
whose noise comes from the global torch RNG. The values are bit-identical while the weights stay, the
noise of a held-out sample does not depend on the order of the set, the host's random streams continue
untouched, the record describes the set and the clusters, and the state resumes the curves."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from loli_plugin import LoliStateError
from loli_plugin.sampling import LogitNormal
from loli_plugin.validation import RECORD_TAG, Validation, batch_digest, fingerprint

K = 4
DIST = LogitNormal(0.0, 1.0)


class Host:
    """What an adapter hands the validation: the trainer's forward and loss on a batch, with its sampler
    drawing the quantile (k + position) / K (as ``run.probing(k, position)`` makes the real ones do) and
    its noise from the global RNG (as every trainer draws it)."""

    def __init__(self):
        torch.manual_seed(0)
        self.model = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Dropout(0.5), torch.nn.Linear(16, 4))
        self.seen = None
        self.calls = 0

    def evaluate(self, batch, k, position):
        self.calls += 1
        t = DIST.quantile(torch.tensor([(k + position) / K], dtype=torch.float64)).float()
        self.seen = float(t)
        t = t.expand(len(batch["latents"])).view(-1, 1)
        noise = torch.randn_like(batch["latents"])  # the trainer's own draw: fixed by the reseed
        xt = (1 - t) * batch["latents"] + t * noise
        return ((self.model(torch.cat([xt, t], dim=1)) - noise) ** 2).mean(dim=1)

    def run_pass(self, validation, batches, step, reduce=None):
        for batch in batches:
            validation.add(
                lambda k, pos, seed, b=batch: self.evaluate(b, k, pos),
                batch,
                len(batch["latents"]),
                modules=(self.model,),
                reduce=reduce,
                seen=lambda: self.seen,
            )
        return validation.finish(step)


def held_out(n=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [{"latents": torch.randn(2, 4, generator=g)} for _ in range(n)]


def test_unchanged_weights_give_bit_identical_values_and_tags():
    host, validation = Host(), Validation(K, seed=7)
    first = host.run_pass(validation, held_out(), step=10)
    second = host.run_pass(validation, held_out(), step=20)
    assert first == second  # exact floats: same samples, noise, timesteps, eval mode
    assert sorted(first) == [f"val/cluster_{k:02d}" for k in range(K)] + ["val/mean", "val/normalized"]
    assert first["val/normalized"] == 1.0
    assert len({first[f"val/cluster_{k:02d}"] for k in range(K)}) == K
    assert host.model.training  # the model's mode is put back
    assert validation.passes == 2 and validation.last == 20


def test_the_noise_of_a_sample_does_not_depend_on_the_order_of_the_set():
    host = Host()
    batches = held_out(4)
    forward = host.run_pass(Validation(K, seed=7), batches, step=1)
    backward = host.run_pass(Validation(K, seed=7), list(reversed(batches)), step=1)
    for tag in forward:  # the same per-sample losses, summed in another order
        assert backward[tag] == pytest.approx(forward[tag], rel=1e-6)
    other_seed = host.run_pass(Validation(K, seed=8), batches, step=1)
    assert other_seed["val/mean"] != forward["val/mean"]


def test_the_hosts_random_streams_continue_untouched():
    host, validation = Host(), Validation(K)

    def draws():
        return torch.rand(3), random.random(), np.random.rand()

    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    expected = draws()
    torch.manual_seed(5), random.seed(5), np.random.seed(5)
    host.run_pass(validation, held_out(), step=1)
    got = draws()
    assert torch.equal(got[0], expected[0]) and got[1:] == expected[1:]


def test_the_values_move_with_the_weights():
    host, validation = Host(), Validation(K)
    before = host.run_pass(validation, held_out(), step=0)
    with torch.no_grad():
        for p in host.model.parameters():
            p.mul_(0.5)
    after = host.run_pass(validation, held_out(), step=1)
    assert after["val/mean"] != before["val/mean"]
    assert after["val/normalized"] != 1.0
    ratios = [after[f"val/cluster_{k:02d}"] / before[f"val/cluster_{k:02d}"] for k in range(K)]
    assert after["val/normalized"] == pytest.approx(sum(ratios) / K)


def test_the_mean_over_ranks_is_what_is_logged():
    host = Host()
    plain = host.run_pass(Validation(K), held_out(), step=1)
    doubled = host.run_pass(Validation(K), held_out(), step=1, reduce=lambda v: v * 2)  # a stand-in reduce
    assert doubled["val/mean"] == pytest.approx(2 * plain["val/mean"])


def test_the_record_names_the_set_the_clusters_and_their_noise_range():
    host, validation = Host(), Validation(K, seed=3, description="logit_normal(0, 1)")
    assert validation.take_record() is None  # nothing measured yet
    calls_before = host.calls
    host.run_pass(validation, held_out(3), step=1)
    # the first pass measures each cluster's edges once, on the first batch (2 draws per cluster)
    assert host.calls - calls_before == 3 * K + 2 * K == validation.forwards
    record = json.loads(validation.take_record())
    assert validation.take_record() is None  # once
    assert record["clusters"] == K and record["seed"] == 3 and record["distribution"] == "logit_normal(0, 1)"
    assert record["samples"] == 6 and record["validation_set"] == fingerprint([batch_digest(b) for b in held_out(3)])
    lows, mids, highs = zip(*record["timesteps"])
    expected_mids = DIST.quantile((torch.arange(K, dtype=torch.float64) + 0.5) / K).float().tolist()
    assert list(mids) == pytest.approx(expected_mids)
    assert all(lo < m < hi for lo, m, hi in record["timesteps"])
    assert all(highs[k] == pytest.approx(lows[k + 1], abs=0.01) for k in range(K - 1))  # adjacent slices
    host.calls = 0
    host.run_pass(validation, held_out(3), step=2)
    assert host.calls == 3 * K  # later passes: K draws per batch
    assert RECORD_TAG == "loli/validation"


def test_another_set_gives_another_fingerprint_and_restarts_normalized(capsys):
    host, validation = Host(), Validation(K)
    host.run_pass(validation, held_out(seed=1), step=1)
    line = capsys.readouterr().err  # one line per pass: its size and time
    assert line.startswith(f"loli-plugin: validation at step 1: {K} timesteps x 6 held-out samples (")
    first = validation.set_fingerprint
    logs = host.run_pass(validation, held_out(seed=2), step=2)
    assert validation.set_fingerprint != first and logs["val/normalized"] == 1.0
    assert "the validation set changed" in capsys.readouterr().err


def test_schedule():
    every = Validation(K, every=5)
    assert every.due(5) and every.due(10) and not every.due(7) and every.due(7, final=True)
    every.last = 10
    assert not every.due(10) and not every.due(10, final=True)
    own = Validation(K)  # the trainer's own schedule: only the end of training is the plugin's
    assert not own.due(100) and own.due(100, final=True)
    with pytest.raises(ValueError):
        Validation(K, every=0)


def test_a_rank_that_does_not_log_starts_the_next_pass_clean():
    host, validation = Host(), Validation(K)
    host.run_pass(validation, held_out(), step=1)
    validation.add(lambda k, p, seed: host.evaluate(held_out(1)[0], k, p), held_out(1)[0], 2)
    assert validation.in_pass
    validation.discard()
    assert not validation.in_pass and validation.finish(2) == {}


def test_resume_continues_the_curves():
    host, validation = Host(), Validation(K, seed=3)
    first = host.run_pass(validation, held_out(), step=4)
    with torch.no_grad():
        for p in host.model.parameters():
            p.mul_(0.9)
    state = validation.state_dict()
    resumed = Validation(K, seed=0)
    resumed.load_state_dict(state)
    assert resumed.seed == 3 and resumed.last == 4 and resumed.reference == validation.reference
    straight = host.run_pass(validation, held_out(), step=8)
    after_resume = host.run_pass(resumed, held_out(), step=8)
    assert after_resume == straight and after_resume["val/normalized"] != 1.0
    assert first["val/normalized"] == 1.0
    with pytest.raises(LoliStateError, match="clusters"):
        Validation(K + 1).load_state_dict(state)
    with pytest.raises(LoliStateError, match="not a validation state"):
        Validation(K).load_state_dict({**state, "kind": "probe"})


def test_any_dtype_and_batch_layout_can_be_identified():
    a = {"latent_image": torch.ones(1, 4, 2, 2, dtype=torch.bfloat16)}
    b = {"latent_image": torch.ones(1, 4, 2, 2, dtype=torch.bfloat16) * 2}
    assert batch_digest(a) != batch_digest(b) and batch_digest(a) == batch_digest(dict(a))
    assert batch_digest({"x": torch.zeros(2), "y": torch.ones(2)}) != batch_digest({"x": torch.zeros(2)})
    with pytest.raises(TypeError, match="no tensor"):
        batch_digest({"caption": "a"})


def test_compare_uses_the_names_validation_logs():
    from loli_plugin import compare, validation

    assert (compare.PREFIX, compare.RECORD_TAG) == (validation.PREFIX, validation.RECORD_TAG)


def test_the_run_tells_the_samplers_the_fixed_quantile_and_keeps_the_timestep_they_drew():
    from loli_plugin.run import LoliRun

    run = LoliRun(clusters=4)
    run.note_timesteps(torch.tensor([5.0]))
    assert run.probe_timestep is None  # a training draw is not noted
    with run.probing(2, position=0.001):
        assert run.fixed_quantile() == pytest.approx(2.001 / 4)
        run.note_timesteps(torch.tensor([[700.0], [700.0]]))
        assert run.probe_timestep == 700.0
    assert run.probe_cluster is None and run.probe_position == 0.5
    with run.probing(1):
        assert run.fixed_quantile() == 0.375 and run.probe_timestep is None  # reset for each fixed draw
    validation = Validation(4)
    validation.pending = {"val/mean": 1.0}
    run.validation = validation
    assert run.logs() == {"val/mean": 1.0} and run.logs() == {}  # once
