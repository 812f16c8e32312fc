"""ClusterSchedule: deterministic per (seed, step), balanced, peekable, resumable."""

import collections

import pytest

from loli_plugin import ClusterSchedule, LoliConfigError, LoliStateError


@pytest.mark.parametrize("K", [1, 3, 10])
def test_shuffle_visits_every_cluster_once_per_cycle(K):
    s = ClusterSchedule(K, "shuffle", seed=5)
    order = []
    for _ in range(5 * K):
        order.append(s.current)
        s.advance()
    for c in range(5):
        assert sorted(order[c * K : (c + 1) * K]) == list(range(K))
    if K > 2:
        cycles = {tuple(order[c * K : (c + 1) * K]) for c in range(5)}
        assert len(cycles) > 1, "each cycle should be a fresh permutation"


def test_same_seed_same_order_on_every_rank_and_other_seed_differs():
    a, b, c = (ClusterSchedule(10, "shuffle", seed=s) for s in (1, 1, 2))
    assert [a.cluster_at(i) for i in range(100)] == [b.cluster_at(i) for i in range(100)]
    assert [a.cluster_at(i) for i in range(100)] != [c.cluster_at(i) for i in range(100)]
    # random access (a resumed run) gives the same cluster as walking there
    assert ClusterSchedule(10, "shuffle", seed=1, step=57).current == a.cluster_at(57)


def test_random_is_roughly_uniform_and_round_robin_cycles():
    s = ClusterSchedule(4, "random", seed=0)
    counts = collections.Counter(s.cluster_at(i) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 850
    rr = ClusterSchedule(3, "round_robin")
    assert [rr.cluster_at(i) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]


def test_peek_and_advance():
    s = ClusterSchedule(6, "shuffle", seed=9)
    ahead = s.peek(8)
    assert ahead[0] == s.current
    seen = []
    for _ in range(8):
        seen.append(s.current)
        s.advance()
    assert seen == ahead


def test_state_round_trip_and_mismatch():
    s = ClusterSchedule(6, "shuffle", seed=9, step=13)
    t = ClusterSchedule(6, "shuffle", seed=9)
    t.load_state_dict(s.state_dict())
    assert t.step == 13 and t.current == s.current
    with pytest.raises(LoliStateError, match="seed"):
        ClusterSchedule(6, "shuffle", seed=1).load_state_dict(s.state_dict())
    with pytest.raises(LoliStateError, match="strategy"):
        ClusterSchedule(6, "random", seed=9).load_state_dict(s.state_dict())


def test_bad_schedule_options():
    with pytest.raises(LoliConfigError, match="unknown schedule='zigzag'"):
        ClusterSchedule(4, "zigzag")
    with pytest.raises(LoliConfigError, match="clusters"):
        ClusterSchedule(0)
    with pytest.raises(LoliConfigError, match="seed"):
        ClusterSchedule(4, seed="x")
