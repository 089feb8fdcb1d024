"""The attempt streams of rejection sampling, without a model: budgets, schedule independence,
the record kept in a manifest's metadata."""

from __future__ import annotations

import random

import pytest

from augment.generate.plan import plan_shards
from augment.generate.rejection import METADATA_KEY, ClassStream, RejectionStats, quotas, stream_seed


def _run(stream: ClassStream, verdict, max_attempts: int, cap: int | None = None) -> ClassStream:
    """Draw rounds until done; ``cap`` cuts every round short (another batch schedule)."""
    while True:
        draws = list(stream.schedule(max_attempts))
        if not draws:
            return stream
        if cap is not None and len(draws) > cap:  # give the unscored draws back
            stream.drawn -= len(draws) - cap
            draws = draws[:cap]
        for d in reversed(draws):  # verdicts may arrive in any order
            stream.record(d, verdict(d))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_what_is_kept_does_not_depend_on_how_the_rounds_are_cut(rate):
    rng = random.Random(3)
    ok = {d: rng.random() < rate for d in range(100)}
    results = []
    for cap in (None, 1, 3, 7):
        s = _run(ClassStream(0, (0, 1, 2, 3), budget=20), ok.__getitem__, 5, cap)
        results.append((s.used, s.attempts))
    assert all(r == results[0] for r in results)
    used, attempts = results[0]
    accepted = [d for d in range(20) if ok[d]]
    assert used == accepted[:4]  # the first accepted draws, in draw order
    assert attempts == (accepted[3] + 1 if len(accepted) >= 4 else 20)  # never past the budget


def test_quotas_follow_the_shard_plan_and_the_budget_is_per_slot():
    unit = plan_shards([2, 5], per_class=3, shard_size=4)[1]  # (2,2), (5,2)
    assert [(s.class_index, s.slots, s.budget) for s in quotas(unit, 4)] == [(2, (2,), 4), (5, (2,), 4)]
    unit0 = plan_shards([2, 5], per_class=3, shard_size=4)[0]
    assert [(s.class_index, s.slots) for s in quotas(unit0, 1)] == [(2, (0, 1)), (5, (0, 1))]


def test_stream_seeds_are_fixed_and_distinct():
    seeds = {stream_seed(0, c, s, d) for c in range(3) for s in range(3) for d in range(50)}
    assert len(seeds) == 450
    assert stream_seed(0, 1, 2, 3) == stream_seed(0, 1, 2, 3) != stream_seed(1, 1, 2, 3)


def test_stats_round_trip_through_manifest_metadata_and_merge():
    a = _run(ClassStream(0, (0, 1), budget=10), lambda d: d % 3 == 0, 5)
    b = _run(ClassStream(1, (0, 1), budget=10), lambda d: False, 5)
    stats = RejectionStats.of([a, b], 0.9, 5)
    meta = stats.metadata()
    back = RejectionStats.from_metadata({k.encode(): v.encode() for k, v in meta.items()})
    assert back == stats and list(meta) == [METADATA_KEY]
    assert RejectionStats.from_metadata({b"other": b"x"}) is None
    assert [(c.accepted, c.attempts, c.rate) for c in stats.classes] == [(2, 4, 0.5), (0, 10, 0.0)]
    total = stats.merged(stats)
    assert [(c.slots, c.accepted, c.attempts) for c in total.classes] == [(4, 4, 8), (4, 0, 20)]
