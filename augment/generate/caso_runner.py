"""The ``augment caso`` stage: learn CASO embeddings from the k-shot reals and write edits of them.

The k-shot draw (``caso.k`` per class, seed ``caso.kshot_seed`` or the run seed) of ALL classes is
the training batch pool of every embedding (one per target class, :mod:`augment.tokens.caso`).
Work unit = one source class: learn the embeddings its conditions need (``caso.target``, see
:func:`~augment.tokens.caso.edit_conditions`; a worker keeps those it learned for later units),
then edit each of the class's k reals under each condition into one shard with its manifest (mode
``edit``, ``source_key``, ``strength``, ``edit_mode``, ``targets``). Labels: the first target (the
source's own class for a reverse edit). A class is done when its shard's Parquet exists; re-runs
skip done classes. The checks, the run folder and the failure policy are :mod:`augment.stage`'s.

The worker reads nothing from disk but the diffusion weights: the driver decodes the k-shot reals
once and sends them with every unit (by reference, :class:`~augment.shipping.Payload`, released
when the stage ends) and the classifier's checkpoint with the worker's factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from augment import stage
from augment.config import Config, compat_keys, config_from_dict
from augment.datasets.base import Dataset
from augment.distributed import Pool, WorkerFactory
from augment.errors import AugmentError
from augment.generate.book import ArmBook, ShardFacts
from augment.inputs import RunInputs, resolve_inputs
from augment.io.atomic import remove_temp_files
from augment.io.images import encode_image, image_tensor
from augment.io.manifest import ManifestRow
from augment.io.rundir import ArmDir
from augment.io.shards import (
    SynthSample,
    cleanup_partial,
    complete_shard_keys,
    done_shards,
    sample_key,
    write_shard,
)
from augment.io.tokens_table import TokenRow, read_token_rows, write_token_rows
from augment.models.cache import ModelCache
from augment.models.classifier import ClassifierSource
from augment.models.device import DeviceInfo, describe_device
from augment.models.diffusion import Diffusion
from augment.seeds import derive_seed
from augment.shipping import Payload
from augment.tokens.caso import CasoResult, CasoTrainer, condition_prompt, edit_conditions, edit_label
from augment.tokens.textual_inversion import check_names_hold_no_token, installed_tokens

#: settings that make an edit different (declared on the config's fields, resume=("caso", ...))
COMPAT_KEYS = compat_keys("caso", after={"seed": ["class_names"]})


@dataclass
class CasoRow:
    """What the summary reports for one source class: the targets its edits went to and the guide
    accuracy of one-step predictions on the reals, first vs last batches (mean over its targets)."""

    class_index: int
    targets: list[int]
    init_accuracy: float
    final_accuracy: float
    seconds: float


@dataclass
class CasoOutcome:
    """What a :class:`CasoWorker` returns for one class: the row, the embeddings (by target class)
    to save, and the edited samples of its shard."""

    row: CasoRow
    embeddings: dict[int, CasoResult]
    samples: list[SynthSample]
    shard: int
    device: DeviceInfo | None = None  # what made the edits (the manifest's metadata)


@dataclass
class CasoReals:
    """The k-shot reals of all classes as the driver decoded them (RGB uint8 arrays, original
    size), their labels and the ``source_key`` each edit's manifest row records."""

    images: list[np.ndarray]
    labels: list[int]
    source_keys: list[str]


@dataclass
class CasoUnit:
    """One source class: its index, its shard and the k-shot pool (sent by reference, shared)."""

    class_index: int
    shard: int
    reals: Payload[CasoReals]


def read_reals(dataset: Dataset, samples: list[Any], split: str) -> CasoReals:
    """Decode ``samples`` on the driver (the worker's node may not have the dataset)."""
    return CasoReals([np.array(dataset.load_image(s).convert("RGB")) for s in samples], [s.label for s in samples],
                     [f"{dataset.name}:{split}:{s.ref}" for s in samples])


class CasoWorker:
    def __init__(self, cfg_dict: dict[str, Any], class_names: list[str], classes: list[int],
                 classifier: ClassifierSource | str, cache: ModelCache | None = None) -> None:
        self.cfg = cfg = config_from_dict(cfg_dict)
        self.names, self.classes = class_names, classes
        cache = cache if cache is not None else ModelCache()  # the host's: models shared with the other stages
        self.pipe = cache.backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        self.trainer = CasoTrainer(self.pipe, cache.classifier(classifier, self.pipe.unet.device), cfg.caso, cfg.seed)
        self.device_info = describe_device(self.pipe.unet.device, self.pipe.unet.dtype)  # resolved on this node
        self._learned: dict[tuple[str, int], CasoResult] = {}  # (pool, target): learned once per worker

    def _embedding(self, pool: Payload[CasoReals], images: torch.Tensor, target: int) -> CasoResult:
        key = (pool.key, target)
        if key not in self._learned:
            self._learned[key] = self.trainer.learn(images, target)
        return self._learned[key]

    def run(self, unit: CasoUnit) -> CasoOutcome:
        c, shard_index, reals = unit.class_index, unit.shard, unit.reals.get()
        cfg, cc = self.cfg, self.cfg.caso
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        images = torch.stack([image_tensor(Image.fromarray(a), size) for a in reals.images]).float() / 255
        conds = edit_conditions(cc.target, c, self.classes, len(self.names))
        learned = {t: self._embedding(unit.reals, images, t) for t in sorted({t for cond in conds for t in cond})}
        mine = [j for j, label in enumerate(reals.labels) if label == c]
        per = cc.edits_per_image
        samples = []
        # the learned embeddings are in the (host's, shared) pipeline for these edits only
        with installed_tokens(self.pipe, {r.token: r.embedding for r in learned.values()}):
            for ci, cond in enumerate(conds):
                prompt = condition_prompt(cond, cc.n_vectors)
                label = edit_label(c, cond, cc.edit_guidance)
                batch = images[[j for j in mine for _ in range(per)]]
                seeds = [derive_seed(cfg.seed, "caso-edit", c, *cond, j, e) for j in mine for e in range(per)]
                edited = Diffusion(self.pipe).edit(prompt, batch, seeds, cc.strength, cc.edit_steps, cc.edit_guidance,
                                                   mode=cc.edit_mode, guided_step=cc.guided_step)
                probs = self.trainer.classifier(edited).softmax(-1)
                arrays = (edited.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
                for b, (j, e) in enumerate((j, e) for j in mine for e in range(per)):
                    index = c * 100000 + ci * 1000 + mine.index(j) * per + e  # unique per label across classes
                    samples.append(SynthSample(sample_key(label, index), label, encode_image(arrays[b], cc.image_format),
                                               cc.image_format, ManifestRow(
                        class_name=self.names[label], prompt=prompt, seed=seeds[b],
                        token=learned[cond[0]].token, mode="edit", source_key=reals.source_keys[j],
                        strength=cc.strength, edit_mode=cc.edit_mode, targets="+".join(map(str, cond)),
                        model_id=cfg.model, scheduler=cfg.scheduler, steps=cc.edit_steps,
                        guidance_scale=cc.edit_guidance, guide_confidence=float(probs[b, label]),
                        guide_pred=int(probs[b].argmax()), attempts=1, status="ok", sample_index=index)))
        res = list(learned.values())
        row = CasoRow(c, sorted(learned), float(np.mean([r.init_accuracy for r in res])) if res else 0.0,
                      float(np.mean([r.final_accuracy for r in res])) if res else 0.0, sum(r.seconds for r in res))
        return CasoOutcome(row, learned, samples, shard_index, self.device_info)


def make_worker(cfg_dict: dict[str, Any], names: list[str], classes: list[int],
                classifier: Payload[ClassifierSource], cache: ModelCache | None = None) -> CasoWorker:
    """The factory a worker host calls with its model cache: the classifier arrives by reference, fetched here."""
    return CasoWorker(cfg_dict, names, classes, classifier.get(), cache)


@dataclass
class CasoSummary(stage.StageSummary):
    """``rows``: one per class learned and edited by this call."""

    rows: list[CasoRow]


class CasoStage(stage.Stage[CasoUnit, CasoOutcome, CasoSummary]):
    """Units are :class:`CasoUnit` (source class, shard, reals); results are :class:`CasoOutcome`.

    ``arm``: where to write (default the run's caso arm; the benchmark passes one folder per
    k-shot draw, :meth:`augment.io.rundir.RunDir.caso_draw`)."""

    name = "caso"
    compat_keys = COMPAT_KEYS

    def __init__(self, cfg: Config, arm: ArmDir | None = None, inputs: RunInputs | None = None) -> None:
        super().__init__(cfg)
        self._arm = arm
        self.inputs = inputs or resolve_inputs(cfg)
        self.names: list[str] = []
        self.classes: list[int] = []
        self.token_rows: dict[int, TokenRow] = {}
        self.rows: list[CasoRow] = []
        self.dataset: Dataset | None = None
        self.classifier: Payload[ClassifierSource] | None = None
        self.pool: Payload[CasoReals] | None = None
        self.book: ArmBook | None = None  # the arm's _info.json, kept from what is written (generate/book.py)

    @property
    def arm(self) -> ArmDir:
        return self._arm or self.run.arm_dir("caso")

    @property
    def kshot_seed(self) -> int:
        cc = self.cfg.caso
        return self.cfg.seed if cc.kshot_seed is None else int(cc.kshot_seed)

    def preflight(self) -> None:
        cfg, cc, inputs = self.cfg, self.cfg.caso, self.inputs  # inputs: the run's set-up, resolved once
        inputs.check()  # model, classifier, classes: every problem at once, before any model loads
        self.dataset = dataset = inputs.dataset
        self.names = names = dataset.class_names
        check_names_hold_no_token(names)
        self.classes = inputs.classes
        if cc.split not in dataset.splits():
            raise AugmentError(f"caso learns from real images but {cfg.dataset} has no split {cc.split!r} "
                               f"(available: {dataset.splits() or 'none'}); pass --data-root")
        for c in self.classes:  # a bad target spec -> one line before any model loads
            edit_conditions(cc.target, c, self.classes, len(names))
        if cc.edit_mode == "ddim" and cc.edits_per_image != 1:
            raise AugmentError(f"caso.edits_per_image {cc.edits_per_image}: a ddim edit is deterministic (every "
                               "edit of an image is the same); use 1, or --edit-mode sdedit for varied edits")
        n_run = cc.edit_steps - Diffusion.edit_start(cc.edit_steps, cc.strength)
        if cc.guided_step is not None and not 0 <= cc.guided_step < n_run:
            raise AugmentError(f"caso.guided_step {cc.guided_step} is outside the {n_run} steps an edit of strength "
                               f"{cc.strength:g} runs; use 0-{n_run - 1}")
        # k too large, or a k-shot image that cannot be decoded (corrupt, a decompression bomb):
        # one error naming it before any model loads or the run folder is made
        for sample in dataset.kshot(cc.k, self.kshot_seed, cc.split):
            dataset.load_image(sample)
        _ = inputs.backbone
        self.classifier = inputs.classifier  # read once on the driver: workers may not see this disk

    def run_json_extra(self) -> dict[str, Any]:
        return {"class_names": self.names}

    def plan(self, force: bool) -> stage.Plan[CasoUnit]:
        assert self.dataset is not None
        cc, dataset = self.cfg.caso, self.dataset
        cleanup_partial(self.arm.path)  # what a killed run left half-written, as generate does
        remove_temp_files(self.arm.tokens)
        done = done_shards(self.arm.path)
        kshot = dataset.kshot(cc.k, self.kshot_seed, cc.split)
        # the reals of all classes: every embedding learns from them; decoded once, when first sent
        self.pool = pool = Payload.lazy(partial(read_reals, dataset, kshot, cc.split))
        # only classes with something to edit get a unit (``A->B`` edits A's reals alone)
        sources = [c for c in self.classes if edit_conditions(cc.target, c, self.classes, len(self.names))]
        todo = [CasoUnit(c, i, pool) for i, c in enumerate(sources)
                if force or i not in done or not complete_shard_keys(self.arm.path, i)]  # unreadable: redone
        self.token_rows = read_token_rows(self.arm.tokens_parquet)
        # the done manifests are read once, here; then the book counts what is written (one
        # _info.json write per N shards, not a read of every manifest per class)
        self.book = ArmBook(self.arm, f"{self.cfg.dataset}-caso", range(len(sources)), self.names, acceptance=False)
        self.book.seed(done, {u.shard for u in todo})
        return stage.Plan(todo, skipped=len(sources) - len(todo), total=len(sources))

    def worker_factory(self) -> WorkerFactory:
        return partial(make_worker, self.cfg_dict, self.names, self.classes, self.classifier)

    def on_result(self, unit: CasoUnit, res: CasoOutcome) -> str | None:
        from augment.tokens.textual_inversion import save_token

        cfg, cc = self.cfg, self.cfg.caso
        for t, emb in res.embeddings.items():
            if t in self.token_rows and self.token_rows[t].token == emb.token:
                continue  # learned by an earlier unit (the same seeds give the same vectors)
            path = self.arm.token_file(t, self.names[t])
            sha = save_token(path, emb.token, emb.embedding)
            self.token_rows[t] = TokenRow(class_index=t, class_name=self.names[t], token=emb.token,
                                          init_token=cc.init_token, token_file=path.name, token_sha256=sha,
                                          steps=cc.max_steps, final_accuracy=emb.final_accuracy,
                                          seconds=emb.seconds, status="ok", lr=cc.lr, model_id=cfg.model)
        write_token_rows(self.arm.tokens_parquet, self.token_rows)
        written = write_shard(self.arm.path, res.shard, res.samples,
                              res.device.metadata() if res.device is not None else None)
        self._book.wrote(res.shard, ShardFacts.of_written(written, res.samples, None))
        self.rows.append(res.row)
        return None

    def on_failed(self, unit: CasoUnit, error: str) -> None:
        self._book.failed(unit.shard)

    @property
    def _book(self) -> ArmBook:
        if self.book is None:
            raise RuntimeError("CasoStage: plan() keeps the book; it was not called")
        return self.book

    def finish(self) -> None:
        if self.pool is not None:
            self.pool.release()
        if self.book is not None and self.book.lengths:  # nothing done and nothing there: no _info.json
            self.book.write()

    def unit_label(self, unit: CasoUnit) -> str:
        return f"class {unit.class_index}"

    def progress_postfix(self, unit: CasoUnit, res: CasoOutcome) -> dict[str, Any]:
        return {"cls": res.row.class_index, "acc": f"{res.row.init_accuracy:.2f}->{res.row.final_accuracy:.2f}"}

    def summary(self, **common: Any) -> CasoSummary:
        return CasoSummary(**common, rows=self.rows)


def run_caso(cfg: Config, force: bool = False, show_progress: bool = True, arm: ArmDir | None = None,
             pool: Pool | None = None, inputs: RunInputs | None = None) -> CasoSummary:
    """Learn and edit the selected classes into the run folder's caso arm (or ``arm``), on ``pool``
    (one shared by the stages of a chain, else one of its own); ``inputs``: the run's set-up when
    another stage resolved it already."""
    return stage.run_stage(CasoStage(cfg, arm, inputs), force, show_progress, pool)
