"""The model cache of a worker host: one load per key while active, one entry per kind, inactive = plain load."""

from __future__ import annotations

import dataclasses

from augment.models import cache
from augment.models.cache import ModelCache, cached, use


def _loader(log: list[str], name: str):
    def load() -> object:
        log.append(name)
        return object()

    return load


def test_one_load_per_key_while_active():
    log: list[str] = []
    host = ModelCache()
    with use(host):
        a = cached(("backbone", "m", "cpu"), _loader(log, "m"))
        assert cached(("backbone", "m", "cpu"), _loader(log, "m")) is a
    assert log == ["m"] and host.loads == 1
    with use(host):  # a later stage on the same host
        assert cached(("backbone", "m", "cpu"), _loader(log, "m")) is a
    assert log == ["m"]


def test_another_model_of_the_same_kind_replaces_it():
    """A host never holds two backbones (two pipelines on one GPU); other kinds are kept."""
    log: list[str] = []
    with use(ModelCache()) as host:
        clf = cached(("classifier", "c"), _loader(log, "c"))
        first = cached(("backbone", "m1"), _loader(log, "m1"))
        cached(("backbone", "m2"), _loader(log, "m2"))
        assert cached(("backbone", "m1"), _loader(log, "m1")) is not first  # m1 was dropped for m2
        assert cached(("classifier", "c"), _loader(log, "c")) is clf
    assert log == ["c", "m1", "m2", "m1"] and host.loads == 4


def test_without_an_active_cache_every_call_loads():
    log: list[str] = []
    assert cached(("backbone", "m"), _loader(log, "m")) is not cached(("backbone", "m"), _loader(log, "m"))
    assert log == ["m", "m"]


def test_classifier_key_follows_the_shipped_bytes(micro_classifier_path):
    """Two payloads of the same checkpoint (the tokens and the generate stage each read it) share
    one load; a changed checkpoint under the same spec is another classifier."""
    from augment.models.classifier import read_classifier_source

    spec = f"timm:test_resnet@{micro_classifier_path}"
    with use(ModelCache()) as host:
        a = cache.classifier(read_classifier_source(spec), "cpu")
        assert cache.classifier(read_classifier_source(spec), "cpu") is a
        assert host.loads == 1
        source = read_classifier_source(spec)
        changed = dataclasses.replace(source, files={k: v + b" " for k, v in source.files.items()})
        assert cache._source_key(changed) != cache._source_key(source)
