"""Adaptive rejection sampling under ``--min-confidence``: which seeds a shard draws, which it keeps.

A shard stays the deterministic unit of work. For each class, its planned slots in the shard (the
sample indices :func:`~augment.generate.plan.plan_shards` gives it) are filled from that class's
own **attempt stream** in this shard: draw ``d`` = 0, 1, 2, ... has the fixed seed
:func:`stream_seed` (run seed, class, shard, d). A draw is accepted when the guide gives the class
at least ``min_confidence``; the n-th accepted draw fills the class's n-th slot. The class stops at
its slot count or after ``max_attempts`` x slots draws (its budget in this shard), whichever comes
first. So a shard's content depends only on (run seed, class, shard index, slots, settings), never
on the number of workers, the batch size or on which shards ran before: a resumed run redoes a
shard to the same bytes, and a shard that gains slots (a larger ``--per-class`` on the last,
partial shard) keeps its accepted prefix. The budget is per shard, not per run, so that shards
stay independent; a hard class may use up to ``max_attempts`` x its slots draws in every shard.

The worker draws in rounds (:meth:`ClassStream.schedule` sizes the next round from the acceptance
rate seen so far); draws beyond the last one needed are discarded and not counted, so
:attr:`ClassStream.attempts` does not depend on how the rounds were cut.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from augment.generate.plan import ShardUnit, sample_seed
from augment.io.jsonsafe import require_fields
from augment.seeds import derive_seed

__all__ = ["METADATA_KEY", "ClassAcceptance", "ClassStream", "RejectionStats", "quotas", "stream_seed"]

#: the Parquet key-value metadata entry of a shard's manifest that records its draws (JSON)
METADATA_KEY = "augment.rejection"


def stream_seed(run_seed: int, class_index: int, shard_index: int, draw: int) -> int:
    """The noise seed of draw ``draw`` of class ``class_index``'s attempt stream in shard ``shard_index``."""
    return derive_seed(run_seed, "generate", class_index, "shard", shard_index, "draw", draw)


def plain_seed_fits(run_seed: int, class_index: int, sample_index: int, shard: ShardUnit, seed: int | None,
                    attempts: int | None, max_attempts: int) -> bool:
    """Whether ``seed`` is one a plain (no ``--min-confidence``) shard may hold for this sample: its
    planned seed, or, for a slot redrawn after a NaN/inf image (``attempts`` > 1), a draw of its
    class's attempt stream in that shard (the worker takes them in slot order, so the draw index is
    below the shard's slots x ``max_attempts``). Resume and ``verify`` check seeds through this."""
    if seed == sample_seed(run_seed, class_index, sample_index):
        return True
    if not attempts or attempts <= 1:
        return False
    budget = len(shard.entries) * max(1, max_attempts)
    return any(seed == stream_seed(run_seed, class_index, shard.index, d) for d in range(budget))


@dataclass
class ClassStream:
    """One class's attempt stream in one shard: its slots, its budget and the draws seen so far."""

    class_index: int
    slots: tuple[int, ...]  # the sample indices this shard holds for the class, in order
    budget: int  # draws allowed
    accepted: list[int] = field(default_factory=list)  # accepted draws, in draw order
    drawn: int = 0  # draws scheduled (and, between rounds, scored)

    def record(self, draw: int, ok: bool) -> None:
        """Note the verdict on ``draw`` (draws of a round may arrive in any order)."""
        if ok:
            self.accepted.append(draw)
            self.accepted.sort()

    @property
    def used(self) -> list[int]:
        """The accepted draws that fill slots: the first ``len(slots)`` in draw order."""
        return self.accepted[: len(self.slots)]

    @property
    def full(self) -> bool:
        return len(self.accepted) >= len(self.slots)

    @property
    def attempts(self) -> int:
        """Draws the class consumed: up to its last slot's draw when it filled them, else its budget."""
        return self.used[-1] + 1 if self.full else self.drawn

    def schedule(self, max_attempts: int) -> range:
        """The draws of the next round: enough for the missing slots at the rate seen so far (at
        worst ``1 / max_attempts``), within the budget; empty when the class is done."""
        need = len(self.slots) - len(self.accepted)
        left = self.budget - self.drawn
        if need <= 0 or left <= 0:
            return range(0)
        rate = len(self.accepted) / self.drawn if self.drawn and self.accepted else (1.0 if not self.drawn else 0.0)
        n = min(left, math.ceil(need / max(rate, 1.0 / max_attempts)))
        start, self.drawn = self.drawn, self.drawn + n
        return range(start, start + n)


def quotas(unit: ShardUnit, max_attempts: int) -> list[ClassStream]:
    """The shard's classes (in order of first appearance) with their slots and budgets."""
    slots: dict[int, list[int]] = {}
    for c, i in unit.entries:
        slots.setdefault(c, []).append(i)
    return [ClassStream(c, tuple(s), max_attempts * len(s)) for c, s in slots.items()]


@dataclass(frozen=True)
class ClassAcceptance:
    """One class's draws: ``slots`` asked for, ``accepted`` kept, ``attempts`` drawn (one shard or a whole arm)."""

    class_index: int
    slots: int
    accepted: int
    attempts: int

    @property
    def rate(self) -> float | None:
        """Accepted share of the draws (None before any draw)."""
        return self.accepted / self.attempts if self.attempts else None

    def __add__(self, other: ClassAcceptance) -> ClassAcceptance:
        return ClassAcceptance(self.class_index, self.slots + other.slots, self.accepted + other.accepted,
                               self.attempts + other.attempts)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": None if self.rate is None else round(self.rate, 6)}

    @classmethod
    def from_json(cls, data: Any) -> ClassAcceptance:
        return cls(**require_fields(cls, data, "class acceptance"))


@dataclass(frozen=True)
class RejectionStats:
    """A shard's (or an arm's) draws per class under one ``min_confidence`` / ``max_attempts``."""

    min_confidence: float
    max_attempts: int
    classes: tuple[ClassAcceptance, ...]

    @classmethod
    def of(cls, streams: Iterable[ClassStream], min_confidence: float, max_attempts: int) -> RejectionStats:
        return cls(min_confidence, max_attempts,
                   tuple(ClassAcceptance(s.class_index, len(s.slots), len(s.used), s.attempts) for s in streams))

    def slots(self) -> dict[int, int]:
        """Slots per class: what a shard's plan asked for (the done check compares it)."""
        return {a.class_index: a.slots for a in self.classes}

    def merged(self, other: RejectionStats) -> RejectionStats:
        """Both stats summed per class, in class-index order."""
        by: dict[int, ClassAcceptance] = {}
        for a in (*self.classes, *other.classes):
            by[a.class_index] = by[a.class_index] + a if a.class_index in by else a
        return RejectionStats(self.min_confidence, self.max_attempts, tuple(by[c] for c in sorted(by)))

    def to_json(self) -> dict[str, Any]:
        return {"min_confidence": self.min_confidence, "max_attempts": self.max_attempts,
                "classes": [a.to_json() for a in self.classes]}

    @classmethod
    def from_json(cls, data: Any) -> RejectionStats:
        fields_ = require_fields(cls, data, "rejection stats")
        return cls(float(fields_["min_confidence"]), int(fields_["max_attempts"]),
                   tuple(ClassAcceptance.from_json(a) for a in fields_["classes"]))

    def metadata(self) -> dict[str, str]:
        """The manifest's key-value metadata entry (sorted JSON: byte-stable)."""
        return {METADATA_KEY: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: dict[bytes, bytes] | None) -> RejectionStats | None:
        """The entry written by :meth:`metadata`, or None (a shard generated without rejection)."""
        raw = (metadata or {}).get(METADATA_KEY.encode())
        return cls.from_json(json.loads(raw)) if raw else None
