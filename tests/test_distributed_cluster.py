"""Ray clusters on this machine (slow; CI runs them): augment joins a running head by itself, and a
run survives the loss of a node.

- ``ray start --head`` in a subprocess, then ``augment generate --workers 2`` with no --address:
  it joins that head (its driver logs into the head's session) and completes, where it used to
  die with "num_cpus and num_gpus must not be provided".
- ``ray.cluster_utils.Cluster`` (a head without CPUs + 2 one-CPU worker nodes, one actor each): a
  node removed while its actor is in the middle of a unit. The unit runs again on the other
  actor, every unit reaches the driver once, and the output equals an uninterrupted run's (the
  real tokens and generate stages on the micro models, byte for byte). With every worker node
  gone, the placement timeout ends the run with one error.

Each cluster lives under its own short RAY_TMPDIR, so it never becomes the "local head" that
other Ray users on this machine would join, nor joins theirs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from augment import stage
from augment.config import Config, GenerateConfig, TokenConfig
from augment.distributed import PoolSpec, ignoring_cache, run_units
from augment.generate.runner import run_generate
from augment.tokens.runner import run_tokens
from augment.verify import verify_run

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).parent / "ray")


def _short_tmp(prefix: str) -> str:
    """A temp folder with a short path: Ray's socket paths under it must fit in 107 bytes."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pids_using(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (a cluster's own temp folder)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if marker.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


def test_generate_joins_a_running_local_head(tmp_path):
    tmp = _short_tmp("rh")
    env = dict(os.environ, RAY_TMPDIR=tmp, RAY_AUTH_MODE="disabled", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    head = subprocess.Popen([RAY, "start", "--head", "--port", str(port), "--num-cpus", "2", "--block",
                             "--include-dashboard=false", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        recorded = Path(tmp) / "ray" / "ray_current_cluster"
        deadline = time.monotonic() + 180
        while not recorded.exists() and time.monotonic() < deadline and head.poll() is None:
            time.sleep(0.2)
        assert recorded.exists(), "ray start --head did not come up"
        address = recorded.read_text().strip()
        assert address.endswith(f":{port}")
        out = tmp_path / "run"
        gen = subprocess.Popen([sys.executable, "-m", "augment", "generate", "--baseline", "--classes", "0",
                                "--per-class", "2", "--steps", "2", "--shard-size", "1", "--workers", "2",
                                "--out", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        stdout, stderr = gen.communicate(timeout=540)
        assert gen.returncode == 0, stderr[-3000:]
        assert "2 samples of 1 classes in 2 shards (2 written" in stdout
        assert verify_run(out / "baseline").ok
        # it joined the head instead of starting a Ray of its own: one Ray session under RAY_TMPDIR,
        # the head's, and its driver log is the augment process's
        sessions = list((Path(tmp) / "ray").glob("session_2*"))
        assert len(sessions) == 1
        assert list((sessions[0] / "logs").glob(f"python-core-driver-*_{gen.pid}.log"))
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)
            try:
                head.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
                head.wait()
        for pid in _pids_using(tmp):  # anything of that head's session that outlived it
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head without CPUs (the driver's) and two worker nodes of one CPU each."""
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    tmp = _short_tmp("rc")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_TMPDIR", tmp)
        mp.delenv("RAY_ADDRESS", raising=False)
        c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        try:
            ray.init(address=c.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
            yield c
        finally:
            ray.shutdown()
            c.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)


def _two_workers(cluster: Any) -> None:
    for _ in range(2 - len(cluster.worker_nodes)):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()


def _remove_node_of(cluster: Any, node_id: str) -> None:
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node)


class _Where:
    """Returns ``(unit², node id)``; marks ``<unit>-<attempt>.<node id>`` when it starts and holds
    unit ``hold`` on its first attempt (so that its node can be removed under it)."""

    def __init__(self, folder: str, hold: int) -> None:
        self.folder, self.hold = Path(folder), hold

    def run(self, unit: int) -> tuple[int, str]:
        import ray

        node = ray.get_runtime_context().get_node_id()
        attempt = len(list(self.folder.glob(f"{unit}-*"))) + 1
        (self.folder / f"{unit}-{attempt}.{node}").touch()
        if unit == self.hold and attempt == 1:
            time.sleep(120)
        return unit * unit, node


def test_a_unit_whose_node_is_removed_runs_again_elsewhere(cluster, tmp_path):
    _two_workers(cluster)
    results: dict[int, list[tuple[int, str]]] = {}
    removed: list[str] = []

    def on_result(unit: int, result: tuple[int, str]) -> None:
        results.setdefault(unit, []).append(result)
        held = list(tmp_path.glob("2-1.*"))
        if held and not removed:  # unit 2 is in the middle of its first attempt: take its node away
            removed.append(held[0].suffix[1:])
            _remove_node_of(cluster, removed[0])

    run_units(ignoring_cache(partial(_Where, str(tmp_path), hold=2)), range(6), PoolSpec(workers=2), on_result,
              lambda u, e: pytest.fail(f"unit {u} failed: {e!r}"))
    assert removed, "the held unit never started"
    assert {u: [r[0] for r in rs] for u, rs in results.items()} == {u: [u * u] for u in range(6)}
    assert results[2][0][1] != removed[0]  # finished on the node that is left
    assert len(list(tmp_path.glob("2-*"))) == 2


def test_a_shared_pool_goes_on_after_a_node_loss(cluster, tmp_path):
    """One pool for two stages (``augment build``): a node lost in the first stage, whose actor
    Ray restarts on the node that is left, leaves a pool whose second stage still runs every unit."""
    from augment.distributed import Pool

    _two_workers(cluster)
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    results: dict[str, dict[int, list[int]]] = {"first": {}, "second": {}}

    def on_result(stage: str, unit: int, result: tuple[int, str]) -> None:
        results[stage].setdefault(unit, []).append(result[0])
        held = list(first.glob("2-1.*"))
        if stage == "first" and held and len(cluster.worker_nodes) == 2:
            _remove_node_of(cluster, held[0].suffix[1:])

    def fail(u: int, e: BaseException) -> None:
        pytest.fail(f"unit {u} failed: {e!r}")

    with Pool(PoolSpec(workers=2)) as pool:
        pool.run(ignoring_cache(partial(_Where, str(first), hold=2)), range(6), partial(on_result, "first"), fail)
        assert len(cluster.worker_nodes) == 1
        pool.run(ignoring_cache(partial(_Where, str(second), hold=-1)), range(4), partial(on_result, "second"), fail)
    assert results == {"first": {u: [u * u] for u in range(6)}, "second": {u: [u * u] for u in range(4)}}


def test_losing_every_node_that_fits_is_one_placement_error(cluster, tmp_path):
    """Both worker nodes gone, the CPU-less head left: the restarting actors cannot be placed,
    and after the placement timeout the run stops with the one error naming what is missing."""
    from augment.errors import AugmentError

    _two_workers(cluster)

    def on_result(unit: int, result: tuple[int, str]) -> None:
        for node in list(cluster.worker_nodes):
            cluster.remove_node(node)

    with pytest.raises(AugmentError, match=r"no Ray node offers CPU: 0.99 for the 2 augment workers after \d+ s; "
                                           "add worker nodes"):
        run_units(ignoring_cache(partial(_Where, str(tmp_path), hold=-1)), range(6), PoolSpec(workers=2, placement_timeout=3),
                  on_result, lambda u, e: pytest.fail(f"unit {u} must wait for a node, not fail: {e!r}"))
    assert not cluster.worker_nodes


# --------------------------------------------------------------------------- the real stages


def _micro_config(out: Path, pipe: Path, clf: Path, workers: int) -> Config:
    return Config(dataset="cub", model=str(pipe), classifier=f"timm:test_resnet@{clf}", judge=None, out=str(out),
                  workers=workers,
                  tokens=TokenConfig(batch_size=2, steps=2, max_steps=2, grad_steps=1, lr=0.05, acc_threshold=1.1),
                  generate=GenerateConfig(prompts=["a photo of a {token} {name}"], per_class=4, steps=2,
                                          guidance_scale=3.0, shard_size=2, batch_size=2, image_format="png"))


def _inline_one_thread(fn: Callable[[], Any]) -> Any:
    """Run inline with one torch thread, as each one-CPU actor does: the same reductions, the same bytes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


class _Tracked:
    """The stage's own worker, unchanged, plus marks in ``folder``: ``<unit>.<pid>.<node id>``
    while a unit runs, and ``<unit>-<attempt>.started`` for every start."""

    def __init__(self, factory: Callable[..., Any], folder: str, cache: Any = None) -> None:
        self.worker, self.folder = factory(cache=cache), Path(folder)

    def run(self, unit: Any) -> Any:
        import ray

        key = getattr(unit, "index", unit)
        attempt = len(list(self.folder.glob(f"{key}-*.started"))) + 1
        (self.folder / f"{key}-{attempt}.started").touch()
        running = self.folder / f"{key}.{os.getpid()}.{ray.get_runtime_context().get_node_id()}"
        running.touch()
        try:
            return self.worker.run(unit)
        finally:
            running.unlink(missing_ok=True)


def _lose_a_node_mid_unit(cluster: Any, monkeypatch: pytest.MonkeyPatch, folder: Path) -> Counter:
    """Make the stage's pool lose a worker node when the first unit is written, in the middle of a
    unit (the pool hands the finishing actor its next unit before the driver writes): the actor's
    process is killed and its node removed, as when a machine dies. Returns how often each unit
    reached the driver."""
    seen: Counter = Counter()

    original = stage.Pool.run

    def with_node_loss(pool, factory, units, on_result, on_error):
        def write(unit: Any, result: Any) -> None:
            if not seen:
                deadline = time.monotonic() + 60
                while not (running := list(folder.glob("*.*.*"))) and time.monotonic() < deadline:
                    time.sleep(0.01)
                assert running, "no unit was running when the first one was written"
                _, pid, node = running[0].name.split(".")
                os.kill(int(pid), signal.SIGKILL)
                _remove_node_of(cluster, node)
            seen[getattr(unit, "index", unit)] += 1
            on_result(unit, result)

        return original(pool, partial(_Tracked, factory, str(folder)), units, write, on_error)

    monkeypatch.setattr(stage.Pool, "run", with_node_loss)
    return seen


def _files(folder: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def test_tokens_and_generate_survive_a_node_loss(cluster, tmp_path, micro_pipeline_dir, micro_classifier_path,
                                                 monkeypatch):
    cfg = partial(_micro_config, pipe=micro_pipeline_dir, clf=micro_classifier_path)
    ref = tmp_path / "ref"
    assert _inline_one_thread(lambda: run_tokens(cfg(ref, workers=0), show_progress=False)).trained == 3
    _inline_one_thread(lambda: run_generate(cfg(ref, workers=0), show_progress=False))

    _two_workers(cluster)
    marks = tmp_path / "marks-tokens"
    marks.mkdir()
    seen = _lose_a_node_mid_unit(cluster, monkeypatch, marks)
    lost = tmp_path / "lost"
    tokens = run_tokens(cfg(lost, workers=2), show_progress=False)
    assert tokens.trained == 3 and not tokens.failed
    assert dict(seen) == {0: 1, 1: 1, 2: 1} and len(cluster.worker_nodes) == 1
    assert len(list(marks.glob("*-2.started"))) == 1  # the interrupted class was trained again
    assert _files(lost / "tokens", "*.safetensors") == _files(ref / "tokens", "*.safetensors")

    _two_workers(cluster)
    marks = tmp_path / "marks-generate"
    marks.mkdir()
    seen = _lose_a_node_mid_unit(cluster, monkeypatch, marks)
    gen = run_generate(cfg(lost, workers=2), show_progress=False)
    assert gen.written == 6 and not gen.failed
    assert dict(seen) == {i: 1 for i in range(6)} and len(cluster.worker_nodes) == 1
    assert len(list(marks.glob("*-2.started"))) == 1  # the interrupted shard was generated again
    reference = _files(ref / "shards", "*.tar")
    assert len(reference) == 6 and _files(lost / "shards", "*.tar") == reference
    assert verify_run(lost).ok
