"""How well the built pipeline draws each digit from the plain prompt, judged by both classifiers.

This is the number the card reports: the accuracy class tokens have to improve on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from augment.datasets.digits import DIGIT_NAMES
from augment.models.embedded.classifiers import classify, per_class_accuracy

__all__ = ["EVAL_PROMPT", "evaluate_generation", "generate_class_images"]

EVAL_PROMPT = "a photo of the digit {name}"


def generate_class_images(
    pipe, name: str, n: int, steps: int, guidance: float, seed: int, batch: int
) -> torch.Tensor:
    """n images for the plain prompt of one class, [n,3,32,32] in [0,1]; seeds seed+i."""
    prompt = EVAL_PROMPT.format(name=name)
    outs = []
    for start in range(0, n, batch):
        k = min(batch, n - start)
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(k)]
        img = pipe(
            [prompt] * k,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        ).images
        outs.append(torch.from_numpy(np.asarray(img)).permute(0, 3, 1, 2).float())
    return torch.cat(outs).clamp(0, 1)


def evaluate_generation(pipe, classifiers: dict[str, tuple[Any, dict]], cfg: dict, seed: int) -> dict:
    """Per-class and mean accuracy of generated images, judged by each classifier."""
    pipe.set_progress_bar_config(disable=True)
    preds: dict[str, list[torch.Tensor]] = {k: [] for k in classifiers}
    labels = []
    for c, name in enumerate(tqdm(DIGIT_NAMES, desc="eval generation")):
        imgs = generate_class_images(
            pipe, name, cfg["per_class"], cfg["steps"], cfg["guidance"], seed + 100_000 * c, cfg["batch"]
        )
        labels.append(torch.full((len(imgs),), c))
        for k, (model, meta) in classifiers.items():
            preds[k].append(classify(model, imgs, meta["mean"], meta["std"]))
    y = torch.cat(labels)
    result: dict[str, Any] = {
        "prompt": EVAL_PROMPT,
        "per_class_images": cfg["per_class"],
        "scheduler": "DDIMScheduler",
        "num_inference_steps": cfg["steps"],
        "guidance_scale": cfg["guidance"],
        "seeds": f"class c, image i: {seed} + 100000*c + i (one torch.Generator per image)",
    }
    for k in classifiers:
        p = torch.cat(preds[k])
        pc = per_class_accuracy(p, y)
        confusion = torch.zeros(10, 10, dtype=torch.long)
        for t_, p_ in zip(y.tolist(), p.tolist(), strict=True):
            confusion[t_, p_] += 1
        result[f"by_{k}"] = {
            "mean_accuracy": float(np.mean(list(pc.values()))),
            "per_class_accuracy": pc,
            "confusion": confusion.tolist(),
        }
    return result
