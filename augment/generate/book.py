"""The generate driver's running account of an arm: ``_info.json``, ``acceptance.json`` and the
summary's figures, kept from the shards the driver writes instead of re-read from every manifest.

Why: rebuilding these from the manifests after every shard costs one read per done shard, so a
run of N shards made ~N²/2 manifest reads (1300 shards: ~850,000). Here each manifest is read
**once**, on resume (the shards done when the stage starts, :meth:`ArmBook.seed`); every shard
written afterwards adds its own facts from what the driver already holds (the worker's samples
and draws, :class:`~augment.io.shards.ShardWritten`). The files are rewritten atomically every
``every_shards`` shards or ``every_seconds`` seconds, whichever comes first, and at the end.

The manifests stay the truth: a crash between two writes leaves an ``_info.json`` / ``acceptance.json``
that lags behind them (``augment verify`` says so), and the resume rebuilds both from the
manifests before writing them again. The final files are the ones the manifests give, byte for
byte: the same shards and lengths, the same per-class sums, and the mean guide confidence summed
in the same order as a table of all manifests (shards in index order, rows in shard order,
float32 values as stored), which :class:`_OrderedMean` keeps without holding every value.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from augment.errors import AugmentError
from augment.generate.rejection import ClassAcceptance, RejectionStats
from augment.io.atomic import atomic_write_json
from augment.io.rundir import ArmDir
from augment.io.shards import ShardWritten, SynthSample, done_shards, write_info

__all__ = ["ArmBook", "ShardFacts", "arm_acceptance", "read_shard_facts", "write_acceptance"]

#: write ``_info.json`` / ``acceptance.json`` at least this often while generating (and at the end)
EVERY_SHARDS = 1000
EVERY_SECONDS = 10.0


@dataclass
class ShardFacts:
    """What the book needs of one shard: its row count, its guide confidences (float32, as the
    manifest stores them, nulls left out, in row order) and its draws under ``--min-confidence``."""

    rows: int
    confidences: array
    rejection: RejectionStats | None

    @classmethod
    def of_written(cls, written: ShardWritten, samples: list[SynthSample],
                   rejection: RejectionStats | None) -> ShardFacts:
        """The facts of a shard the driver just wrote (``written``, from ``samples``): no file read."""
        conf = array("f", (s.meta.guide_confidence for s in samples if s.meta.guide_confidence is not None))
        return cls(written.num_samples, conf, rejection)


def read_shard_facts(path: Path) -> ShardFacts:
    """One manifest's facts, in one read (its footer and one column); AugmentError naming the file
    when it cannot be read."""
    try:
        pf = pq.ParquetFile(path)
        conf = array("f")
        if "guide_confidence" in pf.schema_arrow.names:
            col = pf.read(columns=["guide_confidence"]).column("guide_confidence")
            conf.extend(v for v in col.to_pylist() if v is not None)
        return ShardFacts(pf.metadata.num_rows, conf, RejectionStats.from_metadata(pf.schema_arrow.metadata))
    except (OSError, ValueError, pa.ArrowException) as e:
        reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
        raise AugmentError(f"manifest {path} cannot be read ({reason}); `augment verify` lists what is broken, and "
                           "re-running `augment generate` with the same --out redoes that shard") from None


def arm_acceptance(arm: ArmDir, plan: Iterable[int]) -> RejectionStats | None:
    """The draws per class summed over the done shards of ``plan`` (None: none drawn with
    rejection), read from their manifests: the truth :meth:`ArmBook.acceptance` keeps up with."""
    total: RejectionStats | None = None
    for i in sorted(done_shards(arm.path) & set(plan)):
        stats = RejectionStats.from_metadata(pq.read_schema(arm.manifest_path(i)).metadata)
        if stats is not None:
            total = stats if total is None else total.merged(stats)
    return total


def write_acceptance(arm: ArmDir, stats: RejectionStats, class_names: list[str]) -> None:
    """``acceptance.json``: per class its slots, kept images, draws and acceptance rate, and the totals."""
    classes = [{**a.to_json(), "class_name": class_names[a.class_index]} for a in stats.classes]
    slots, kept, drawn = (sum(getattr(a, f) for a in stats.classes) for f in ("slots", "accepted", "attempts"))
    atomic_write_json(arm.acceptance_json, {
        "min_confidence": stats.min_confidence, "max_attempts": stats.max_attempts, "classes": classes,
        "total": {"slots": slots, "accepted": kept, "attempts": drawn, "rate": round(kept / drawn, 6) if drawn else None},
    })


class _OrderedMean:
    """The mean of all values summed left to right in shard-index order (what ``sum()`` over a
    table of all manifests gives, to the last bit), while shards arrive in any order: a shard's
    values wait only until every lower index has arrived (or is known never to come)."""

    def __init__(self, indices: Iterable[int]) -> None:
        self._order = sorted(set(indices))
        self._next = 0
        self._waiting: dict[int, array | None] = {}
        self._sum = 0.0
        self._count = 0

    def add(self, index: int, values: array | None) -> None:
        """Shard ``index``'s values (None: the shard does not exist in the end)."""
        self._waiting[index] = values
        while self._next < len(self._order) and self._order[self._next] in self._waiting:
            vals = self._waiting.pop(self._order[self._next])
            self._next += 1
            if vals is not None:
                for v in vals:
                    self._sum += v
                self._count += len(vals)

    def mean(self) -> float | None:
        for i in self._order[self._next:]:  # shards never resolved (an interrupted run): left out
            self.add(i, self._waiting.get(i))
        return self._sum / self._count if self._count else None


class ArmBook:
    """An arm's ``_info.json``, acceptance and mean confidence during one generate call.

    ``plan``: the shard indices of the plan (acceptance counts only those); ``acceptance``: keep
    the draws (``--min-confidence``); ``clock``: seconds, for the time-based writes (tests pass
    their own; ``every_shards`` / ``every_seconds``: None for :data:`EVERY_SHARDS` / :data:`EVERY_SECONDS`)."""

    def __init__(self, arm: ArmDir, name: str, plan: Iterable[int], class_names: list[str], acceptance: bool,
                 every_shards: int | None = None, every_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.arm, self.name, self.class_names = arm, name, class_names
        self.plan = set(plan)
        self.keeps_acceptance = acceptance
        self.every_shards = EVERY_SHARDS if every_shards is None else every_shards
        self.every_seconds = EVERY_SECONDS if every_seconds is None else every_seconds
        self.clock = clock
        self.lengths: dict[int, int] = {}  # done shard -> rows (what _info.json lists)
        self._before: dict[int, ShardFacts] = {}  # shards being redone: their facts if the redo fails
        self._classes: dict[int, list[int]] = {}  # class -> [slots, accepted, attempts] over the plan's done shards
        self._first: tuple[int, RejectionStats] | None = None  # the lowest contributing shard
        self._contributors = 0
        self._mean = _OrderedMean(())
        self._unwritten = 0
        self._last_write = clock()

    # ------------------------------------------------------------------------------------ input

    def seed(self, done: set[int], todo: set[int]) -> None:
        """Start from the manifests of the shards done now (``done``, read once each); the ones in
        ``todo`` (redone under ``--force``) count only if their redo fails."""
        self._mean = _OrderedMean(done | todo)
        for i in sorted(done):
            facts = read_shard_facts(self.arm.manifest_path(i))
            self.lengths[i] = facts.rows
            if i in todo:
                self._before[i] = facts
            else:
                self._count(i, facts)

    def wrote(self, index: int, facts: ShardFacts) -> None:
        """Shard ``index`` was written with ``facts``; writes the files when they are due."""
        self._before.pop(index, None)
        self.lengths[index] = facts.rows
        self._count(index, facts)
        self._unwritten += 1
        if self._unwritten >= self.every_shards or self.clock() - self._last_write >= self.every_seconds:
            self.write()

    def failed(self, index: int) -> None:
        """Shard ``index`` was not written: what was there before (if anything) stays."""
        before = self._before.pop(index, None)
        if before is None:
            self._mean.add(index, None)
        else:
            self._count(index, before)

    def _count(self, index: int, facts: ShardFacts) -> None:
        self._mean.add(index, facts.confidences)
        if not self.keeps_acceptance or index not in self.plan or facts.rejection is None:
            return
        for a in facts.rejection.classes:
            tot = self._classes.setdefault(a.class_index, [0, 0, 0])
            tot[0] += a.slots
            tot[1] += a.accepted
            tot[2] += a.attempts
        self._contributors += 1
        if self._first is None or index < self._first[0]:
            self._first = (index, facts.rejection)

    # ----------------------------------------------------------------------------------- output

    def acceptance(self) -> RejectionStats | None:
        """The draws per class summed over the plan's done shards (None: none drawn with rejection),
        as :func:`augment.generate.runner.arm_acceptance` reads them from the manifests."""
        if self._first is None:
            return None
        first = self._first[1]
        if self._contributors == 1:  # one shard: its own stats, classes in its order
            return first
        return RejectionStats(first.min_confidence, first.max_attempts,
                              tuple(ClassAcceptance(c, *self._classes[c]) for c in sorted(self._classes)))

    def mean_confidence(self) -> float | None:
        """The mean guide confidence over every row of the arm's manifests."""
        return self._mean.mean()

    def write(self) -> None:
        """Write ``_info.json`` (and ``acceptance.json`` under ``--min-confidence``) atomically."""
        write_info(self.arm.path, self.name, self.lengths)
        stats = self.acceptance() if self.keeps_acceptance else None
        if stats is not None:
            write_acceptance(self.arm, stats, self.class_names)
        self._unwritten, self._last_write = 0, self.clock()
