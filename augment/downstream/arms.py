"""Which synthetic arms a benchmark grid needs and the run folder lacks.

``augment benchmark`` trains on arms of a run folder (:data:`augment.io.rundir.ARMS`) that its
treatments read; rather than refuse when one is missing, :func:`augment.pipeline.build_missing_arms`
builds what these functions find missing: whole-run arms (token, baseline), and the caso arm per
(k, seed) draw of reals (:meth:`~augment.io.rundir.RunDir.caso_draw`).
"""

from __future__ import annotations

from collections.abc import Sequence

from augment.downstream.benchmark_result import PER_DRAW, Treatment, parse_treatment
from augment.io.rundir import RunDir
from augment.io.shards import shard_urls

__all__ = ["missing_arms", "missing_draws"]


def _treatments(treatments: Sequence[Treatment | str]) -> list[Treatment]:
    return [x if isinstance(x, Treatment) else parse_treatment(x) for x in treatments]


def missing_arms(run: RunDir, treatments: Sequence[Treatment | str]) -> list[str]:
    """The whole-run synthetic sources of ``treatments`` (``--arm`` specs) whose run-folder arm has
    no complete shards, sorted by name (per-draw sources: :func:`missing_draws`)."""
    needed = sorted({s for t in _treatments(treatments) for s in t.sources if s not in PER_DRAW})
    return [s for s in needed if not shard_urls(run.arm_dir(s))]


def missing_draws(run: RunDir, treatments: Sequence[Treatment | str],
                  draws: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (k, seed) draws (k > 0) a per-draw treatment needs and ``run`` has no shards for."""
    if not any(t.per_draw for t in _treatments(treatments)):
        return []
    return sorted({(k, s) for k, s in draws if k > 0 and not shard_urls(run.caso_draw(k, s))})
