"""Batched augmentation for small images: one affine warp per batch instead of per-sample PIL/v2 ops.

At 32x32 on a CPU, torchvision's per-sample ``RandomCrop`` + ``RandomAffine`` cost ~1.7 ms an
image, more than a small CNN's forward and backward pass; drawing per-sample parameters and
warping the whole batch with ``F.affine_grid`` / ``F.grid_sample`` costs well under a millisecond
per batch. The augmentation is the standard small-image one: a random shift of up to ``pad``
pixels (random crop with zero padding), a small rotation and scale, and an optional horizontal
flip (off by default: a mirrored digit is another glyph, mirrored birds are still birds).

Above :data:`SMALL_INPUT` pixels (CUB, iNat, ImageNet, a user's photos at 224) training follows
the literature instead: timm's ImageNet train transform (``create_transform``: RandomResizedCrop,
flip with ``train.hflip``, colour jitter) per image, normalised with the backbone's mean/std
(``resolve_data_config``). :func:`training_recipe` picks one of the two, once per run.

On CUDA a batch crosses to the GPU as uint8 (a quarter of float32's bytes) and is augmented and
normalised there: :class:`BatchAugment` runs on whatever device its images are on, and with
``uint8_samples`` timm's per-image transform stops before normalising (``use_prefetcher=True``, as
timm's own GPU prefetcher does) and hands back uint8, normalised on the device
(:func:`device_batch`). That rounds each pixel to the nearest 1/255 once more, after the crop and
colour jitter: at most half a level, which on the CPU would be the only change, so the CPU keeps
the float path and its exact results.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["SMALL_INPUT", "BatchAugment", "Recipe", "device_batch", "normalize", "to_uint8", "training_recipe"]

#: the largest input side trained with :class:`BatchAugment`; larger ones use timm's transform
SMALL_INPUT = 64


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (or [0,1] float) images (N,3,H,W) -> float32, normalised with ``mean``/``std``."""
    x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[0,1] float images -> uint8, rounded to the nearest level (the bytes a batch crosses to the GPU as)."""
    return images.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)


@dataclass
class BatchAugment:
    """Random shift (``pad`` px), rotation (±``degrees``), scale (``scale`` range) and horizontal
    flip (probability ``hflip``), per sample, in one ``grid_sample`` call; then normalisation."""

    pad: int = 2
    degrees: float = 10.0
    scale: tuple[float, float] = (0.9, 1.1)
    hflip: float = 0.0
    mean: Sequence[float] = (0.5, 0.5, 0.5)
    std: Sequence[float] = (0.5, 0.5, 0.5)

    def params(self, n: int, size: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
        """Per-sample affine matrices (N,2,3) in ``affine_grid``'s normalised coordinates."""
        h, w = size
        u = torch.rand(n, 5, generator=generator)
        angle = (u[:, 0] * 2 - 1) * math.radians(self.degrees)
        s = self.scale[0] + u[:, 1] * (self.scale[1] - self.scale[0])
        # integer pixel shifts in [-pad, pad], like RandomCrop(size, padding=pad)
        tx = torch.floor(u[:, 2] * (2 * self.pad + 1)) - self.pad
        ty = torch.floor(u[:, 3] * (2 * self.pad + 1)) - self.pad
        flip = torch.where(u[:, 4] < self.hflip, -1.0, 1.0)
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0] = cos * flip
        theta[:, 0, 1] = -sin
        theta[:, 1, 0] = sin * flip
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = tx * 2 / w
        theta[:, 1, 2] = ty * 2 / h
        return theta

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
        theta = self.params(len(x), (x.shape[-2], x.shape[-1]), generator).to(x.device)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return normalize(x, self.mean, self.std)


@dataclass
class Recipe:
    """How one training run augments and normalises: ``batch`` (small inputs: one warp per batch,
    normalising too) or ``sample`` (larger: timm's per-image transform of a [0,1] float image,
    normalising too); ``mean``/``std``: the normalisation, for the test images and the sidecar."""

    mean: list[float]
    std: list[float]
    batch: BatchAugment | None = None
    sample: Callable[[torch.Tensor], torch.Tensor] | None = None


def device_batch(images: torch.Tensor, recipe: Recipe, device: torch.device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """A loader's batch as the model takes it, moved first and transformed on ``device``: small
    inputs (uint8) warped and normalised by :class:`BatchAugment`; uint8 from timm's transform
    (``uint8_samples``) normalised; float ones (already normalised per image) as they are."""
    images = images.to(device, non_blocking=True)
    if recipe.batch is not None:
        return recipe.batch(images, generator)
    return normalize(images, recipe.mean, recipe.std) if images.dtype == torch.uint8 else images


def training_recipe(settings: Any, model: torch.nn.Module, uint8_samples: bool = False) -> Recipe:
    """The recipe for ``settings`` (a ``TrainConfig``) and the model it trains: :class:`BatchAugment`
    with ``settings``' pad/degrees/scale/hflip/mean/std up to :data:`SMALL_INPUT` px, else timm's
    ``create_transform(is_training=True)`` with the model's data config (``resolve_data_config``:
    its mean, std and interpolation) and ``settings.hflip``. ``uint8_samples`` (CUDA): timm's
    transform without its normalisation, its output rounded to uint8 (:func:`device_batch`
    normalises on the device)."""
    if settings.input_size <= SMALL_INPUT:
        return Recipe(list(settings.mean), list(settings.std),
                      batch=BatchAugment(settings.pad, settings.degrees, tuple(settings.scale), settings.hflip,
                                         settings.mean, settings.std))
    from timm.data import create_transform, resolve_data_config

    data = resolve_data_config({}, model=model)
    mean, std = [float(v) for v in data["mean"]], [float(v) for v in data["std"]]
    timm_transform = create_transform(settings.input_size, is_training=True, hflip=settings.hflip, mean=mean,
                                      std=std, interpolation=data.get("interpolation", "bilinear"),
                                      use_prefetcher=uint8_samples)

    def sample(image: torch.Tensor) -> torch.Tensor:
        out = timm_transform(image.float().div(255.0) if image.dtype == torch.uint8 else image)
        return to_uint8(out) if uint8_samples else out

    return Recipe(mean, std, sample=sample)
