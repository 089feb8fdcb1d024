"""The ``augment generate`` stage: per-class images into WebDataset shards + Parquet manifests.

Work unit = one shard. The driver plans the shards, skips the ones already done (Parquet present
with the expected keys), removes half-written files, and hands the rest to the pool; each finished
shard is written by the driver (tar, then Parquet last) and counted in the arm's book
(:class:`~augment.generate.book.ArmBook`: ``_info.json``, ``acceptance.json`` and the summary's
figures from what the driver writes, the manifests read once on resume). The token
arm writes to the run folder; the baseline arm (same prompts and seeds, no token) to its own
folder (``RunDir.arm_dir("baseline")``). The checks, the run folder and the failure policy are
:mod:`augment.stage`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import pyarrow.parquet as pq

from augment import stage
from augment.config import MAX_SAMPLES, Config, GenerateConfig, compat_keys
from augment.distributed import Pool, WorkerFactory
from augment.errors import AugmentError
from augment.generate.book import ArmBook, ShardFacts
from augment.generate.plan import ShardUnit, plan_shards, sample_prompt, sample_seed
from augment.generate.rejection import RejectionStats, plain_seed_fits, quotas
from augment.generate.worker import GenSpec, ShardResult, make_worker
from augment.inputs import RunInputs, resolve_inputs
from augment.io.rundir import ArmDir
from augment.io.shards import (
    cleanup_partial,
    complete_shard_keys,
    done_shards,
    sample_key,
    write_shard,
)
from augment.io.tokens_table import read_token_rows
from augment.models.classifier import ClassifierSource
from augment.shipping import Payload

#: settings that make a shard different (declared on the config's fields, resume=("generate", ...));
#: the extras are not config keys
COMPAT_KEYS = compat_keys("generate", after={"model": ["model_fingerprint"], "seed": ["class_names"]}, tail=("baseline",))


@dataclass
class GenerateSummary(stage.StageSummary):
    """``classes``/``samples``/``shards``: what the plan holds (done now or before; under
    ``--min-confidence``, ``samples`` counts the images the done shards kept); ``written``:
    the shards written by this call; ``mean_confidence``: over every manifest row of the arm;
    ``acceptance``: under ``--min-confidence``, the draws per class over the plan's done shards
    (``class_names`` names them), as written to the arm's ``acceptance.json``; ``nonfinite``: the
    draws of the shards written by this call rejected because their image was NaN/inf (an fp16
    overflow; redrawn, never written)."""

    classes: int
    samples: int
    shards: int
    mean_confidence: float | None
    acceptance: RejectionStats | None = None
    class_names: list[str] | None = None
    nonfinite: int = 0

    @property
    def written(self) -> int:
        return self.done


def _shard_is_done(arm: ArmDir, unit: ShardUnit, done: set[int], g: GenerateConfig) -> bool:
    """Done = its Parquet marker and its tar can be read (:func:`complete_shard_keys`: an unreadable
    pair is redone) and hold what this plan puts in the shard: exactly its keys, or, under rejection
    sampling, a subset of them drawn for the same slots and settings."""
    if unit.index not in done:
        return False
    keys = complete_shard_keys(arm.path, unit.index)
    if keys is None:
        return False
    planned = [sample_key(c, i) for c, i in unit.entries]
    if g.min_confidence <= 0:
        return keys == planned
    stats = RejectionStats.from_metadata(pq.read_schema(arm.manifest_path(unit.index)).metadata)
    wanted = RejectionStats.of(quotas(unit, g.max_attempts), g.min_confidence, g.max_attempts)
    return (stats is not None and set(keys) <= set(planned) and stats.slots() == wanted.slots()
            and (stats.min_confidence, stats.max_attempts) == (g.min_confidence, g.max_attempts))


#: the manifest columns the resume compares with what this run would write now
_CONTENT = ("key", "class_index", "sample_index", "seed", "attempts", "prompt", "token_sha256")


def stale_line(arm: ArmDir, unit: ShardUnit, cfg: Config, names: list[str], token_shas: dict[int, str | None],
               baseline: bool) -> str | None:
    """Why done shard ``unit`` is not what this run would write now (None: it is): a sample made
    with another token (``token_sha256``: the tokens were retrained), or, without rejection sampling,
    another seed or prompt (another run seed, run.json edited, other templates). A resume that
    counted such a shard as done would mix two versions in one arm (issue 24)."""
    from augment.tokens.textual_inversion import token_string

    index = unit.index
    pf = pq.ParquetFile(arm.manifest_path(index))  # one read of the manifest: the resume reads each once more
    rows = pf.read(columns=[c for c in _CONTENT if c in pf.schema_arrow.names]).to_pylist()
    g, what = cfg.generate, f"{arm.spec.name} arm shard {index}"
    for r in rows:
        c, i, key = r.get("class_index"), r.get("sample_index"), r.get("key")
        if c is None or i is None or not 0 <= c < len(names):
            return f"{what}: sample {key} names no class of this run"
        want = None if baseline else token_shas.get(c)
        if r.get("token_sha256") != want:
            old, new = (str(v)[:12] + "..." if v else "none" for v in (r.get("token_sha256"), want))
            return (f"{what}: class {c}'s images were made with token sha256 {old}, this run's token is {new} "
                    "(tokens retrained since?)")
        if g.min_confidence > 0:  # seeds and prompt templates follow the draws: the key plan holds them
            continue
        if not plain_seed_fits(cfg.seed, c, i, unit, r.get("seed"), r.get("attempts"), g.max_attempts):
            seed = sample_seed(cfg.seed, c, i)
            return f"{what}: sample {key} has seed {r.get('seed')}, run seed {cfg.seed} gives {seed} (another seed)"
        prompt = sample_prompt(g.prompts, i, "" if baseline else token_string(c), names[c])
        if r.get("prompt") != prompt:
            return f"{what}: sample {key} was made from prompt {r.get('prompt')!r}, this run's is {prompt!r}"
    return None


class GenerateStage(stage.Stage[ShardUnit, ShardResult, GenerateSummary]):
    """Units are planned shards; results are their encoded samples, in shard order (and their draws
    under rejection sampling)."""

    name = "generate"
    compat_keys = COMPAT_KEYS
    progress_unit = "img"

    def __init__(self, cfg: Config, baseline: bool, inputs: RunInputs | None = None) -> None:
        super().__init__(cfg)
        self.baseline = baseline
        self.inputs = inputs or resolve_inputs(cfg)
        self.names: list[str] = []
        self.classes: list[int] = []
        self.fingerprint: str | None = None
        self.spec: Payload[GenSpec] | None = None
        self.classifier: Payload[ClassifierSource] | None = None
        self.units: list[ShardUnit] = []
        self.book: ArmBook | None = None
        self.token_shas: dict[int, str | None] = {}
        self.nonfinite = 0  # NaN/inf draws rejected in the shards this call wrote

    @property
    def arm(self) -> ArmDir:
        return self.run.arm_dir("baseline" if self.baseline else "token")

    @property
    def progress_desc(self) -> str:
        return "generate" + (" (baseline)" if self.baseline else "")

    @property
    def info_name(self) -> str:
        """The dataset name in ``_info.json``."""
        return f"{self.cfg.dataset}-{'baseline' if self.baseline else 'tokens'}"

    def preflight(self) -> None:
        from augment.models.backbone import text_width
        from augment.tokens.textual_inversion import (
            check_names_hold_no_token,
            check_token,
            read_token_embedding,
            token_string,
        )

        cfg, g, inputs = self.cfg, self.cfg.generate, self.inputs  # inputs: the run's set-up, resolved once
        inputs.check()  # model, classifier, classes: every problem at once, before any model loads
        self.names = names = inputs.class_names
        check_names_hold_no_token(names)
        self.classes = inputs.classes
        if g.per_class * len(self.classes) > MAX_SAMPLES:  # the plan holds one entry per sample
            raise AugmentError(
                f"--per-class {g.per_class} x {len(self.classes)} classes is {g.per_class * len(self.classes):,} "
                f"samples, more than one run plans ({MAX_SAMPLES:,}); lower --per-class or split --classes "
                "over several runs")
        _ = inputs.backbone
        self.fingerprint = inputs.fingerprint
        # Workers may share no disk with this machine: they get the classifier's files and the
        # token vectors from here, read once (see augment.shipping).
        self.classifier = inputs.classifier
        tokens, negatives = {}, {}
        if not self.baseline:
            arm = self.run.arm_dir("token")
            missing = [c for c in self.classes if not arm.token_file(c, names[c]).exists()]
            if missing:
                c = missing[0]
                raise AugmentError(
                    f"no token for class {c} ({names[c]!r}) in {arm.tokens} ({len(missing)} missing); "
                    "run `augment tokens` with the same --out first (or pass --baseline for plain prompts)"
                )
            width = text_width(cfg.model)
            tokens = {c: check_token(read_token_embedding(path := arm.token_file(c, names[c])), str(path),
                                     token_string(c), width) for c in self.classes}
            self.token_shas = {c: t.sha256 for c, t in tokens.items()}
            rows = read_token_rows(arm.tokens_parquet)
            negatives = {c: rows[c].negative_prompt for c in self.classes if c in rows and rows[c].negative_prompt}
        self.spec = Payload(GenSpec(names, tokens, self.baseline, negatives))

    def run_json_extra(self) -> dict[str, Any]:
        return {"class_names": self.names, "baseline": self.baseline, "model_fingerprint": self.fingerprint}

    def plan(self, force: bool) -> stage.Plan[ShardUnit]:
        cleanup_partial(self.arm.path)
        self.units = plan_shards(self.classes, self.cfg.generate.per_class, self.cfg.generate.shard_size)
        # Shards beyond the plan (a smaller --per-class than before) are left alone; redo changed ones.
        done = done_shards(self.arm.path)  # one directory listing, not one per shard
        todo = [u for u in self.units if force or not _shard_is_done(self.arm, u, done, self.cfg.generate)]
        if not force:  # done by name; by content too, or the arm would mix two versions: refuse
            planned_todo = {u.index for u in todo}
            for u in self.units:
                why = None if u.index in planned_todo else stale_line(
                    self.arm, u, self.cfg, self.names, self.token_shas, self.baseline)
                if why is not None:
                    raise AugmentError(f"{why}; pass --force to regenerate the arm, or use a new --out")
        # the bookkeeping reads the done manifests once, here; then it counts what it writes
        self.book = ArmBook(self.arm, self.info_name, (u.index for u in self.units), self.names,
                            acceptance=self.cfg.generate.min_confidence > 0)
        self.book.seed(done_shards(self.arm.path), {u.index for u in todo})
        return stage.Plan(todo, skipped=len(self.units) - len(todo), total=len(self.units),
                          work=sum(len(u.entries) for u in todo), work_done=0)

    def worker_factory(self) -> WorkerFactory:
        return partial(make_worker, self.cfg_dict, self.spec, self.classifier, self.progress)

    def on_result(self, unit: ShardUnit, result: ShardResult) -> str | None:
        self.nonfinite += result.nonfinite
        if not result.samples:  # every draw rejected: an empty tar is never written
            self._book.failed(unit.index)
            return (f"no image of its {len({c for c, _ in unit.entries})} classes reached guide confidence "
                    f"{self.cfg.generate.min_confidence:g} in {self.cfg.generate.max_attempts} draws per image; "
                    "lower --min-confidence or raise --max-attempts")
        written = write_shard(self.arm.path, unit.index, result.samples, result.metadata())
        self._book.wrote(unit.index, ShardFacts.of_written(written, result.samples, result.rejection))
        return None

    def on_failed(self, unit: ShardUnit, error: str) -> None:
        self._book.failed(unit.index)

    @property
    def _book(self) -> ArmBook:
        if self.book is None:
            raise RuntimeError("GenerateStage: plan() keeps the book; it was not called")
        return self.book

    def unit_label(self, unit: ShardUnit) -> str:
        return f"shard {unit.index}"

    def unit_size(self, unit: ShardUnit) -> int:
        return len(unit.entries)

    def progress_key(self, unit: ShardUnit) -> int:
        return unit.index  # what the worker reports images under

    def progress_postfix(self, unit: ShardUnit, result: ShardResult) -> dict[str, Any]:
        return {"shard": unit.index}

    def finish(self) -> None:
        self._book.write()

    def summary(self, **common: Any) -> GenerateSummary:
        g = self.cfg.generate
        acceptance = self._book.acceptance() if g.min_confidence > 0 else None
        if g.min_confidence <= 0:
            samples = sum(len(u.entries) for u in self.units)
        else:  # what the done shards kept: the plan's slots are an upper bound
            samples = sum(a.accepted for a in acceptance.classes) if acceptance is not None else 0
        return GenerateSummary(**common, classes=len(self.classes), samples=samples,
                               shards=len({u.index for u in self.units}), mean_confidence=self._book.mean_confidence(),
                               acceptance=acceptance, class_names=self.names, nonfinite=self.nonfinite)


def run_generate(cfg: Config, baseline: bool = False, force: bool = False, show_progress: bool = True,
                 pool: Pool | None = None, inputs: RunInputs | None = None) -> GenerateSummary:
    """Generate the token arm (or, with ``baseline``, the plain-prompt arm) of ``cfg.out`` (on
    ``pool``, the one ``augment build`` shares between its stages, else on a pool of its own;
    ``inputs``: the run's set-up when another stage resolved it already)."""
    return stage.run_stage(GenerateStage(cfg, baseline, inputs), force, show_progress, pool)
