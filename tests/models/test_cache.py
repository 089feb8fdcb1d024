"""The model cache of a worker host: one load per key, one entry per kind; passed to the worker
factories by their host, and a factory called without one loads afresh."""

from __future__ import annotations

import dataclasses

from augment.distributed import WorkerHost
from augment.models import cache
from augment.models.cache import ModelCache


def _loader(log: list[str], name: str):
    def load() -> object:
        log.append(name)
        return object()

    return load


def test_one_load_per_key():
    log: list[str] = []
    host = ModelCache()
    a = host.get(("backbone", "m", "cpu"), _loader(log, "m"))
    assert host.get(("backbone", "m", "cpu"), _loader(log, "m")) is a
    assert log == ["m"] and host.loads == 1


def test_another_model_of_the_same_kind_replaces_it():
    """A host never holds two backbones (two pipelines on one GPU); other kinds are kept."""
    log: list[str] = []
    host = ModelCache()
    clf = host.get(("classifier", "c"), _loader(log, "c"))
    first = host.get(("backbone", "m1"), _loader(log, "m1"))
    host.get(("backbone", "m2"), _loader(log, "m2"))
    assert host.get(("backbone", "m1"), _loader(log, "m1")) is not first  # m1 was dropped for m2
    assert host.get(("classifier", "c"), _loader(log, "c")) is clf
    assert log == ["c", "m1", "m2", "m1"] and host.loads == 4


class _Loads:
    """A worker whose model comes through the cache it is given, else a fresh one."""

    def __init__(self, log: list[str], cache: ModelCache | None = None) -> None:
        self.model = (cache if cache is not None else ModelCache()).get(("backbone", "m"), _loader(log, "m"))

    def run(self, unit: int) -> object:
        return self.model


def test_the_host_passes_its_cache_to_every_stage_and_a_factory_without_one_loads_afresh():
    log: list[str] = []
    host = WorkerHost()
    first = host.run(1, lambda *, cache: _Loads(log, cache), 0)
    assert host.run(2, lambda *, cache: _Loads(log, cache), 0) is first  # the next stage: the same model
    assert log == ["m"] and host.cache.loads == 1
    assert _Loads(log).model is not first and _Loads(log).model is not first  # by hand: fresh each time
    assert log == ["m", "m", "m"]


def test_classifier_key_follows_the_shipped_bytes(micro_classifier_path):
    """Two payloads of the same checkpoint (the tokens and the generate stage each read it) share
    one load; a changed checkpoint under the same spec is another classifier."""
    from augment.models.classifier import read_classifier_source

    spec = f"timm:test_resnet@{micro_classifier_path}"
    host = ModelCache()
    a = host.classifier(read_classifier_source(spec), "cpu")
    assert host.classifier(read_classifier_source(spec), "cpu") is a
    assert host.loads == 1
    source = read_classifier_source(spec)
    changed = dataclasses.replace(source, files={k: v + b" " for k, v in source.files.items()})
    assert cache._source_key(changed) != cache._source_key(source)
