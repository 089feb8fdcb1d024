"""Loaded models kept for the life of a worker host, so that consecutive stages load them once.

``augment build`` runs tokens, generate and the baseline arm on one pool of workers
(:class:`augment.distributed.Pool`). Each stage builds its own worker, but the backbone and the
classifier it needs are the same: the worker's host (a Ray actor, or the driver for inline runs)
owns a :class:`ModelCache` and passes it to every stage's worker factory, which loads through it
(:meth:`ModelCache.backbone`, :meth:`ModelCache.classifier`). A worker built by hand without a
cache (a test, a script) gets a cache of its own, hence fresh models.

One entry per kind (one backbone, one classifier): a stage asking for another model replaces the
previous one, so a host never holds two diffusion pipelines in GPU memory. A stage that adds
tokens to a cached pipeline removes them when it is done
(:func:`augment.tokens.textual_inversion.installed_tokens`), so the next stage gets the pipeline
as a fresh load would be.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

    from augment.models.classifier import Classifier, ClassifierSource

T = TypeVar("T")

__all__ = ["ModelCache"]


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

    def backbone(self, spec: str, device: str, dtype: str, scheduler: str) -> Any:
        """:func:`augment.models.backbone.load_backbone`, loaded once per cache."""
        from augment.models.backbone import load_backbone

        return self.get(("backbone", spec, str(device), dtype, scheduler),
                        lambda: load_backbone(spec, device, dtype, scheduler))

    def classifier(self, source: ClassifierSource | str | None, device: str | torch.device) -> Classifier:
        """:func:`augment.models.classifier.load_classifier` on ``device``, loaded once per cache."""
        from augment.models.classifier import load_classifier

        return self.get(("classifier", *_source_key(source), str(device)), lambda: load_classifier(source, device))


def _source_key(source: ClassifierSource | str | None) -> tuple[Any, ...]:
    """What identifies a classifier: its spec and a digest of the files the driver sent with it."""
    from augment.models.classifier import ClassifierSource

    if not isinstance(source, ClassifierSource):
        return (source,)
    digest = hashlib.sha256()
    for name in sorted(source.files):
        digest.update(name.encode() + b"\0" + hashlib.sha256(source.files[name]).digest())
    return (source.spec, digest.hexdigest(), source.class_names)
