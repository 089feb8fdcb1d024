"""The composer of stages: what a command runs, in which order, on which pool, with one policy.

Like img2dataset's ``main``, which chains its reader, writer and distributor while the CLI only
parses, this module chains the stages (``augment.tokens.runner``, ``augment.generate.runner``,
``augment.generate.caso_runner``, the benchmark stage) into the commands that run several of them,
and holds the downstream commands as library functions with typed arguments and results:

- :func:`build`: tokens, then the token arm's shards (and the baseline arm's), then verify;
- :func:`build_missing_arms`: the run-folder arms a benchmark grid needs and the run lacks;
- :func:`train`: one classifier on k reals + synthetic sets;
- :func:`guide`: a guidance classifier from the k-shot reals alone (``train`` with no synthetic set),
  for a user who has none;
- :func:`benchmark`: the few-shot grid (building its missing arms first), a stage of its own.

One policy for every chain: the run's set-up is resolved once (:func:`resolve_inputs`: the
classifier is loaded once on the driver) and the stages share one pool (``augment.stage.open_pool``:
Ray joined and models loaded once) and the run folder's lock; a user mistake raises
:class:`~augment.errors.AugmentError` (the CLI: one line, exit 2); a failed unit comes back in
the typed summary (:attr:`ChainSummary.exit_code` 1; the finished units are kept) and stops the
chain where a later stage needs what failed. The CLI parses flags, calls one function here and
prints what it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from augment.config import Config
from augment.downstream.arms import missing_arms, missing_draws
from augment.downstream.benchmark_result import Treatment
from augment.errors import AugmentError
from augment.inputs import RunInputs, resolve_inputs
from augment.io.lock import check_in_place, enclosing_run, keep_lock, run_lock
from augment.io.rundir import RunDir, check_contained, check_creatable
from augment.stage import StageSummary, open_pool

if TYPE_CHECKING:
    from augment.downstream.benchmark import BenchmarkSummary
    from augment.downstream.mixing import MixedDataset
    from augment.downstream.train import TrainResult, TrainSettings
    from augment.generate.runner import GenerateSummary
    from augment.verify import VerifySummary

__all__ = ["BenchmarkRequest", "BenchmarkRun", "BuildResult", "ChainSummary", "RunInputs", "TrainFlags",
           "GuideRequest", "TrainOutcome", "TrainRequest", "benchmark", "build", "build_missing_arms", "guide",
           "resolve_inputs", "train"]

Log = Callable[[str], None]


def _ignore(_: Any) -> None:
    """The default of a report or log callback: nothing is shown."""


@dataclass
class ChainSummary:
    """What a chain of stages did: each stage's summary in the order they ran; ``stopped``: the
    line saying why the chain ended early (a failed unit a later stage needs), else None;
    ``built``: the run-folder arms it made (:func:`build_missing_arms`)."""

    stages: list[Any] = field(default_factory=list)  # StageSummary each (anything with ``failed``)
    stopped: str | None = None
    built: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[str]:
        """Every stage's failure lines, in order."""
        return [line for s in self.stages for line in s.failed]

    @property
    def exit_code(self) -> int:
        """1 when some unit failed (a re-run retries only those), else 0."""
        return 1 if self.failed or self.stopped else 0


@dataclass
class BuildResult(ChainSummary):
    """:func:`build`'s chain, plus verify's verdict on the run folder (None when it stopped early)."""

    verify: VerifySummary | None = None
    seconds: float = 0.0

    @property
    def generate(self) -> GenerateSummary | None:
        """The token arm's generate summary (None when the tokens stopped the build)."""
        return self.stages[1] if len(self.stages) > 1 else None

    @property
    def exit_code(self) -> int:
        return 1 if super().exit_code or (self.verify is not None and self.verify.exit_code) else 0


def build(cfg: Config, baseline: bool | None = None, force: bool = False,
          report: Callable[[StageSummary], None] = _ignore, inputs: RunInputs | None = None) -> BuildResult:
    """Tokens, then generate (and, with ``baseline``, the baseline arm; None: for digits), then
    verify, on one pool, the run folder's lock kept throughout. ``report`` gets each stage's
    summary as it ends. Stops after the tokens when one failed (the shards need every token)."""
    from augment.generate import runner as generate_runner
    from augment.tokens import runner as tokens_runner
    from augment.verify import verify_arms

    start = time.perf_counter()
    baseline = baseline if baseline is not None else cfg.dataset == "digits"
    inputs = inputs or resolve_inputs(cfg)
    result = BuildResult()
    # the first stage takes the run folder's lock; nobody writes between stages
    with keep_lock(cfg.out):
        with open_pool(cfg) as pool:  # one set of workers, models loaded once, for every stage
            t = tokens_runner.run_tokens(cfg, force=force, pool=pool, inputs=inputs)
            result.stages.append(t)
            report(t)
            if t.failed:
                result.stopped = "some tokens failed; fix and re-run (done classes are kept)"
                result.seconds = time.perf_counter() - start
                return result
            for arm in ("token", "baseline") if baseline else ("token",):
                g = generate_runner.run_generate(cfg, baseline=arm == "baseline", force=force, pool=pool, inputs=inputs)
                result.stages.append(g)
                report(g)
        result.verify = verify_arms(RunDir(cfg.out).path)
    result.seconds = time.perf_counter() - start
    return result


def build_missing_arms(cfg: Config, run: RunDir, treatments: Sequence[Treatment | str], log: Log = _ignore,
                       draws: Sequence[tuple[int, int]] = ()) -> ChainSummary:
    """Build the run-folder arms ``treatments`` read and ``run`` lacks, as ``augment build
    --baseline`` would: the tokens when the token arm is missing, then the shards of each missing
    arm, then the caso arm of each (k, seed) in ``draws`` (``augment caso`` on exactly that draw,
    into :meth:`~augment.io.rundir.RunDir.caso_draw`, so its embeddings and edits see no other real).

    ``cfg`` is the run's resolved config with ``cfg.out`` = ``run``. Every stage resumes; a failed
    unit stops the chain with ``stopped`` naming the first one (what finished is kept)."""
    missing = missing_arms(run, treatments)
    todo_draws = missing_draws(run, treatments, draws)
    if not missing and not todo_draws:
        return ChainSummary()
    # imported here: the stages pull in the diffusion stack, which a run with its arms never needs
    from augment.generate import caso_runner
    from augment.generate import runner as generate_runner
    from augment.tokens import runner as tokens_runner

    if missing:
        log(f"benchmark: {' and '.join(missing)} arm missing in {run}; building it first "
            "(as `augment build --baseline`; --no-build refuses instead)")
    inputs = resolve_inputs(cfg)
    chain = ChainSummary(built=missing + (["caso"] if todo_draws else []))
    with keep_lock(run.path), open_pool(cfg) as pool:  # one lock, one pool for all the stages it runs
        if "token" in missing:
            t = tokens_runner.run_tokens(cfg, pool=pool, inputs=inputs)
            chain.stages.append(t)
            if t.failed:
                chain.stopped = (f"{len(t.failed)} token(s) failed, first: {t.failed[0]}; fix it and re-run "
                                 "(finished tokens are kept)")
                return chain
        for arm in missing:
            g = generate_runner.run_generate(cfg, baseline=arm == "baseline", pool=pool, inputs=inputs)
            chain.stages.append(g)
            if g.failed:
                chain.stopped = (f"{arm} arm: {len(g.failed)} shard(s) failed, first: {g.failed[0]}; re-run to "
                                 "retry them (finished shards are kept)")
                return chain
        for k, seed in todo_draws:
            log(f"benchmark: caso edits of the k={k} seed={seed} draw of reals missing; building them "
                f"(augment caso on that draw only) into {run.caso_draw(k, seed)}")
            draw_cfg = dataclasses.replace(cfg, caso=dataclasses.replace(cfg.caso, k=k, kshot_seed=seed, split="train"))
            c = caso_runner.run_caso(draw_cfg, arm=run.caso_draw(k, seed), pool=pool, inputs=inputs)
            chain.stages.append(c)
            if c.failed:
                chain.stopped = (f"caso k={k} seed={seed}: {len(c.failed)} class(es) failed, first: {c.failed[0]}; "
                                 "re-run to retry them (finished classes are kept)")
                return chain
    return chain


# ----------------------------------------------------------------------------------------- train


@dataclass(frozen=True)
class TrainFlags:
    """The classifier-training flags of ``train`` and ``benchmark`` that are no config key:
    ``samples_per_epoch`` and ``hflip`` (None: the config's), and ``natural`` (``--synthetic-prob
    natural``: synthetic images drawn at their share of the union, not with a set probability)."""

    samples_per_epoch: int | None = None
    hflip: float | None = None
    natural: bool = False

    def settings(self, cfg: Config, seed: int | None = None, on_workers: bool = False) -> TrainSettings:
        """The trainer's settings: ``cfg.train`` with these flags, ``seed`` (default the run's) and the device.

        ``on_workers``: the cells train on Ray actors (``benchmark --workers N``), so the device is left
        as the user gave it (its spelling checked) for each worker to resolve on its node, as tokens and
        generate do: a GPU-less driver must not refuse ``cuda`` that the cluster's nodes have, and
        ``auto`` must mean the nodes' GPU, not the driver's CPU."""
        from augment.downstream.train import TrainSettings
        from augment.models.device import check_device, resolve_device

        if on_workers:
            check_device(cfg.device, inline=False)
        return TrainSettings.from_config(cfg.train, samples_per_epoch=self.samples_per_epoch, hflip=self.hflip,
                                         seed=cfg.seed if seed is None else seed,
                                         device=cfg.device if on_workers else str(resolve_device(cfg.device)))

    def synthetic_prob(self, cfg: Config) -> float | None:
        """The probability a drawn sample is synthetic (None: natural)."""
        return None if self.natural else cfg.train.synthetic_prob


@dataclass(frozen=True)
class TrainRequest:
    """``augment train``'s arguments beyond the config: the synthetic run folders, the real
    images per class (None: the largest of ``train.k_values``), the splits, and ``out`` (None:
    ``<run>/train/k<K>-<arms>-seed<S>`` next to the first synthetic run, ``run``)."""

    synthetic: tuple[str, ...] = ()
    real_k: int | None = None
    split: str = "train"
    test_split: str = "test"
    out: Path | None = None
    run: str | None = None
    flags: TrainFlags = TrainFlags()


@dataclass
class TrainOutcome:
    """What :func:`train` made: the mixed set it trained on, the settings, where it wrote, the result."""

    mixed: MixedDataset
    settings: TrainSettings
    k: int
    out: Path
    result: TrainResult


def train(cfg: Config, request: TrainRequest, log: Log = _ignore) -> TrainOutcome:
    """Train a classifier on ``request.real_k`` reals per class + the synthetic sets; test it on
    the real test split; write metrics and the best checkpoint into the outcome's ``out``. ``log``
    gets what is kept of each synthetic set and the training line, before training starts."""
    settings = request.flags.settings(cfg)
    k = request.real_k if request.real_k is not None else max(cfg.train.k_values or [0])
    out = _train_out(cfg, request, k)
    # every writer takes the lock of the run its output lies in, wherever --out points, and before
    # the data loads: a refusal costs nothing
    run = enclosing_run(_existing(out))
    with run_lock(run) if run is not None else contextlib.nullcontext():
        if run is not None:
            check_contained(run)
        return _train_locked(cfg, request, settings, k, out, log, run)


def _existing(path: Path) -> Path:
    """``path`` or its nearest existing ancestor (the run it will be written into exists already)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _train_out(cfg: Config, request: TrainRequest, k: int) -> Path:
    """Where ``train`` writes: ``--out``, else ``<run>/train/k<K>-<arms>-seed<S>``."""
    if request.out is not None:
        return request.out
    located = [(s, RunDir.locate(s)[1]) for s in request.synthetic]
    arms = [Path(s).name if name == "token" else name for s, name in located]
    return RunDir(cfg.out if request.run else f"runs/{cfg.dataset}").train_dir(k, arms, cfg.seed)


def _train_locked(cfg: Config, request: TrainRequest, settings: TrainSettings, k: int, out: Path,
                  log: Log, run: Path | None) -> TrainOutcome:
    """:func:`train` once the lock of the run ``out`` lies in (``run``) is held (if any)."""
    from augment.downstream.mixing import load_split, make_mixed_dataset
    from augment.downstream.train import train_classifier
    from augment.models.device import deterministic_mode

    check_creatable(out)  # before the data loads: no training is lost to a folder it cannot write
    dataset = resolve_inputs(cfg).dataset
    synthetic, split = request.synthetic, request.split
    mixed = make_mixed_dataset(dataset, k, cfg.seed, synthetic, request.flags.synthetic_prob(cfg),
                               cfg.train.synthetic_weight, cfg.train.min_confidence, settings.input_size, split,
                               distill_temperature=cfg.train.distill_temperature if cfg.train.distill else None)
    test_images, test_labels = load_split(dataset, request.test_split, settings.input_size)
    for s in mixed.sets:
        dropped = ", ".join(f"{n} {r}" for r, n in s.dropped.items())
        log(f"synthetic {s.root}: {s.kept} of {s.total} images" + (f" (dropped {dropped})" if dropped else ""))
    log(f"training {settings.arch} on {mixed.n_real} real ({k}/class from {split}) + {mixed.n_synthetic} synthetic "
        f"images (synthetic share {mixed.effective_prob:.2f}, weight {mixed.synthetic_weight:g}"
        + (f", soft labels at T={mixed.distill_temperature:g}" if mixed.distill_temperature else "") + ") for "
        f"{settings.epochs} epochs -> {out}")
    extra = {"dataset": dataset.name, "data_root": cfg.data_root, "real_k": k, "split": split,
             "test_split": request.test_split, "synthetic": [str(s) for s in synthetic], "seed": cfg.seed,
             "distill_temperature": mixed.distill_temperature}
    guard = (lambda: check_in_place(run)) if run is not None else None  # a run moved away: stop, write nothing
    with deterministic_mode(cfg.deterministic):
        result = train_classifier(mixed, test_images, test_labels, settings, out=out, desc="train", extra=extra,
                                  before_write=guard)
    return TrainOutcome(mixed, settings, k, out, result)


# ----------------------------------------------------------------------------------------- guide


#: the splits a guide is tested on when none is named, in this order (the first the dataset has)
GUIDE_TEST_SPLITS = ("test", "val", "valid", "validation")


@dataclass(frozen=True)
class GuideRequest:
    """``augment guide``'s arguments beyond the config: ``k`` reals per class (None: the largest of
    ``train.k_values``), the split they come from, the split it is tested on (None: the first of
    :data:`GUIDE_TEST_SPLITS` the dataset has, else ``split`` itself) and ``out`` (None:
    ``guides/<dataset>-k<K>-seed<S>``)."""

    k: int | None = None
    split: str = "train"
    test_split: str | None = None
    out: Path | None = None
    flags: TrainFlags = TrainFlags()


def guide_spec(outcome: TrainOutcome) -> str:
    """The ``--classifier`` value that loads the guide :func:`guide` wrote."""
    return f"timm:{outcome.settings.arch}@{outcome.out / 'best.safetensors'}"


def guide(cfg: Config, request: GuideRequest, log: Log = _ignore) -> TrainOutcome:
    """A guidance classifier for a user who has none: :func:`train` on the k-shot reals only (the
    same k-shot draw ``train`` and the benchmark use for this seed), as ``cfg.train`` says
    (pretrained and fine-tuned, or a linear probe, or from scratch); its best checkpoint and
    sidecar are what ``--classifier`` takes (:func:`guide_spec`). The checkpoint is the last
    epoch's (tested once, after it): picking the best epoch on the test split would choose the
    guide with test images a user with k reals does not have. With no test split the guide is
    tested on its own split (logged: an optimistic figure, the k reals are among it)."""
    k = request.k if request.k is not None else max(cfg.train.k_values or [0])
    if k < 1:
        raise AugmentError(f"--k {k}: a guide learns from real images; give at least 1 per class")
    test_split = request.test_split
    if test_split is None:
        splits = resolve_inputs(cfg).dataset.splits()
        test_split = next((s for s in GUIDE_TEST_SPLITS if s in splits), request.split)
        if test_split == request.split:
            log(f"no test split: the guide is tested on {request.split!r}, which holds its own k reals (optimistic)")
    out = request.out or Path("guides") / f"{cfg.dataset}-k{k}-seed{cfg.seed}"
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, eval_every=0))
    return train(cfg, TrainRequest((), k, request.split, test_split, out, None, request.flags), log)


# ------------------------------------------------------------------------------------- benchmark


@dataclass(frozen=True)
class BenchmarkRequest:
    """``augment benchmark``'s arguments beyond the config: the grid (k values and seeds, None:
    ``train.k_values`` / ``train.seeds``; treatments, empty: the defaults), the test split,
    ``fresh`` (retrain every cell) and ``build_missing`` (build the arms the grid needs first)."""

    k_values: list[int] | None = None
    seeds: list[int] | None = None
    treatments: tuple[str, ...] = ()
    test_split: str = "test"
    fresh: bool = False
    build_missing: bool = True
    flags: TrainFlags = TrainFlags()


@dataclass
class BenchmarkRun:
    """:func:`benchmark`'s outcome: the arms it built (a chain) and the grid's stage summary
    (None when building stopped); ``stopped``: the line saying why it ended early."""

    arms: ChainSummary
    grid: BenchmarkSummary | None = None
    seeds: list[int] = field(default_factory=list)
    stopped: str | None = None

    @property
    def failed(self) -> list[str]:
        return self.arms.failed + (self.grid.failed if self.grid is not None else [])

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.stopped else 0


def benchmark(cfg: Config, request: BenchmarkRequest, log: Log = _ignore, cell_log: Log | None = None) -> BenchmarkRun:
    """The few-shot grid on run folder ``cfg.out`` (its arms built first when missing and
    ``request.build_missing``), through the stage skeleton on the config's pool. ``log`` gets the
    lines around the grid, ``cell_log`` (default ``log``) one line per trained cell."""
    import torch

    from augment.downstream.benchmark import default_treatments, run_benchmark

    out = cfg.out
    assert out is not None, "resolve_config sets cfg.out"
    ks = request.k_values or list(cfg.train.k_values)
    seeds = request.seeds or list(cfg.train.seeds)
    settings = request.flags.settings(cfg, seed=0, on_workers=cfg.workers > 0)
    if request.build_missing:
        chain = build_missing_arms(cfg, RunDir(out), request.treatments or default_treatments(out, _ignore), log,
                                   draws=[(k, s) for k in ks for s in seeds])
        if chain.exit_code:
            return BenchmarkRun(chain, seeds=seeds, stopped=chain.stopped)
    else:
        chain = ChainSummary()
    if not Path(out).is_dir():
        raise AugmentError(f"run folder {out} does not exist; run `augment build --baseline --out {out}` first")
    treatments = request.treatments or default_treatments(out, log)
    dataset = resolve_inputs(cfg).dataset
    n_cells = len(ks) * len(treatments) * len(seeds)
    log(f"benchmark: k={ks}, {len(treatments)} arms, seeds {seeds} (up to {n_cells} cells), "
        f"{settings.arch} x {settings.epochs} epochs, run {out}, "
        + (f"{cfg.workers} Ray workers" if cfg.workers > 0 else "inline"))
    # cells train with this process's torch threads (--threads, default 1), inline and on actors
    grid_cfg = dataclasses.replace(cfg, threads=torch.get_num_threads())
    grid = run_benchmark(out, dataset, settings, ks, seeds, treatments, request.flags.synthetic_prob(cfg),
                         cfg.train.synthetic_weight, cfg.train.min_confidence, request.test_split,
                         distill_temperature=cfg.train.distill_temperature, resume=not request.fresh,
                         log=cell_log or log, cfg=grid_cfg)
    stopped = None
    if grid.failed:
        stopped = (f"{len(grid.failed)} benchmark cell(s) failed, first: {grid.failed[0]}; the "
                   f"{grid.done + grid.skipped} finished cells are cached, re-run to retry the rest")
    return BenchmarkRun(chain, grid, seeds, stopped)
