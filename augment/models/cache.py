"""Loaded models kept for the life of a worker host, so that consecutive stages load them once.

``augment build`` runs tokens, generate and the baseline arm on one pool of workers
(:class:`augment.distributed.Pool`). Each stage builds its own worker, but the backbone and the
classifier it needs are the same: a :class:`ModelCache` owned by the worker's host (a Ray actor, or
the driver for inline runs) hands the same loaded objects to every stage's worker. The cache is
*active* only while the host builds or runs a worker (:func:`use`); anywhere else
:func:`backbone` and :func:`classifier` simply load, so a test or a script that builds a worker by
hand gets fresh models as before.

One entry per kind (one backbone, one classifier): a stage asking for another model replaces the
previous one, so a host never holds two diffusion pipelines in GPU memory. Stages that share a
cached pipeline must leave it as a fresh one would behave for the next stage: the token stage
leaves its learned rows in the embedding table (the generate stage overwrites them with the token
files' vectors, :func:`augment.tokens.textual_inversion.add_embeddings`), and the baseline arm's
prompts never contain a token string, so the extra rows are never looked up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

    from augment.models.classifier import Classifier, ClassifierSource

T = TypeVar("T")

__all__ = ["ModelCache", "backbone", "cached", "classifier", "use"]


class ModelCache:
    """Loaded objects by key, at most one per kind (the key's first element)."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[tuple[Any, ...], Any]] = {}
        self.loads = 0  #: how many times a loader ran (what a host reports in tests and measurements)

    def get(self, key: tuple[Any, ...], load: Callable[[], T]) -> T:
        """The object cached under ``key``, else ``load()`` (replacing the kind's previous entry)."""
        kind = key[0]
        held = self._items.get(kind)
        if held is not None and held[0] == key:
            return held[1]
        self._items.pop(kind, None)  # free the old one before loading the new one
        value = load()
        self.loads += 1
        self._items[kind] = (key, value)
        return value


_active: ModelCache | None = None


@contextmanager
def use(cache: ModelCache) -> Iterator[ModelCache]:
    """Make ``cache`` the one :func:`cached` uses while the block runs (a host building or running a worker)."""
    global _active
    previous, _active = _active, cache
    try:
        yield cache
    finally:
        _active = previous


def cached(key: tuple[Any, ...], load: Callable[[], T]) -> T:
    """``load()`` through the active cache, or simply ``load()`` when none is active."""
    return _active.get(key, load) if _active is not None else load()


def backbone(spec: str, device: str, dtype: str, scheduler: str) -> Any:
    """:func:`augment.models.backbone.load_backbone`, loaded once per host."""
    from augment.models.backbone import load_backbone

    return cached(("backbone", spec, str(device), dtype, scheduler),
                  lambda: load_backbone(spec, device, dtype, scheduler))


def _source_key(source: ClassifierSource | str | None) -> tuple[Any, ...]:
    """What identifies a classifier: its spec and a digest of the files the driver sent with it."""
    from augment.models.classifier import ClassifierSource

    if not isinstance(source, ClassifierSource):
        return (source,)
    digest = hashlib.sha256()
    for name in sorted(source.files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(source.files[name]).digest())
    return (source.spec, digest.hexdigest())


def classifier(source: ClassifierSource | str | None, device: str | torch.device) -> Classifier:
    """:func:`augment.models.classifier.load_classifier` on ``device``, loaded once per host."""
    from augment.models.classifier import load_classifier

    return cached(("classifier", *_source_key(source), str(device)), lambda: load_classifier(source, device))
