"""A user's own folder: images of every size and mode load, and come out at the size asked for."""

from __future__ import annotations

import torch

from augment.datasets import get_dataset
from augment.downstream.mixing import load_real, load_split, make_mixed_dataset
from tests.fixtures.datasets import MIXED_IMAGES


def test_every_mode_loads_as_rgb(mixed_folder):
    ds = get_dataset("folder", data_root=mixed_folder)
    assert ds.class_names == ["apple", "pear"]
    samples = ds.samples("train")
    assert len(samples) == sum(len(v) for v in MIXED_IMAGES.values())
    for s in samples:
        img = ds.load_image(s)
        assert img.mode == "RGB"
    assert not ds.skipped


def test_load_real_fits_any_size(mixed_folder):
    ds = get_dataset("folder", data_root=mixed_folder)
    images, labels = load_split(ds, "train", 24)
    assert images.shape == (8, 3, 24, 24) and images.dtype == torch.uint8
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    # without a size: the smallest image's shorter side (17 px), nothing enlarged, no error
    images, _ = load_real(ds, ds.samples("train"))
    assert images.shape[-2:] == (17, 17)
    images, _ = load_real(ds, ds.samples("train"), (20, 30))
    assert images.shape[-2:] == (20, 30)


def test_mixed_dataset_from_mixed_sizes(mixed_folder):
    ds = get_dataset("folder", data_root=mixed_folder)
    mixed = make_mixed_dataset(ds, k=2, seed=0, input_size=16)
    assert mixed.images.shape == (4, 3, 16, 16)
