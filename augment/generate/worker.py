"""Generate one shard's images: batched diffusers sampling, guidance-classifier scoring, encoding.

The worker loads the pipeline, every class token and the guidance classifier once. Images are
encoded on a small thread pool while the next batch is sampled, so the sampler does not wait on
PNG/JPEG encoding; the driver writes the shard to disk while the worker goes on.

The worker opens no file of the run folder: the token vectors and the classifier's checkpoint
arrive from the driver (:class:`GenSpec`, :class:`~augment.models.classifier.ClassifierSource`,
sent by reference through the object store), so a GPU node that shares no disk with the driver
generates the same shards. Only the diffusion weights come from the node itself.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch

from augment.config import config_from_dict
from augment.generate.plan import ShardUnit, render_prompt, sample_seed
from augment.io.images import encode_image
from augment.io.shards import SynthSample, sample_key
from augment.models.classifier import ClassifierSource
from augment.models.diffusion import Diffusion
from augment.shipping import BrokenWorker, Payload, build_worker
from augment.tokens.textual_inversion import TokenEmbedding


def default_batch_size(device: torch.device, resolution: int) -> int:
    """Images per sampler call: enough to fill the device at this resolution."""
    scale = (512 / max(resolution, 8)) ** 2
    if device.type == "cuda":
        return int(max(1, min(256, 8 * scale)))
    return int(max(1, min(64, 0.5 * scale)))


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
    def __init__(self, cfg_dict: dict[str, Any], spec: GenSpec, classifier: ClassifierSource | str) -> None:
        from augment.models.backbone import load_backbone, native_resolution
        from augment.models.classifier import load_classifier
        from augment.tokens.textual_inversion import add_embeddings

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.spec = spec
        self.pipe = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        if not spec.baseline:
            add_embeddings(self.pipe, [spec.tokens[c] for c in sorted(spec.tokens)])
        self.device = self.pipe.unet.device
        self.classifier = load_classifier(classifier, self.device)
        self.resolution = cfg.resolution or native_resolution(self.pipe)
        self.batch_size = cfg.generate.batch_size or default_batch_size(self.device, self.resolution)
        self.encoder = ThreadPoolExecutor(max_workers=2)

    def token(self, c: int) -> str:
        from augment.tokens.textual_inversion import token_string

        return "" if self.spec.baseline else token_string(c)

    def negative_prompt(self, c: int) -> str:
        """The class's own negative prompt (token arm, from tokens.parquet), else generate.negative_prompt."""
        return self.spec.negative_prompts.get(c, self.cfg.generate.negative_prompt)

    def prompt(self, c: int, i: int) -> str:
        templates = self.cfg.generate.prompts
        return render_prompt(templates[i % len(templates)], self.token(c), self.spec.class_names[c])

    @cached_property
    def diffusion(self) -> Diffusion:
        """The sampler over the loaded pipeline (it holds nothing but the pipeline)."""
        return Diffusion(self.pipe)

    def sample(self, prompts: list[str], seeds: list[int], negatives: list[str] | None = None) -> torch.Tensor:
        """Images in [0,1] (N,3,H,W) from diffusers' own pipeline call, noise from per-sample seeds."""
        g = self.cfg.generate
        return self.diffusion.generate(prompts, seeds, g.steps, g.guidance_scale,
                                       g.negative_prompt if negatives is None else negatives, self.resolution)

    @torch.no_grad()
    def score(self, images: torch.Tensor, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        probs = self.classifier(images.to(self.device)).softmax(-1).float().cpu()
        target = torch.tensor(classes)
        return probs[torch.arange(len(classes)), target].numpy(), probs.argmax(-1).numpy()

    def run(self, unit: ShardUnit) -> list[SynthSample]:
        g, seed = self.cfg.generate, self.cfg.seed
        # queue of (position in shard, class, sample index, attempt)
        queue = [(pos, c, i, 0) for pos, (c, i) in enumerate(unit.entries)]
        best: dict[int, tuple[float, Any]] = {}  # pos -> (confidence, record)
        while queue:
            batch, queue = queue[: self.batch_size], queue[self.batch_size :]
            seeds = [sample_seed(seed, c, i, a) for _, c, i, a in batch]
            images = self.sample([self.prompt(c, i) for _, c, i, _ in batch], seeds,
                                 [self.negative_prompt(c) for _, c, _, _ in batch])
            conf, pred = self.score(images, [c for _, c, _, _ in batch])
            arrays = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for j, (pos, c, i, a) in enumerate(batch):
                ok = conf[j] >= g.min_confidence
                retry = not ok and a + 1 < g.max_attempts
                if pos not in best or conf[j] > best[pos][0]:
                    fut = self.encoder.submit(encode_image, arrays[j], g.image_format)
                    best[pos] = (float(conf[j]), (c, i, a, seeds[j], int(pred[j]), fut))
                if retry:
                    queue.append((pos, c, i, a + 1))
        samples = []
        for pos in range(len(unit.entries)):
            confidence, (c, i, a, s, p, fut) = best[pos]
            meta = {
                "class_name": self.spec.class_names[c], "prompt": self.prompt(c, i),
                "negative_prompt": self.negative_prompt(c) or None, "seed": s, "token": self.token(c) or None,
                "token_sha256": self.spec.token_sha(c),
                "mode": "txt2img", "model_id": self.cfg.model, "scheduler": self.cfg.scheduler, "steps": g.steps,
                "guidance_scale": g.guidance_scale, "guide_confidence": confidence, "guide_pred": p,
                "attempts": a + 1 if confidence >= g.min_confidence else g.max_attempts,
                "status": "ok" if confidence >= g.min_confidence else "low_confidence", "sample_index": i,
            }
            samples.append(SynthSample(sample_key(c, i), c, fut.result(), g.image_format, meta))
        return samples


def make_worker(cfg_dict: dict[str, Any], spec: Payload[GenSpec],
                classifier: Payload[ClassifierSource]) -> GenerateWorker | BrokenWorker:
    """The factory an actor calls: the spec and classifier arrive by reference, fetched here."""
    return build_worker(lambda: GenerateWorker(cfg_dict, spec.get(), classifier.get()))
