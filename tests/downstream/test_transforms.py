"""Batched augmentation: identity when off, exact shifts, flips, normalisation."""

from __future__ import annotations

import random

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


def _recipes(size: int):
    import timm

    from augment.downstream.train import TrainSettings
    from augment.downstream.transforms import training_recipe

    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    settings = TrainSettings(input_size=size, hflip=0.5)
    return training_recipe(settings, model), training_recipe(settings, model, uint8_samples=True)


def test_small_batches_augmented_after_the_move_are_the_batches_augmented_before():
    """device_batch moves uint8 first, then warps: the same draws, the same pixels as warping first."""
    from augment.downstream.transforms import device_batch

    plain, _ = _recipes(8)
    x = _batch()
    before = plain.batch(x, torch.Generator().manual_seed(3))
    after = device_batch(x, plain, torch.device("cpu"), torch.Generator().manual_seed(3))
    assert after.dtype == torch.float32 and torch.equal(after, before)


def test_uint8_samples_normalised_on_the_device_match_timm_float_samples_within_half_a_level():
    """timm's per-image transform handing back uint8 (CUDA) and normalised after the move gives the
    float path's tensor up to the one rounding to 1/255 (half a level over the std)."""
    from augment.downstream.transforms import device_batch

    size = 72
    plain, as_uint8 = _recipes(size)
    images = torch.randint(0, 256, (3, 3, 90, 80), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    random.seed(5)  # timm draws crops from Python's random, flips and jitter from torch's
    torch.manual_seed(5)
    floats = torch.stack([plain.sample(im) for im in images])
    random.seed(5)
    torch.manual_seed(5)
    bytes_ = torch.stack([as_uint8.sample(im) for im in images])
    assert floats.dtype == torch.float32 and bytes_.dtype == torch.uint8 and bytes_.shape == (3, 3, size, size)
    moved = device_batch(bytes_, as_uint8, torch.device("cpu"))
    assert torch.equal(device_batch(floats, plain, torch.device("cpu")), floats)  # float batches pass as they are
    tolerance = 0.5 / 255 / min(plain.std) + 1e-4
    assert float((moved - floats).abs().max()) <= tolerance
