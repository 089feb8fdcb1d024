"""Which sample goes into which shard, and with which seed.

Samples are ordered sample-index-major, class-minor — (c0,s0), (c1,s0), ..., (c0,s1), ... — so
every shard mixes all classes (a downstream shuffle buffer sees them all), and raising
``--per-class`` only appends: full shards stay byte-identical and only the last partial shard and
new ones are written.
"""

from __future__ import annotations

from dataclasses import dataclass

from augment.prompts import render_prompt
from augment.seeds import derive_seed


@dataclass(frozen=True)
class ShardUnit:
    """One work unit: a shard index and its (class_index, sample_index) entries in order."""

    index: int
    entries: tuple[tuple[int, int], ...]


def plan_shards(classes: list[int], per_class: int, shard_size: int) -> list[ShardUnit]:
    order = [(c, i) for i in range(per_class) for c in classes]
    return [ShardUnit(s, tuple(order[a : a + shard_size]))
            for s, a in enumerate(range(0, len(order), shard_size))]


def sample_seed(run_seed: int, class_index: int, sample_index: int, attempt: int = 0) -> int:
    """The noise seed of one sample (``attempt`` > 0: the retries of --min-confidence)."""
    if attempt == 0:
        return derive_seed(run_seed, "generate", class_index, sample_index)
    return derive_seed(run_seed, "generate", class_index, sample_index, attempt)


def sample_prompt(templates: list[str], index: int, token: str, name: str) -> str:
    """The prompt of sample ``index`` of a class (``token`` "" on the baseline arm): the worker
    writes it, the resume and ``verify`` compare a shard's rows with it."""
    return render_prompt(templates[index % len(templates)], token, name)
