"""Batched augmentation: identity when off, exact shifts, flips, normalisation."""

from __future__ import annotations

import torch

from augment.downstream.transforms import BatchAugment, normalize


def _batch() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (4, 3, 8, 8), generator=g, dtype=torch.uint8)


def test_no_augmentation_is_normalisation_only():
    x = _batch()
    aug = BatchAugment(pad=0, degrees=0.0, scale=(1.0, 1.0), hflip=0.0)
    assert torch.allclose(aug(x), normalize(x, aug.mean, aug.std), atol=1e-5)
    assert torch.allclose(normalize(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3),
                          torch.ones(1, 3, 1, 1))


def test_flip_mirrors_every_image():
    x = _batch()
    aug = BatchAugment(pad=0, degrees=0.0, scale=(1.0, 1.0), hflip=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    assert torch.allclose(aug(x), x.float().div(255).flip(-1), atol=1e-5)


def test_shifts_are_whole_pixels_within_pad_with_zero_fill():
    x = _batch()
    aug = BatchAugment(pad=2, degrees=0.0, scale=(1.0, 1.0), mean=(0, 0, 0), std=(1, 1, 1))
    y = aug(x, torch.Generator().manual_seed(3))
    src = x.float().div(255)
    for i in range(len(x)):
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                shifted = torch.zeros_like(src[i])
                hs, ws = slice(max(dy, 0), 8 + min(dy, 0)), slice(max(dx, 0), 8 + min(dx, 0))
                hd, wd = slice(max(-dy, 0), 8 + min(-dy, 0)), slice(max(-dx, 0), 8 + min(-dx, 0))
                shifted[:, hd, wd] = src[i][:, hs, ws]
                found |= torch.allclose(y[i], shifted, atol=1e-4)
        assert found, f"image {i} is not a whole-pixel shift"


def test_seeded_generator_repeats():
    x = _batch()
    aug = BatchAugment()
    a = aug(x, torch.Generator().manual_seed(1))
    b = aug(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, aug(x, torch.Generator().manual_seed(2)))
