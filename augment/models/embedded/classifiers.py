"""The two digit classifiers the embedded build ships: the guide (a small CNN) and the judge (a tiny ViT).

They are trained here, on the digits train split only, and written as a ``.safetensors`` + ``.json``
sidecar pair that :func:`augment.models.classifier.load_classifier` loads at run time; the judge is
a different architecture and seed so that it scores generated images independently of the guide.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from augment.datasets.digits import DIGIT_NAMES
from augment.models.embedded.data import random_shift

__all__ = [
    "GUIDE_ARCH",
    "JUDGE_ARCH",
    "classifier_sidecar",
    "classify",
    "fit_digit_classifier",
    "load_built_classifier",
    "per_class_accuracy",
]

GUIDE_ARCH = ("resnet10t", {"channels": [16, 32, 64, 128], "stem_width": 16})
JUDGE_ARCH = (
    "vit_tiny_patch16_224",
    {"img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": 3},
)


def fit_digit_classifier(
    arch: str,
    kwargs: dict,
    x01: torch.Tensor,
    y: torch.Tensor,
    mean: list[float],
    std: list[float],
    cfg: dict,
    seed: int,
    desc: str,
):
    """(model, stats): label-smoothed cross entropy on shifted train images, warmup + cosine LR."""
    import timm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=10, **kwargs)
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    n, bs = len(x01), cfg["batch_size"]
    per_epoch = n // bs  # drop the last partial batch
    total = per_epoch * cfg["epochs"]
    if cfg.get("max_steps"):
        total = min(total, cfg["max_steps"])
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm)))
        ),
    )
    order = np.concatenate([rng.permutation(n)[: per_epoch * bs] for _ in range(cfg["epochs"])])
    model.train()
    losses = []
    bar = tqdm(range(total), desc=desc, mininterval=5)
    for step in bar:
        idx = torch.from_numpy(order[step * bs : (step + 1) * bs])
        xb = random_shift(x01[idx], gen, 1, fill=0.0)
        loss = F.cross_entropy(model((xb - mean_t) / std_t), y[idx], label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
    model.eval()
    return model, {"final_loss": float(np.mean(losses[-20:])) if losses else None, "steps": total}


@torch.no_grad()
def classify(model, x01: torch.Tensor, mean: list[float], std: list[float], batch: int = 500) -> torch.Tensor:
    """Predicted class per image, normalised with the sidecar's mean/std as at run time."""
    mean_t = torch.tensor(mean).view(1, 3, 1, 1)
    std_t = torch.tensor(std).view(1, 3, 1, 1)
    out = [model((x01[i : i + batch] - mean_t) / std_t).argmax(-1) for i in range(0, len(x01), batch)]
    return torch.cat(out)


def per_class_accuracy(pred: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy per digit name (the cards report it per class: confusions are class-specific)."""
    return {DIGIT_NAMES[c]: float((pred[y == c] == c).float().mean()) for c in range(10) if (y == c).any()}


def classifier_sidecar(arch: str, kwargs: dict, mean: list[float], std: list[float], card: dict) -> dict:
    """The ``.json`` next to the weights: what the runtime loader needs to rebuild and normalise."""
    return {
        "arch": arch,
        "kwargs": kwargs,
        "class_names": list(DIGIT_NAMES),
        "input_size": [3, 32, 32],
        "mean": mean,
        "std": std,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
        "card": card,
    }


def load_built_classifier(weights: Path, sidecar: Path | None = None):
    """(model, sidecar dict) from a .safetensors + .json pair written by this module."""
    import timm
    from safetensors.torch import load_file

    meta = json.loads(Path(sidecar or Path(weights).with_suffix(".json")).read_text())
    model = timm.create_model(
        meta["arch"], pretrained=False, num_classes=len(meta["class_names"]), **meta["kwargs"]
    )
    model.load_state_dict(load_file(str(weights)))
    return model.eval(), meta
