"""A config's dataset, with the guidance classifier's label map as its class names when it has no images.

``--dataset cub`` without ``--data-root`` trains tokens from class names only: the names come from
the classifier. Loading a classifier is a models job and datasets sit above models in the layers
(ARCHITECTURE.md), so the two meet here: :func:`augment.datasets.selection.dataset_of` takes the
names as plain values.
"""

from __future__ import annotations

from augment.config import Config
from augment.datasets.base import Dataset
from augment.datasets.selection import dataset_of, needs_classifier_names
from augment.errors import AugmentError


def load_dataset(cfg: Config) -> Dataset:
    """The config's dataset; names-only from the classifier when there is no data root (an error
    of the classifier, e.g. none configured, replaces the dataset's own)."""
    try:
        return dataset_of(cfg)
    except AugmentError:
        if not needs_classifier_names(cfg):
            raise
        from augment.models.classifier import load_classifier

        return dataset_of(cfg, load_classifier(cfg.classifier).class_names)
