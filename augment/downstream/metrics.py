"""Classification metrics and feature-distribution distances (FID, KID).

FID and KID are usually computed on Inception-v3 pool features; no Inception weights exist
offline, so :func:`penultimate_features` uses any classifier's penultimate layer (timm
``forward_features`` + ``forward_head(pre_logits=True)``). The numbers are therefore comparable
between arms and runs that use the same feature classifier, not with published FIDs.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "classification_metrics",
    "fid",
    "kid",
    "penultimate_features",
    "predict_logits",
]


def classification_metrics(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-5 (top-k capped at the number of classes), their per-class values, the mean
    per-class top-1, and the confusion matrix (rows = true class, columns = predicted)."""
    logits = logits.float()
    labels = labels.long()
    n_cls = len(class_names) or logits.shape[1]
    k5 = min(5, logits.shape[1])
    top = logits.topk(k5, dim=1).indices
    hit1 = (top[:, 0] == labels)
    hit5 = (top == labels[:, None]).any(dim=1)
    conf = torch.zeros(n_cls, n_cls, dtype=torch.int64)
    if len(labels):
        conf.index_put_((labels, top[:, 0].clamp(max=n_cls - 1)), torch.ones(len(labels), dtype=torch.int64),
                        accumulate=True)
    per1: dict[str, float | None] = {}
    per5: dict[str, float | None] = {}
    for c in range(n_cls):
        m = labels == c
        name = class_names[c] if class_names else str(c)
        per1[name] = float(hit1[m].float().mean()) if m.any() else None
        per5[name] = float(hit5[m].float().mean()) if m.any() else None
    present = [v for v in per1.values() if v is not None]
    return {
        "n": int(len(labels)),
        "top1": float(hit1.float().mean()) if len(labels) else None,
        "top5": float(hit5.float().mean()) if len(labels) else None,
        "top5_k": k5,
        "mean_class_top1": float(np.mean(present)) if present else None,
        "per_class_top1": per1,
        "per_class_top5": per5,
        "confusion_matrix": conf.tolist(),
    }


@torch.no_grad()
def predict_logits(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 256,
                   transform=None, device: str | torch.device = "cpu") -> torch.Tensor:
    """Logits of ``model`` over ``images`` in batches (``transform`` maps a uint8 batch to its input).

    A batch moves to ``device`` before ``transform``: uint8 crosses to a GPU, not float32."""
    model.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device, non_blocking=True)
        x = transform(x) if transform is not None else x
        out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


@torch.no_grad()
def penultimate_features(clf: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Penultimate-layer features of an :class:`augment.models.classifier.Classifier` for uint8 or
    [0,1] float images (N,3,H,W): timm models through ``forward_head(pre_logits=True)``,
    transformers models through the mean of the last hidden state."""
    inner = clf.model
    device = clf.mean.device
    feats = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        x = x.float().div(255.0) if x.dtype == torch.uint8 else x.float()
        x = clf.preprocess(x.to(device))
        if hasattr(inner, "forward_head") and hasattr(inner, "forward_features"):
            f = inner.forward_head(inner.forward_features(x), pre_logits=True)
        else:
            hs = inner(pixel_values=x, output_hidden_states=True).hidden_states[-1]
            f = hs.mean(dim=tuple(range(1, hs.dim() - 1))) if hs.dim() > 2 else hs
        feats.append(f.flatten(1).double().cpu())
    return torch.cat(feats)


def fid(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows = samples)."""
    from scipy import linalg

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # fewer samples than feature dimensions make the covariances singular; like pytorch-fid,
        # retry with a small ridge rather than warn
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
        if not np.isfinite(covmean).all() or np.abs(np.imag(covmean)).max(initial=0) > 1e-3:
            eps = np.eye(len(s1)) * 1e-6
            covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def kid(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray, subsets: int = 100,
        subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: unbiased MMD² with the cubic polynomial kernel
    ``(x·y / d + 1)^3``, averaged over random subsets (mean, std), as in Bińkowski et al. 2018."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        return float("nan"), float("nan")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    vals = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        mmd = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * kxy.mean()
        vals.append(mmd)
    return float(np.mean(vals)), float(np.std(vals))
