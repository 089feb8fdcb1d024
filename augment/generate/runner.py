"""The ``augment generate`` stage: per-class images into WebDataset shards + Parquet manifests.

Work unit = one shard. The driver plans the shards, skips the ones already done (Parquet present
with the expected keys), removes half-written files, and hands the rest to the pool; each finished
shard is written by the driver (tar, then Parquet last) and ``_info.json`` is rebuilt. The token
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
from augment.config import Config
from augment.datasets.selection import load_dataset, select_classes
from augment.distributed import WorkerFactory
from augment.errors import AugmentError
from augment.generate.plan import ShardUnit, plan_shards
from augment.generate.worker import GenSpec, make_worker
from augment.io.rundir import ArmDir
from augment.io.shards import SynthSample, cleanup_partial, done_shards, sample_key, write_info, write_shard
from augment.io.tokens_table import read_token_rows
from augment.models.classifier import ClassifierSource
from augment.shipping import Payload

COMPAT_KEYS = ["model", "model_fingerprint", "classifier", "seed", "class_names", "classes", "resolution", "scheduler",
               "generate.prompts", "generate.negative_prompt", "generate.steps", "generate.guidance_scale",
               "generate.shard_size", "generate.image_format", "generate.min_confidence",
               "generate.max_attempts", "generate.batch_size", "baseline"]


@dataclass
class GenerateSummary(stage.StageSummary):
    """``classes``/``samples``/``shards``: what the plan holds (done now or before); ``written``:
    the shards written by this call; ``mean_confidence``: over every manifest row of the arm."""

    classes: int
    samples: int
    shards: int
    mean_confidence: float | None

    @property
    def written(self) -> int:
        return self.done


def _shard_is_done(arm: ArmDir, unit: ShardUnit, done: set[int]) -> bool:
    """Done = its Parquet marker exists and holds exactly the keys this plan puts in the shard."""
    if unit.index not in done:
        return False
    keys = pq.read_table(arm.manifest_path(unit.index), columns=["key"]).column("key").to_pylist()
    return keys == [sample_key(c, i) for c, i in unit.entries]


class GenerateStage(stage.Stage[ShardUnit, list[SynthSample], GenerateSummary]):
    """Units are planned shards; results are their encoded samples, in shard order."""

    name = "generate"
    compat_keys = COMPAT_KEYS
    progress_unit = "img"

    def __init__(self, cfg: Config, baseline: bool) -> None:
        super().__init__(cfg)
        self.baseline = baseline
        self.names: list[str] = []
        self.classes: list[int] = []
        self.fingerprint: str | None = None
        self.spec: Payload[GenSpec] | None = None
        self.classifier: Payload[ClassifierSource] | None = None
        self.units: list[ShardUnit] = []

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
        from augment.models.backbone import model_fingerprint, resolve_backbone_path
        from augment.models.classifier import check_classes, load_classifier, read_classifier_source
        from augment.tokens.textual_inversion import read_token_embedding

        cfg, g = self.cfg, self.cfg.generate
        if g.per_class < 1:
            raise AugmentError(f"--per-class must be at least 1, got {g.per_class}")
        if g.shard_size < 1:
            raise AugmentError(f"--shard-size must be at least 1, got {g.shard_size}")
        if not 0.0 <= g.min_confidence < 1.0:
            raise AugmentError(f"--min-confidence must be in [0, 1), got {g.min_confidence}")
        self.names = names = load_dataset(cfg).class_names
        self.classes = select_classes(cfg.classes, len(names))
        resolve_backbone_path(cfg.model)
        self.fingerprint = model_fingerprint(cfg.model)
        # Workers may share no disk with this machine: they get the classifier's files and the
        # token vectors from here, read once (see augment.shipping).
        source = read_classifier_source(cfg.classifier)
        check_classes(load_classifier(source), names)
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
            tokens = {c: read_token_embedding(arm.token_file(c, names[c])) for c in self.classes}
            rows = read_token_rows(arm.tokens_parquet)
            negatives = {c: rows[c].negative_prompt for c in self.classes if c in rows and rows[c].negative_prompt}
        self.spec = Payload(GenSpec(names, tokens, self.baseline, negatives))
        self.classifier = Payload(source)

    def run_json_extra(self) -> dict[str, Any]:
        return {"class_names": self.names, "baseline": self.baseline, "model_fingerprint": self.fingerprint}

    def plan(self, force: bool) -> stage.Plan[ShardUnit]:
        cleanup_partial(self.arm.path)
        self.units = plan_shards(self.classes, self.cfg.generate.per_class, self.cfg.generate.shard_size)
        # Shards beyond the plan (a smaller --per-class than before) are left alone; redo changed ones.
        done = done_shards(self.arm.path)  # one directory listing, not one per shard
        todo = [u for u in self.units if force or not _shard_is_done(self.arm, u, done)]
        return stage.Plan(todo, skipped=len(self.units) - len(todo), total=len(self.units),
                          work=sum(len(u.entries) for u in todo), work_done=0)

    def worker_factory(self) -> WorkerFactory:
        return partial(make_worker, self.cfg_dict, self.spec, self.classifier)

    def on_result(self, unit: ShardUnit, samples: list[SynthSample]) -> str | None:
        write_shard(self.arm.path, unit.index, samples)
        write_info(self.arm.path, self.info_name)
        return None

    def unit_label(self, unit: ShardUnit) -> str:
        return f"shard {unit.index}"

    def unit_size(self, unit: ShardUnit) -> int:
        return len(unit.entries)

    def progress_postfix(self, unit: ShardUnit, samples: list[SynthSample]) -> dict[str, Any]:
        return {"shard": unit.index}

    def finish(self) -> None:
        write_info(self.arm.path, self.info_name)

    def summary(self, **common: Any) -> GenerateSummary:
        return GenerateSummary(**common, classes=len(self.classes), samples=sum(len(u.entries) for u in self.units),
                               shards=len({u.index for u in self.units}), mean_confidence=_mean_confidence(self.arm))


def run_generate(cfg: Config, baseline: bool = False, force: bool = False, show_progress: bool = True) -> GenerateSummary:
    """Generate the token arm (or, with ``baseline``, the plain-prompt arm) of ``cfg.out``."""
    return stage.run_stage(GenerateStage(cfg, baseline), force, show_progress)


def _mean_confidence(arm: ArmDir) -> float | None:
    from augment.io.manifest import read_manifests

    try:
        table = read_manifests(arm.manifests)
    except Exception:  # noqa: BLE001 - no manifests yet
        return None
    col = table.column("guide_confidence").to_pylist() if table.num_rows else []
    vals = [v for v in col if v is not None]
    return sum(vals) / len(vals) if vals else None
