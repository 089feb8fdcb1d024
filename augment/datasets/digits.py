"""scikit-learn's 8x8 digits, the embedded dataset: no files, no download.

The split is fixed (stratified 75/25, seed 0: 1347 train / 450 test) because the embedded models
are trained on the train part only and evaluated on the test part; changing it would leak.
Images are served as 32x32 RGB (bilinear upsampling, grey copied to three channels), the
resolution the embedded diffusion model works at.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

from augment.datasets.base import Dataset, Sample
from augment.errors import AugmentError

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
IMAGE_SIZE = 32


@lru_cache(maxsize=1)
def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train': (images uint8 [N,8,8], labels), 'test': ...}; images scaled 0..16 -> 0..255."""
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise AugmentError("the embedded digits dataset needs scikit-learn, the demo's extra; "
                           "install it with: pip install 'augment-synth[demo]'") from None

    d = load_digits()
    images = np.clip(d.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    xtr, xte, ytr, yte = train_test_split(
        images, d.target, test_size=0.25, random_state=0, stratify=d.target
    )
    return {"train": (xtr, ytr.astype(np.int64)), "test": (xte, yte.astype(np.int64))}


def to_rgb32(img8: np.ndarray) -> Image.Image:
    """8x8 uint8 grey -> 32x32 RGB, bilinear."""
    return Image.fromarray(img8, mode="L").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR).convert("RGB")


class DigitsDataset(Dataset):
    name = "digits"

    def __init__(self, data_root: str | None = None) -> None:
        # data_root is accepted for a uniform interface; digits ship with scikit-learn.
        self._split = digits_split()

    @property
    def class_names(self) -> list[str]:
        return list(DIGIT_NAMES)

    def splits(self) -> list[str]:
        return ["train", "test"]

    def samples(self, split: str) -> list[Sample]:
        if split not in self._split:
            return super().samples(split)
        _, y = self._split[split]
        return [Sample(f"{split}:{i}", int(lbl)) for i, lbl in enumerate(y)]

    def load_image(self, sample: Sample) -> Image.Image:
        split, i = str(sample.ref).split(":")
        return to_rgb32(self._split[split][0][int(i)])
