"""The digits images every part of the embedded build trains on, and their +-1 px shift augmentation.

The VAE, the UNet and both classifiers see the same 32x32 RGB tensors (from
:func:`augment.datasets.digits.to_rgb32`, the preprocessing the runtime uses) and the same shift,
so the helpers live here once.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from augment.datasets.digits import digits_split, to_rgb32

__all__ = ["all_shifts", "digits_tensors", "random_shift"]


def digits_tensors(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of a split as float [N,3,32,32] in [0,1] (via `to_rgb32`) and int64 labels."""
    x8, y = digits_split()[split]
    arr = np.stack([np.asarray(to_rgb32(im), dtype=np.float32) / 255.0 for im in x8])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(
        np.asarray(y, dtype=np.int64)
    )


def random_shift(
    x: torch.Tensor, gen: torch.Generator, max_shift: int = 1, fill: float = 0.0
) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift] (pad with `fill`, crop)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    offs = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        dy, dx = int(offs[i, 0]), int(offs[i, 1])
        out[i] = padded[i, :, dy : dy + h, dx : dx + w]
    return out


def all_shifts(x: torch.Tensor, max_shift: int = 1, fill: float = 0.0) -> torch.Tensor:
    """Every shifted copy of every image: [S, N, C, H, W] with S = (2*max_shift+1)**2."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=fill)
    k = 2 * max_shift + 1
    return torch.stack([padded[:, :, dy : dy + h, dx : dx + w] for dy in range(k) for dx in range(k)])
