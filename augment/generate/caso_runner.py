"""The ``augment caso`` stage: per class, learn a CASO embedding from k real images and write edits.

Work unit = one source class: learn the embedding (target = the class itself, or ``caso.target``
for counterfactual edits), save it among the caso arm's tokens (``RunDir.arm_dir("caso")``), then
edit each of the k reals ``edits_per_image`` times (fresh seeds) into one shard of that arm with
its manifest (mode ``edit``, ``source_key``, ``strength``). Labels are the TARGET class. A class is
done when its shard's Parquet exists; re-runs skip done classes. The checks, the run folder and the
failure policy are :mod:`augment.stage`'s.

The worker reads nothing from disk but the diffusion weights: the driver decodes each class's k
real images and sends them with the unit (by reference, :class:`~augment.shipping.Payload`,
released once the class is written) and the classifier's checkpoint with the worker's factory.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
from PIL import Image

from augment import stage
from augment.config import Config, config_from_dict
from augment.datasets.base import Dataset
from augment.datasets.selection import load_dataset, select_classes
from augment.distributed import WorkerFactory
from augment.errors import AugmentError
from augment.io.atomic import remove_temp_files
from augment.io.images import encode_image
from augment.io.rundir import ArmDir
from augment.io.shards import (
    SynthSample,
    cleanup_partial,
    complete_shard_keys,
    done_shards,
    sample_key,
    write_info,
    write_shard,
)
from augment.io.tokens_table import TokenRow, read_token_rows, write_token_rows
from augment.models.classifier import ClassifierSource
from augment.models.diffusion import Diffusion
from augment.seeds import derive_seed
from augment.shipping import BrokenWorker, Payload, build_worker
from augment.tokens.caso import CasoTrainer, vector_tokens
from augment.tokens.textual_inversion import check_names_hold_no_token

COMPAT_KEYS = ["model", "classifier", "seed", "class_names", "classes", "caso"]


@dataclass
class CasoRow:
    """What the summary reports for one source class: its edits' target and the guide accuracy of
    one-step edits before and after learning the embedding."""

    class_index: int
    target: int
    token: str
    init_accuracy: float
    final_accuracy: float
    seconds: float


@dataclass
class CasoOutcome:
    """What a :class:`CasoWorker` returns for one class: the row, the embedding to save and the
    edited samples of its shard."""

    row: CasoRow
    embedding: torch.Tensor
    samples: list[SynthSample]
    shard: int


@dataclass
class CasoReals:
    """One class's k real images as the driver decoded them (RGB uint8 arrays, original size) and
    the ``source_key`` each edit's manifest row records."""

    images: list[np.ndarray]
    source_keys: list[str]


@dataclass
class CasoUnit:
    """One source class: its index, its shard and its reals (sent by reference)."""

    class_index: int
    shard: int
    reals: Payload[CasoReals]


def read_reals(dataset: Dataset, samples: list[Any], split: str) -> CasoReals:
    """Decode ``samples`` on the driver (the worker's node may not have the dataset)."""
    return CasoReals([np.array(dataset.load_image(s).convert("RGB")) for s in samples],
                     [f"{dataset.name}:{split}:{s.ref}" for s in samples])


class CasoWorker:
    def __init__(self, cfg_dict: dict[str, Any], class_names: list[str], classifier: ClassifierSource | str) -> None:
        from augment.models.backbone import load_backbone
        from augment.models.classifier import load_classifier

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.names = class_names
        self.pipe = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        self.trainer = CasoTrainer(self.pipe, load_classifier(classifier), cfg.caso, cfg.seed)

    def run(self, unit: CasoUnit) -> CasoOutcome:
        c, shard_index, reals = unit.class_index, unit.shard, unit.reals.get()
        cfg, cc = self.cfg, self.cfg.caso
        target = c if cc.target is None else int(cc.target)
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        images = torch.stack([
            torch.from_numpy(np.array(Image.fromarray(a).resize((size, size)))).permute(2, 0, 1)
            for a in reals.images]).float() / 255
        res = self.trainer.learn(images, c, target)
        prompt = " ".join(vector_tokens(res.token, cc.n_vectors))
        samples = []
        for j, (source_key, img) in enumerate(zip(reals.source_keys, images, strict=True)):
            seeds = [derive_seed(cfg.seed, "caso-edit", c, target, j, e) for e in range(cc.edits_per_image)]
            edited = Diffusion(self.pipe).edit(prompt, img.unsqueeze(0).repeat(len(seeds), 1, 1, 1), seeds,
                                               cc.strength, cc.edit_steps, cc.edit_guidance)
            probs = self.trainer.classifier(edited).softmax(-1)
            arrays = (edited.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for e in range(len(seeds)):
                index = c * 100000 + j * cc.edits_per_image + e  # unique across source classes
                samples.append(SynthSample(sample_key(target, index), target, encode_image(arrays[e], cc.image_format),
                                           cc.image_format, {
                    "class_name": self.names[target], "prompt": prompt, "seed": seeds[e], "token": res.token,
                    "mode": "edit", "source_key": source_key, "strength": cc.strength,
                    "model_id": cfg.model, "scheduler": cfg.scheduler, "steps": cc.edit_steps,
                    "guidance_scale": cc.edit_guidance, "guide_confidence": float(probs[e, target]),
                    "guide_pred": int(probs[e].argmax()), "attempts": 1, "status": "ok", "sample_index": index}))
        row = CasoRow(c, target, res.token, res.init_accuracy, res.final_accuracy, res.seconds)
        return CasoOutcome(row, res.embedding, samples, shard_index)


def make_worker(cfg_dict: dict[str, Any], names: list[str],
                classifier: Payload[ClassifierSource]) -> CasoWorker | BrokenWorker:
    """The factory an actor calls: the classifier arrives by reference, fetched here."""
    return build_worker(lambda: CasoWorker(cfg_dict, names, classifier.get()))


@dataclass
class CasoSummary(stage.StageSummary):
    """``rows``: one per class learned and edited by this call."""

    rows: list[CasoRow]


class CasoStage(stage.Stage[CasoUnit, CasoOutcome, CasoSummary]):
    """Units are :class:`CasoUnit` (source class, shard, reals); results are :class:`CasoOutcome`."""

    name = "caso"
    compat_keys = COMPAT_KEYS

    def __init__(self, cfg: Config) -> None:
        super().__init__(cfg)
        self.names: list[str] = []
        self.classes: list[int] = []
        self.token_rows: dict[int, TokenRow] = {}
        self.rows: list[CasoRow] = []
        self.dataset: Dataset | None = None
        self.classifier: Payload[ClassifierSource] | None = None

    @property
    def arm(self) -> ArmDir:
        return self.run.arm_dir("caso")

    def preflight(self) -> None:
        from augment.models.backbone import resolve_backbone_path
        from augment.models.classifier import check_classes, load_classifier, read_classifier_source

        cfg, cc = self.cfg, self.cfg.caso
        self.dataset = dataset = load_dataset(cfg)
        self.names = names = dataset.class_names
        check_names_hold_no_token(names)
        self.classes = select_classes(cfg.classes, len(names), names)
        if cc.split not in dataset.splits():
            raise AugmentError(f"caso learns from real images but {cfg.dataset} has no split {cc.split!r} "
                               f"(available: {dataset.splits() or 'none'}); pass --data-root")
        if cc.target is not None and not 0 <= int(cc.target) < len(names):
            raise AugmentError(f"caso.target {cc.target} is out of range; this dataset has classes 0-{len(names) - 1}")
        # k too large, or a k-shot image that cannot be decoded (corrupt, a decompression bomb):
        # one error naming it before any model loads or the run folder is made
        for sample in dataset.kshot(cc.k, cfg.seed, cc.split):
            dataset.load_image(sample)
        resolve_backbone_path(cfg.model)
        source = read_classifier_source(cfg.classifier)  # read once here: workers may not see this disk
        check_classes(load_classifier(source), names)
        self.classifier = Payload(source)

    def run_json_extra(self) -> dict[str, Any]:
        return {"class_names": self.names}

    def plan(self, force: bool) -> stage.Plan[CasoUnit]:
        assert self.dataset is not None
        cfg, cc, dataset = self.cfg, self.cfg.caso, self.dataset
        cleanup_partial(self.arm.path)  # what a killed run left half-written, as generate does
        remove_temp_files(self.arm.tokens)
        done = done_shards(self.arm.path)
        kshot = dataset.kshot(cc.k, cfg.seed, cc.split)
        # each class's reals are decoded when its unit is sent, and released once it is written
        todo = [CasoUnit(c, i, Payload.lazy(partial(read_reals, dataset, [s for s in kshot if s.label == c], cc.split)))
                for i, c in enumerate(self.classes)
                if force or i not in done or not complete_shard_keys(self.arm.path, i)]  # unreadable: redone
        self.token_rows = read_token_rows(self.arm.tokens_parquet)
        return stage.Plan(todo, skipped=len(self.classes) - len(todo), total=len(self.classes))

    def worker_factory(self) -> WorkerFactory:
        return partial(make_worker, self.cfg_dict, self.names, self.classifier)

    def on_result(self, unit: CasoUnit, res: CasoOutcome) -> str | None:
        from augment.tokens.textual_inversion import save_token

        unit.reals.release()
        cfg, cc, row = self.cfg, self.cfg.caso, res.row
        c = row.class_index
        path = self.arm.token_file(c, self.names[c], row.target)
        sha = save_token(path, row.token, res.embedding)
        self.token_rows[c] = TokenRow(class_index=c, class_name=self.names[c], token=row.token,
                                      init_token=cc.init_token, token_file=path.name, token_sha256=sha,
                                      steps=cc.max_steps, final_accuracy=row.final_accuracy, seconds=row.seconds,
                                      status="ok", lr=cc.lr, model_id=cfg.model)
        write_token_rows(self.arm.tokens_parquet, self.token_rows)
        write_shard(self.arm.path, res.shard, res.samples)
        write_info(self.arm.path, f"{cfg.dataset}-caso")
        self.rows.append(row)
        return None

    def on_failed(self, unit: CasoUnit, error: str) -> None:
        unit.reals.release()

    def unit_label(self, unit: CasoUnit) -> str:
        return f"class {unit.class_index}"

    def progress_postfix(self, unit: CasoUnit, res: CasoOutcome) -> dict[str, Any]:
        return {"cls": res.row.class_index, "acc": f"{res.row.init_accuracy:.2f}->{res.row.final_accuracy:.2f}"}

    def summary(self, **common: Any) -> CasoSummary:
        return CasoSummary(**common, rows=self.rows)


def run_caso(cfg: Config, force: bool = False, show_progress: bool = True) -> CasoSummary:
    """Learn and edit the selected classes into the run folder's caso arm."""
    return stage.run_stage(CasoStage(cfg), force, show_progress)
