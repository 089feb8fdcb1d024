"""Make the synthetic arms a downstream command needs and the run folder lacks.

``augment benchmark`` compares arms of a run folder (:data:`augment.io.rundir.ARMS`); rather than
refuse when one is missing, it builds it the way ``augment build --baseline`` would: the class
tokens first when the token arm is missing, then the shards of each missing arm. Every stage
resumes, so an interrupted build is picked up by the next call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from augment.config import Config
from augment.downstream.benchmark_result import Arm, parse_arm
from augment.errors import AugmentError
from augment.io.rundir import RunDir
from augment.io.shards import shard_urls

__all__ = ["build_missing_arms", "missing_arms"]


def missing_arms(run: RunDir, arms: Sequence[Arm | str]) -> list[str]:
    """The synthetic sources of ``arms`` (benchmark arm specs) whose run-folder arm has no complete
    shards, sorted by name."""
    needed = sorted({a.source for a in (x if isinstance(x, Arm) else parse_arm(x) for x in arms) if a.synthetic})
    return [s for s in needed if not shard_urls(run.arm_dir(s))]


def build_missing_arms(cfg: Config, run: RunDir, arms: Sequence[Arm | str], log: Callable[[str], None]) -> list[str]:
    """Build the arms of ``arms`` that ``run`` lacks (tokens, then shards); returns their names.

    ``cfg`` is the run's resolved :class:`augment.config.Config` with ``cfg.out`` = ``run`` (the
    stages write there). Raises AugmentError naming the first failure; what finished is kept.
    """
    missing = missing_arms(run, arms)
    if not missing:
        return []
    # imported here: the stages pull in the diffusion stack, which a run with its arms never needs
    from augment.generate.runner import run_generate
    from augment.tokens.runner import run_tokens

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
    return missing
