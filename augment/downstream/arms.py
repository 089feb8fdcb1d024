"""Make the synthetic arms a downstream command needs and the run folder lacks.

``augment benchmark`` compares arms of a run folder (:data:`augment.io.rundir.ARMS`); rather than
refuse when one is missing, it builds it the way ``augment build --baseline`` would: the class
tokens first when the token arm is missing, then the shards of each missing arm. The caso arm is
built once per (k, seed) draw of reals the grid trains on (``augment caso`` on exactly that draw,
into :meth:`~augment.io.rundir.RunDir.caso_draw`), so its embeddings and edits see no other real.
Every stage resumes, so an interrupted build is picked up by the next call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from augment.config import Config
from augment.downstream.benchmark_result import PER_DRAW, Treatment, parse_treatment
from augment.errors import AugmentError
from augment.io.rundir import RunDir
from augment.io.shards import shard_urls

__all__ = ["build_missing_arms", "missing_arms", "missing_draws"]


def _arms(arms: Sequence[Treatment | str]) -> list[Treatment]:
    return [x if isinstance(x, Treatment) else parse_treatment(x) for x in arms]


def missing_arms(run: RunDir, arms: Sequence[Treatment | str]) -> list[str]:
    """The whole-run synthetic sources of ``arms`` (benchmark arm specs) whose run-folder arm has no
    complete shards, sorted by name (per-draw sources: :func:`missing_draws`)."""
    needed = sorted({s for a in _arms(arms) for s in a.sources if s not in PER_DRAW})
    return [s for s in needed if not shard_urls(run.arm_dir(s))]


def missing_draws(run: RunDir, arms: Sequence[Treatment | str], draws: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """The (k, seed) draws (k > 0) a per-draw arm of ``arms`` needs and ``run`` has no shards for."""
    if not any(a.per_draw for a in _arms(arms)):
        return []
    return sorted({(k, s) for k, s in draws if k > 0 and not shard_urls(run.caso_draw(k, s))})


def build_missing_arms(cfg: Config, run: RunDir, arms: Sequence[Treatment | str], log: Callable[[str], None],
                       draws: Sequence[tuple[int, int]] = ()) -> list[str]:
    """Build the arms of ``arms`` that ``run`` lacks (tokens, then shards; the caso arm of each
    (k, seed) in ``draws``); returns their names.

    ``cfg`` is the run's resolved :class:`augment.config.Config` with ``cfg.out`` = ``run`` (the
    stages write there). Raises AugmentError naming the first failure; what finished is kept.
    """
    missing = missing_arms(run, arms)
    todo_draws = missing_draws(run, arms, draws)
    if not missing and not todo_draws:
        return []
    # imported here: the stages pull in the diffusion stack, which a run with its arms never needs
    from augment.generate.caso_runner import run_caso
    from augment.generate.runner import run_generate
    from augment.tokens.runner import run_tokens

    if missing:
        log(f"benchmark: {' and '.join(missing)} arm missing in {run}; building it first "
            "(as `augment build --baseline`; --no-build refuses instead)")
    if "token" in missing:
        t = run_tokens(cfg)
        if t.failed:
            raise AugmentError(f"{len(t.failed)} token(s) failed, first: {t.failed[0]}; fix it and re-run "
                               "(finished tokens are kept)")
    for arm in missing:
        g = run_generate(cfg, baseline=arm == "baseline")
        if g.failed:
            raise AugmentError(f"{arm} arm: {len(g.failed)} shard(s) failed, first: {g.failed[0]}; re-run to "
                               "retry them (finished shards are kept)")
    for k, seed in todo_draws:
        log(f"benchmark: caso edits of the k={k} seed={seed} draw of reals missing; building them "
            f"(augment caso on that draw only) into {run.caso_draw(k, seed)}")
        draw_cfg = dataclasses.replace(cfg, caso=dataclasses.replace(cfg.caso, k=k, kshot_seed=seed, split="train"))
        c = run_caso(draw_cfg, arm=run.caso_draw(k, seed))
        if c.failed:
            raise AugmentError(f"caso k={k} seed={seed}: {len(c.failed)} class(es) failed, first: {c.failed[0]}; "
                               "re-run to retry them (finished classes are kept)")
    return missing + (["caso"] if todo_draws else [])
