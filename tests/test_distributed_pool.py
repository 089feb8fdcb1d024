"""One pool for several stages (``augment build``): the same hosts, models loaded once, the same bytes.

Inline (a host in this process) and on a private local Ray (two actors): consecutive runs of a
:class:`Pool` reuse the hosts and their model cache; each stage still gets its own worker and its
own torch thread count; a Ray error around the units is one line naming the cluster (not a disk
problem) while the driver's own errors pass as they are; actors that cannot all be placed give
one warning and the run goes on. On the micro models, tokens + generate + the baseline arm on
one pool write exactly the files that a pool per stage writes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from augment.config import Config, GenerateConfig, TokenConfig
from augment.distributed import Pool, PoolSpec
from augment.errors import AugmentError
from augment.generate.runner import run_generate
from augment.models.cache import ModelCache
from augment.tokens.runner import run_tokens


class _Loading:
    """A worker that loads a "model" through the host's cache (counted in ``folder``) and reports
    where it ran: (stage tag, pid, torch threads, id of the model object)."""

    def __init__(self, folder: str, tag: str, sleep: float = 0.0, cache: ModelCache | None = None) -> None:
        self.tag, self.sleep = tag, sleep
        cache = cache if cache is not None else ModelCache()
        self.model = cache.get(("backbone", "micro"), partial(_load, folder))

    def run(self, unit: int) -> tuple[str, int, int, int]:
        time.sleep(self.sleep)
        return self.tag, os.getpid(), torch.get_num_threads(), id(self.model)


def _load(folder: str) -> list[int]:
    Path(folder, f"load.{os.getpid()}.{time.monotonic_ns()}").touch()
    return [0]


def _collect(pool: Pool, factory, units) -> dict[int, tuple]:
    results: dict[int, tuple] = {}
    pool.run(factory, units, results.__setitem__, lambda u, e: pytest.fail(f"unit {u} failed: {e!r}"))
    return results


def test_inline_stages_share_the_host_and_its_models(tmp_path):
    with Pool(PoolSpec(workers=0)) as pool:
        first = _collect(pool, partial(_Loading, str(tmp_path), "tokens"), range(3))
        second = _collect(pool, partial(_Loading, str(tmp_path), "generate"), range(2))
        assert pool.loads() == [1]
    assert {r[0] for r in first.values()} == {"tokens"} and {r[0] for r in second.values()} == {"generate"}
    assert len({r[3] for r in [*first.values(), *second.values()]}) == 1  # one model object for both stages
    assert len(list(tmp_path.glob("load.*"))) == 1
    with Pool(PoolSpec(workers=0)) as other:  # a new pool (a stage run on its own) loads its own
        _collect(other, partial(_Loading, str(tmp_path), "again"), range(1))
    assert len(list(tmp_path.glob("load.*"))) == 2


def test_ray_stages_share_the_actors_and_load_once(ray_local, tmp_path):
    """Three stages on one pool of two actors: two loads in all (one per actor), the same
    processes throughout, and each stage's thread count (2 cores: 1 each with 2 busy actors,
    2 for a one-unit stage, as a pool per stage gives)."""
    with Pool(PoolSpec(workers=2)) as pool:
        tokens = _collect(pool, partial(_Loading, str(tmp_path), "tokens", 0.3), range(4))
        one = _collect(pool, partial(_Loading, str(tmp_path), "one"), range(1))
        generate = _collect(pool, partial(_Loading, str(tmp_path), "generate", 0.3), range(4))
        assert sorted(pool.loads()) == [1, 1]
    loaded_in = {int(p.name.split(".")[1]) for p in tmp_path.glob("load.*")}
    assert len(loaded_in) == len(list(tmp_path.glob("load.*"))) == 2  # one load in each of two processes
    assert {r[1] for r in [*tokens.values(), *one.values(), *generate.values()]} <= loaded_in
    assert {r[2] for r in tokens.values()} == {r[2] for r in generate.values()} == {1} and one[0][2] == 2


def test_a_ray_error_is_one_line_naming_the_cluster_and_callbacks_pass(ray_local, tmp_path, monkeypatch):
    """Issue 11: Ray's ConnectionError mid-stage read "cannot write into ...; free space"."""
    import ray

    with Pool(PoolSpec(workers=1)) as pool:
        def fail_write(unit, result):
            raise OSError(28, "No space left on device")

        with pytest.raises(OSError, match="No space left"):  # the driver's write: the stage maps it
            pool.run(partial(_Loading, str(tmp_path), "a"), range(2), fail_write, lambda u, e: None)
        gcs = ray.get_runtime_context().gcs_address

        def lost(*args, **kwargs):
            raise ConnectionError("GCS has gone away\nmore")

        monkeypatch.setattr(ray, "wait", lost)
        with pytest.raises(AugmentError) as e:
            pool.run(partial(_Loading, str(tmp_path), "b"), range(2), lambda u, r: None, lambda u, e: None)
    msg = str(e.value)
    assert msg.startswith(f"lost the Ray cluster at {gcs} during the stage (ConnectionError: GCS has gone away);")
    assert "re-run the same command to resume" in msg and "free space" not in msg and "\n" not in msg


def test_actors_partly_placed_warn_once_and_the_run_goes_on(ray_local, tmp_path, caplog):
    """One of two CPUs is taken: one actor starts, the other waits for a node past the timeout;
    one warning line, and every unit runs on the actor that started."""
    import ray

    @ray.remote(num_cpus=1)
    class Blocker:
        def ready(self) -> bool:
            return True

    blocker = Blocker.remote()
    ray.get(blocker.ready.remote())
    try:
        with caplog.at_level(logging.WARNING, logger="augment.distributed"), \
                Pool(PoolSpec(workers=2, placement_timeout=1)) as pool:
            results = _collect(pool, partial(_Loading, str(tmp_path), "t", 0.5), range(6))
    finally:
        ray.kill(blocker)
    assert sorted(results) == list(range(6)) and len({r[1] for r in results.values()}) == 1
    warnings = [r.getMessage() for r in caplog.records if r.name == "augment.distributed"]
    assert len(warnings) == 1
    assert warnings[0].startswith("only 1 of 2 augment workers started within 1 s (the others wait for a Ray "
                                  "node with CPU: 0.99); going on with 1")


# --------------------------------------------------------------------------- the real stages, one pool


def _micro(out: Path, pipe: Path, clf: Path, workers: int) -> Config:
    return Config(dataset="cub", model=str(pipe), classifier=f"timm:test_resnet@{clf}", judge=None, out=str(out),
                  workers=workers, classes="0,1",
                  tokens=TokenConfig(batch_size=2, steps=2, max_steps=1, grad_steps=1, lr=0.05, acc_threshold=1.1),
                  generate=GenerateConfig(prompts=["a photo of a {token} {name}"], per_class=2, steps=2,
                                          guidance_scale=3.0, shard_size=2, batch_size=2, image_format="png"))


def _files(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.suffix in (".safetensors", ".tar")}


def _build(cfg: Config, pool: Pool | None) -> None:
    assert not run_tokens(cfg, show_progress=False, pool=pool).failed
    assert not run_generate(cfg, show_progress=False, pool=pool).failed
    assert not run_generate(cfg, baseline=True, show_progress=False, pool=pool).failed


@pytest.mark.slow  # six stages on the micro models
def test_one_pool_writes_the_same_bytes_as_a_pool_per_stage(tmp_path, micro_pipeline_dir, micro_classifier_path):
    """The generate stages run on the pipeline that trained the tokens (their rows overwritten by
    the files' vectors) and the baseline arm on one that holds them (its prompts never name them):
    every token file and shard is byte-identical to fresh pipelines', and the models load once."""
    cfg = partial(_micro, pipe=micro_pipeline_dir, clf=micro_classifier_path, workers=0)
    _build(cfg(tmp_path / "apart"), None)
    with Pool(PoolSpec(workers=0, threads=1)) as pool:  # the config's threads, as open_pool(cfg) gives
        _build(cfg(tmp_path / "shared"), pool)
        assert pool.loads() == [2]  # the backbone and the classifier, once for three stages
    apart, shared = _files(tmp_path / "apart"), _files(tmp_path / "shared")
    assert {k.split("/")[0] for k in apart} == {"tokens", "shards", "baseline"}
    assert shared == apart
    import pyarrow.parquet as pq

    prompts = pq.read_table(tmp_path / "shared" / "baseline" / "manifests").column("prompt").to_pylist()
    assert prompts and not any("<c" in p for p in prompts)  # the baseline never names a token


@pytest.mark.slow  # six stages on the micro models
def test_one_ray_pool_writes_the_same_bytes_as_inline(ray_local, tmp_path, micro_pipeline_dir,
                                                       micro_classifier_path):
    """Two actors for three stages: the same files as inline with one torch thread (each actor's
    share of the 2 cores), and one backbone + one classifier load per actor."""
    cfg = partial(_micro, pipe=micro_pipeline_dir, clf=micro_classifier_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _build(cfg(tmp_path / "inline", workers=0), None)
    finally:
        torch.set_num_threads(threads)
    with Pool(PoolSpec(workers=2)) as pool:
        _build(cfg(tmp_path / "ray", workers=2), pool)
        assert pool.loads() == [2, 2]
    assert _files(tmp_path / "ray") == _files(tmp_path / "inline")


def test_build_with_cuda_workers_and_no_gpu_is_one_line_before_writing(monkeypatch, tmp_path):
    """``augment build --device cuda --workers 2`` on a machine without a GPU (and no cluster that
    could add one): exit 2 with one "no GPU" line before the shared pool starts anything."""
    import ray
    from click.testing import CliRunner

    from augment.cli import cli
    from augment.distributed import connection

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(connection, "_local_head", lambda: None)
    monkeypatch.setattr(connection, "_local_gpus", lambda: 0.0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("no Ray may start"))
    r = CliRunner().invoke(cli, ["build", "--classes", "0", "--per-class", "1", "--workers", "2", "--device", "cuda",
                                 "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "this machine has no GPU" in lines[0] and "ActorDied" not in r.output
    assert list(tmp_path.iterdir()) == []
