"""The one interface every dataset implements.

Stages only need class names (token training works without images) and, when a data root is
given, real images per split plus a seeded k-shot sampler (few-shot mixing, CASO, FID).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Sample:
    """One real image: where it lives (a path, or an index into an in-memory array) and its label."""

    ref: str | int
    label: int


class Dataset(ABC):
    """Class names plus optional real images per split."""

    name: str = ""

    @property
    @abstractmethod
    def class_names(self) -> list[str]:
        """Human-readable class names, index = class index (used in prompts)."""

    def splits(self) -> list[str]:
        """Names of the splits with real images (empty when only class names are known)."""
        return []

    def samples(self, split: str) -> list[Sample]:
        """All samples of a split, in a fixed order."""
        from augment.errors import AugmentError

        raise AugmentError(
            f"dataset {self.name!r} has no real split {split!r} (available: {self.splits() or 'none'}); "
            "pass --data-root pointing at the dataset folder"
        )

    @abstractmethod
    def load_image(self, sample: Sample) -> Image.Image:
        """Open one sample as an RGB PIL image."""

    def split_sizes(self) -> dict[str, int]:
        return {s: len(self.samples(s)) for s in self.splits()}

    def kshot(self, k: int, seed: int, split: str = "train") -> list[Sample]:
        """k samples per class, chosen with a seeded RNG; the same (k, seed) always gives the same set,
        and a larger k with the same seed is a superset of a smaller one."""
        from augment.errors import AugmentError

        by_class: dict[int, list[Sample]] = {}
        for s in self.samples(split):
            by_class.setdefault(s.label, []).append(s)
        if k <= 0:
            return []
        smallest = min((len(v) for v in by_class.values()), default=0)
        missing = [self.class_names[c] for c in range(len(self.class_names)) if c not in by_class]
        if missing or k > smallest:
            raise AugmentError(
                f"k={k} is larger than the smallest class of {self.name}/{split} has "
                f"({0 if missing else smallest} images{', e.g. ' + repr(missing[0]) if missing else ''}); "
                f"use k <= {0 if missing else smallest}"
            )
        out: list[Sample] = []
        for c in sorted(by_class):
            items = list(by_class[c])
            random.Random(f"{seed}-{c}").shuffle(items)
            out.extend(items[:k])
        return out
