"""Generate one shard's images: batched diffusers sampling, guidance-classifier scoring, encoding.

The worker loads the pipeline and the guidance classifier through its host's model cache (once per
worker host, :mod:`augment.models.cache`, for all stages of a build) and installs the class tokens
into the pipeline for each shard, removing them after it. Images are
encoded on a small thread pool while the next batch is sampled, so the sampler does not wait on
PNG/JPEG encoding; the driver writes the shard to disk while the worker goes on.

The worker opens no file of the run folder: the token vectors and the classifier's checkpoint
arrive from the driver (:class:`GenSpec`, :class:`~augment.models.classifier.ClassifierSource`,
sent by reference through the object store), so a GPU node that shares no disk with the driver
generates the same shards. Only the diffusion weights come from the node itself.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from augment.config import config_from_dict
from augment.errors import AugmentError
from augment.generate.plan import ShardUnit, sample_prompt, sample_seed
from augment.generate.rejection import RejectionStats, quotas, stream_seed
from augment.io.images import encode_image
from augment.io.manifest import ManifestRow
from augment.io.shards import SynthSample, sample_key
from augment.models.cache import ModelCache
from augment.models.classifier import ClassifierSource
from augment.models.device import DeviceInfo, default_batch_size, describe_device
from augment.models.diffusion import Diffusion
from augment.models.memory import preflight
from augment.models.speed import compiled_unet, tune_pipeline
from augment.progress import Sink
from augment.shipping import Payload
from augment.tokens.textual_inversion import TokenEmbedding, installed_tokens


def soft_label(probs: np.ndarray, k: int) -> tuple[list[int], list[float]] | None:
    """The top-``k`` (all when ``k`` >= the number of classes) of one softmax vector: class indices,
    most probable first, ties by index, and their probabilities rounded to 6 decimals, so the stored
    values do not move with float noise below that; None for ``k`` = 0."""
    if k <= 0:
        return None
    rounded = np.round(probs.astype(np.float64), 6)
    order = np.lexsort((np.arange(len(rounded)), -rounded))[:k]
    return [int(c) for c in order], [float(rounded[c]) for c in order]


@dataclass
class Drawn:
    """One sampled and scored image: class, prompt index, seed, the guide's verdict and soft label,
    and its encoding (None for a rejected draw, which is not encoded). ``finite`` is False when the
    image or its guide confidence holds NaN/inf (an fp16 overflow): such a draw is always rejected."""

    c: int
    i: int
    seed: int
    confidence: float
    pred: int
    soft: tuple[list[int], list[float]] | None
    future: Future[bytes] | None
    finite: bool = True


@dataclass
class ShardResult:
    """What a worker returns for one shard: its samples in shard order and, under
    ``min_confidence``, the draws per class (stored in the manifest's metadata)."""

    samples: list[SynthSample]
    rejection: RejectionStats | None = None
    nonfinite: int = 0  # draws rejected because their image was NaN/inf (redrawn, never written)
    device: DeviceInfo | None = None  # what made the images (the manifest's metadata)

    def metadata(self) -> dict[str, str] | None:
        """The manifest's file-level entries: the rejection counts and the device (None: neither)."""
        out = {**(self.rejection.metadata() if self.rejection is not None else {}),
               **(self.device.metadata() if self.device is not None else {})}
        return out or None


@dataclass
class GenSpec:
    """What the driver resolved for the worker: class names, the arm, and the token embeddings
    themselves (read from the run folder by the driver; empty for the baseline arm)."""

    class_names: list[str]
    tokens: dict[int, TokenEmbedding]  # class index -> its token file's content
    baseline: bool
    # class index -> the negative prompt its token was trained with (tokens.negative_confusers)
    negative_prompts: dict[int, str] = field(default_factory=dict)

    def token_sha(self, c: int) -> str | None:
        """The sha256 of class ``c``'s token file (manifests' ``token_sha256``); None on the baseline arm."""
        return None if self.baseline or c not in self.tokens else self.tokens[c].sha256


class GenerateWorker:
    def __init__(self, cfg_dict: dict[str, Any], spec: GenSpec, classifier: ClassifierSource | str,
                 progress: Sink | None = None, cache: ModelCache | None = None) -> None:
        from augment.models.backbone import native_resolution

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.spec = spec
        # before any model loads: a CUDA card without the memory for a batch is refused in one line,
        # or the auto batch lowered to one that fits
        fitted = preflight(cfg, stage="generate")
        cache = cache if cache is not None else ModelCache()
        # the host's pipeline, shared with the other stages: the tokens go in for each shard and
        # out after it (run), so it is never left holding them
        self.pipe = cache.backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        self.device = self.pipe.unet.device
        #: resolved here, on the worker's node (the pool records it; each manifest names it)
        self.device_info = describe_device(self.device, self.pipe.unet.dtype)
        self.classifier = cache.classifier(classifier, self.device)
        # channels_last + fused QKV on CUDA (a no-op elsewhere); generate.compile in sample()
        tune_pipeline(self.pipe, channels_last=cfg.generate.channels_last, fuse_qkv=cfg.generate.fuse_qkv)
        self.resolution = cfg.resolution or native_resolution(self.pipe)
        self.batch_size = cfg.generate.batch_size or fitted or default_batch_size(self.device, self.resolution)
        self.encoder = ThreadPoolExecutor(max_workers=2)
        self.progress = progress  # told how many images of the shard are final, batch by batch

    def token(self, c: int) -> str:
        from augment.tokens.textual_inversion import token_string

        return "" if self.spec.baseline else token_string(c)

    def negative_prompt(self, c: int) -> str:
        """The class's own negative prompt (token arm, from tokens.parquet), else generate.negative_prompt."""
        return self.spec.negative_prompts.get(c, self.cfg.generate.negative_prompt)

    def prompt(self, c: int, i: int) -> str:
        return sample_prompt(self.cfg.generate.prompts, i, self.token(c), self.spec.class_names[c])

    @cached_property
    def diffusion(self) -> Diffusion:
        """The sampler over the loaded pipeline (it holds nothing but the pipeline)."""
        return Diffusion(self.pipe)

    def sample(self, prompts: list[str], seeds: list[int], negatives: list[str] | None = None) -> torch.Tensor:
        """Images in [0,1] (N,3,H,W) from diffusers' own pipeline call, noise from per-sample seeds."""
        g = self.cfg.generate
        with compiled_unet(self.pipe, g.compile):
            return self.diffusion.generate(prompts, seeds, g.steps, g.guidance_scale,
                                           g.negative_prompt if negatives is None else negatives, self.resolution)

    @torch.no_grad()
    def score(self, images: torch.Tensor, classes: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The guide's probability of each image's class, its prediction, and its whole softmax (N, C)."""
        probs = self.classifier(images.to(self.device)).softmax(-1).float().cpu()
        target = torch.tensor(classes)
        return probs[torch.arange(len(classes)), target].numpy(), probs.argmax(-1).numpy(), probs.numpy()

    def draw(self, draws: list[tuple[int, int, int]], report: Callable[[int], None] | None = None) -> list[Drawn]:
        """Sample, score and (in the background) encode ``(class, prompt index, seed)`` draws, in
        batches; encoding is started only for the images ``keep`` accepts. ``report(n)`` hears how
        many draws are done after each batch (the progress bar)."""
        g = self.cfg.generate
        out: list[Drawn] = []
        for a in range(0, len(draws), self.batch_size):
            batch = draws[a : a + self.batch_size]
            images = self.sample([self.prompt(c, i) for c, i, _ in batch], [s for _, _, s in batch],
                                 [self.negative_prompt(c) for c, _, _ in batch])
            conf, pred, probs = self.score(images, [c for c, _, _ in batch])
            # one overflowing image is one rejected draw: `NaN >= x` is False, so it is never encoded
            finite = torch.isfinite(images).flatten(1).all(1).cpu().numpy() & np.isfinite(conf)
            pixels = torch.nan_to_num(images.float(), nan=0.0, posinf=1.0, neginf=0.0)
            arrays = (pixels.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for j, (c, i, s) in enumerate(batch):
                ok = bool(finite[j]) and conf[j] >= g.min_confidence
                fut = self.encoder.submit(encode_image, arrays[j], g.image_format) if ok else None
                out.append(Drawn(c, i, s, float(conf[j]), int(pred[j]), soft_label(probs[j], g.soft_labels), fut,
                                 bool(finite[j])))
            if report is not None:
                report(sum(d.finite for d in out))
        return out

    def _report(self, unit: ShardUnit, done: int) -> None:
        """Tell the driver's bar how many images of ``unit`` are final (an absolute count)."""
        if self.progress is not None:
            self.progress(unit.index, done)

    def meta(self, d: Drawn, sample_index: int, attempts: int) -> ManifestRow:
        """The manifest row as the worker knows it for one kept draw (write_shard adds the file facts)."""
        g = self.cfg.generate
        soft_classes, soft_probs = d.soft if d.soft is not None else (None, None)
        return ManifestRow(
            class_name=self.spec.class_names[d.c], prompt=self.prompt(d.c, d.i),
            negative_prompt=self.negative_prompt(d.c) or None, seed=d.seed, token=self.token(d.c) or None,
            token_sha256=self.spec.token_sha(d.c),
            mode="txt2img", model_id=self.cfg.model, scheduler=self.cfg.scheduler, steps=g.steps,
            guidance_scale=g.guidance_scale, guide_confidence=d.confidence, guide_pred=d.pred,
            soft_classes=soft_classes, soft_probs=soft_probs,
            attempts=attempts, status="ok", sample_index=sample_index,
        )

    def run(self, unit: ShardUnit) -> ShardResult:
        """One shard, the class tokens in the pipeline for it only (the baseline arm has none): the
        pipeline is the host's, and the next stage gets it as a fresh load would be."""
        tokens = {} if self.spec.baseline else {self.spec.tokens[c].token: self.spec.tokens[c].vectors
                                                  for c in sorted(self.spec.tokens)}
        with installed_tokens(self.pipe, tokens):
            return self.shard(unit)

    def shard(self, unit: ShardUnit) -> ShardResult:
        """One shard: every planned sample from its own seed, or, under ``min_confidence``, the
        slots filled from the classes' attempt streams (:mod:`augment.generate.rejection`)."""
        g, seed = self.cfg.generate, self.cfg.seed
        if g.min_confidence <= 0:
            return self.plain_shard(unit)
        streams = quotas(unit, g.max_attempts)
        got: dict[tuple[int, int], Drawn] = {}  # (class, draw) -> an accepted draw
        nonfinite = 0
        while True:
            todo = [(s, d) for s in streams for d in s.schedule(g.max_attempts)]
            if not todo:
                break
            # the prompt template follows the draw (a slot is known only once a draw is accepted)
            results = self.draw([(s.class_index, d, stream_seed(seed, s.class_index, unit.index, d)) for s, d in todo])
            for (s, d), r in zip(todo, results, strict=True):
                nonfinite += not r.finite
                s.record(d, r.future is not None)
                if r.future is not None:
                    got[s.class_index, d] = r
            self._report(unit, sum(len(s.used) for s in streams))
        filled: dict[tuple[int, int], Drawn] = {}
        attempts: dict[tuple[int, int], int] = {}
        for s in streams:
            previous = -1
            for slot, d in zip(s.slots, s.used, strict=False):
                filled[s.class_index, slot], attempts[s.class_index, slot] = got[s.class_index, d], d - previous
                previous = d
        samples = [self.sample_of(filled[e], e[1], attempts[e]) for e in unit.entries if e in filled]
        return ShardResult(samples, RejectionStats.of(streams, g.min_confidence, g.max_attempts), nonfinite,
                           device=self.device_info)

    def plain_shard(self, unit: ShardUnit) -> ShardResult:
        """Every planned sample from its own seed; a NaN/inf image (an fp16 overflow) is one rejected
        draw, redrawn from its class's attempt stream in this shard (:func:`stream_seed`, the seeds
        ``--min-confidence`` draws from, taken in slot order), so the shard keeps all its keys and its
        bytes still depend only on the run seed and the plan. A slot that stays non-finite for
        ``max_attempts`` draws is a model that overflows at this dtype: one line saying so."""
        g, seed = self.cfg.generate, self.cfg.seed
        drawn = self.draw([(c, i, sample_seed(seed, c, i)) for c, i in unit.entries], lambda n: self._report(unit, n))
        final = {(d.c, d.i): d for d in drawn}
        attempts = dict.fromkeys(final, 1)
        nonfinite = 0
        stream: dict[int, int] = {}  # class -> the next draw of its attempt stream
        while bad := [e for e in unit.entries if not final[e].finite]:
            nonfinite += len(bad)
            spent = [e for e in bad if attempts[e] >= g.max_attempts]
            if spent:
                c, i = spent[0]
                raise AugmentError(
                    f"class {c} ({self.spec.class_names[c]!r}) sample {i}: {attempts[spent[0]]} draws in a row gave "
                    f"NaN/inf images ({len(spent)} such samples in shard {unit.index}); the model overflows at "
                    f"--dtype {self.cfg.dtype}: use --dtype bfloat16 or float32, or raise --max-attempts")
            redraws = []
            for c, i in bad:
                d = stream.get(c, 0)
                stream[c] = d + 1
                redraws.append((c, i, stream_seed(seed, c, unit.index, d)))
            for r in self.draw(redraws):
                final[r.c, r.i] = r
                attempts[r.c, r.i] += 1
            self._report(unit, sum(d.finite for d in final.values()))
        return ShardResult([self.sample_of(final[e], e[1], attempts[e]) for e in unit.entries], nonfinite=nonfinite,
                           device=self.device_info)

    def sample_of(self, d: Drawn, sample_index: int, attempts: int) -> SynthSample:
        assert d.future is not None
        return SynthSample(sample_key(d.c, sample_index), d.c, d.future.result(), self.cfg.generate.image_format,
                           self.meta(d, sample_index, attempts))


def make_worker(cfg_dict: dict[str, Any], spec: Payload[GenSpec], classifier: Payload[ClassifierSource],
                progress: Sink | None = None, cache: ModelCache | None = None) -> GenerateWorker:
    """The factory a worker host calls with its model cache: the spec and classifier arrive by
    reference, fetched here; ``progress`` hears of every finished image (the driver's bar, across actors)."""
    return GenerateWorker(cfg_dict, spec.get(), classifier.get(), progress, cache)
