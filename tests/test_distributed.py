"""The same work units inline and on Ray actors: same results; failures reported, others carry on.

Also the pure planning (actors by request, GPU or CPU), the checks that need no Ray session (an
unreachable --address, CUDA workers on a private Ray without a GPU), and on a private local Ray:
a GPU request nothing can place times out with one error, a worker that cannot be built is
reported by its own name, and actors killed mid-unit (restarted, or dead for good and replaced)
cost no unit.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch

from augment.config import Config, GenerateConfig, TokenConfig
from augment.distributed import (
    PoolSpec,
    check_pool,
    connect,
    connection,
    fits_a_node,
    ignoring_cache,
    placement_error,
    plan_actors,
    run_units,
    unplaceable,
    wants_gpu,
)
from augment.errors import AugmentError
from augment.tokens.runner import run_tokens


class _Squarer:
    def run(self, unit: int) -> int:
        if unit == 3:
            raise ValueError("unit three is broken")
        return unit * unit


def _collect(spec: PoolSpec):
    results, errors = {}, {}
    run_units(ignoring_cache(_Squarer), range(6), spec, lambda u, r: results.__setitem__(u, r),
              lambda u, e: errors.__setitem__(u, str(e)))
    return results, errors


class _Threads:
    def run(self, unit: int) -> int:
        return torch.get_num_threads()


def test_inline_units_run_with_the_pool_threads_and_restore_the_callers():
    before = torch.get_num_threads()
    seen: list[int] = []
    want = 2 if before == 1 else 1  # a count the caller does not have
    run_units(ignoring_cache(_Threads), range(2), PoolSpec(workers=0, threads=want), lambda u, r: seen.append(r),
              lambda u, e: pytest.fail(str(e)))
    assert seen == [want, want]
    assert torch.get_num_threads() == before


def test_inline_reports_failure_and_carries_on():
    results, errors = _collect(PoolSpec(workers=0))
    assert results == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert list(errors) == [3] and "broken" in errors[3]


# --------------------------------------------------------------------------- planning, no Ray


def test_plan_is_the_request_not_what_is_up():
    # an autoscaling cluster whose CPU head alone is up: --device cuda still asks for GPUs, so the
    # autoscaler starts GPU nodes (issue 11: it used to plan one CPU actor)
    n, opts, _ = plan_actors({"CPU": 8}, workers=2, n_units=200, device="cuda", cpus=2)
    assert (n, opts) == (2, {"num_gpus": 1, "num_cpus": 1})
    n, opts, _ = plan_actors({"CPU": 8}, workers=4, n_units=200, device="cuda:0", cpus=2, gpus_per_worker=0.5)
    assert (n, opts["num_gpus"]) == (4, 0.5)
    # --workers is the number of actors, whatever number of GPUs happens to be up
    n, opts, threads = plan_actors({"CPU": 32, "GPU": 4}, workers=2, n_units=200, device="auto", cpus=2)
    assert (n, opts["num_gpus"], threads) == (2, 1, 16)
    n, _, _ = plan_actors({"CPU": 32, "GPU": 4}, workers=8, n_units=3, device="auto", cpus=2)
    assert n == 3  # never more actors than work units


def test_plan_cpu_workers_split_cores_and_never_ask_for_gpus():
    n, opts, threads = plan_actors({"CPU": 2}, workers=2, n_units=10, device="auto", cpus=2)
    assert n == 2 and "num_gpus" not in opts and threads == 1 and opts["num_cpus"] <= 1
    n, opts, _ = plan_actors({"CPU": 16, "GPU": 2}, workers=4, n_units=10, device="cpu", cpus=16)
    assert n == 4 and "num_gpus" not in opts


def test_auto_asks_for_gpus_when_the_cluster_has_or_can_add_them():
    assert not wants_gpu("auto", {"CPU": 8})
    assert wants_gpu("auto", {"CPU": 8, "GPU": 1})
    assert wants_gpu("auto", {"CPU": 8}, max_resources={"CPU": 64, "GPU": 8})  # autoscaler GPU node type
    assert not wants_gpu("auto", {"CPU": 8}, max_resources={"CPU": 64})
    assert not wants_gpu("cpu", {"CPU": 8, "GPU": 4})
    assert wants_gpu("cuda:1", {"CPU": 8})


def test_unplaceable_only_when_nothing_can_ever_offer_it():
    gpu = {"num_gpus": 1, "num_cpus": 1}
    assert unplaceable(gpu, {"CPU": 2}, None, private=True) == "GPU"  # this machine and nothing else
    assert unplaceable(gpu, {"CPU": 2}, None, private=False) is None  # a cluster may still add nodes
    assert unplaceable(gpu, {"CPU": 2}, {"CPU": 16}, private=False) == "GPU"  # its node types have none
    assert unplaceable(gpu, {"CPU": 2}, {"CPU": 16, "GPU": 4}, private=False) is None
    assert unplaceable({"num_gpus": 0.5, "num_cpus": 1}, {"CPU": 2, "GPU": 1}, None, private=True) is None


def test_the_stall_clock_runs_only_while_no_node_could_hold_an_actor():
    gpu = {"num_gpus": 1, "num_cpus": 1}
    assert not fits_a_node(gpu, [{"CPU": 8}])  # the CPU head of an autoscaling cluster
    assert fits_a_node(gpu, [{"CPU": 8}, {"CPU": 4, "GPU": 1}])  # busy or starting: wait, no error
    assert not fits_a_node({"num_gpus": 2, "num_cpus": 1}, [{"CPU": 4, "GPU": 1}] * 2)  # per node, not summed
    assert not fits_a_node({"num_cpus": 0.99}, [{"memory": 1e9}])  # a node loss left the CPU-less head
    assert fits_a_node({"num_cpus": 0.99}, [{}, {"CPU": 1}])
    assert not fits_a_node(gpu, [])


def test_placement_error_names_the_resource_and_the_fix():
    e = placement_error({"num_gpus": 1, "num_cpus": 1}, 2, waited=300.0)
    assert str(e).startswith("no Ray node offers GPU: 1, CPU: 1 for the 2 augment workers after 300 s;")
    assert "--device cpu" in str(e) and "gpu_worker" in str(e) and "\n" not in str(e)
    e = placement_error({"num_gpus": 1, "num_cpus": 1}, 2, private=True)
    assert "this machine has no GPU and no Ray cluster is connected" in str(e) and "--address" in str(e)
    e = placement_error({"num_cpus": 0.99}, 1, waited=5)
    assert "CPU: 0.99 for the 1 augment worker after 5 s" in str(e) and "lower --workers" in str(e)


def test_gpus_per_worker_and_placement_timeout_are_settings():
    from click.testing import CliRunner

    from augment.cli import cli
    from augment.config import resolve_config

    r = CliRunner().invoke(cli, ["config", "--gpus-per-worker", "0.5", "--placement-timeout", "60"])
    assert r.exit_code == 0 and "gpus_per_worker: 0.5" in r.output and "placement_timeout: 60.0" in r.output
    assert resolve_config(overrides={"gpus_per_worker": 2}).gpus_per_worker == 2
    for bad in (0, -1, 1.5, "one"):  # a string is refused by its type, as the config resolves
        with pytest.raises(AugmentError, match="gpus_per_worker (must be a fraction of one GPU|= 'one' .* must be a number)"):
            resolve_config(overrides={"gpus_per_worker": bad})
    with pytest.raises(AugmentError, match="placement_timeout must be a positive number of seconds"):
        resolve_config(overrides={"placement_timeout": 0})
    r = CliRunner().invoke(cli, ["config", "--gpus-per-worker", "1.5"])
    assert r.exit_code == 2 and "gpus_per_worker" in r.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_address_is_one_line_before_any_ray(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    port = _closed_port()
    with pytest.raises(AugmentError, match=rf"cannot reach a Ray cluster at 127.0.0.1:{port} \(from --address\)") as e:
        check_pool(PoolSpec(workers=2, address=f"127.0.0.1:{port}"))
    assert f"ray start --head --port {port}" in str(e.value)
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    with pytest.raises(AugmentError, match=r"\(from RAY_ADDRESS\)"):
        check_pool(PoolSpec(workers=2))
    check_pool(PoolSpec(workers=0, address=f"127.0.0.1:{port}"))  # inline: no Ray, nothing to check
    # connect() itself refuses it too, instead of ray.init retrying for minutes
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("ray.init must not be called"))
    with pytest.raises(AugmentError, match="cannot reach a Ray cluster"):
        connect(f"127.0.0.1:{port}")
    # something answers but ray.init cannot join it (no GCS there, another Ray version): one line too

    def refuse(**kw):
        raise RuntimeError("Version mismatch: The cluster was started with Ray 2.9\nmore detail")

    monkeypatch.setattr(connection, "_probe", lambda address: None)
    monkeypatch.setattr(ray, "init", refuse)
    with pytest.raises(AugmentError, match=r"cannot join a Ray cluster at 10.0.0.9:6379 \(from --address\): "
                                           r"Version mismatch: .*Ray 2.9; start one") as e:
        connect("10.0.0.9:6379")
    assert "more detail" not in str(e.value)


def test_cuda_workers_on_a_private_ray_without_gpu_fail_before_anything(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(connection, "_local_head", lambda: None)
    monkeypatch.setattr(connection, "_local_gpus", lambda: 0.0)
    with pytest.raises(AugmentError, match="no Ray node offers GPU: 1, CPU: 1 for the 2 augment workers "
                                           r"\(this machine has no GPU"):
        check_pool(PoolSpec(workers=2, device="cuda"))
    check_pool(PoolSpec(workers=2, device="auto"))  # auto takes CPUs here
    monkeypatch.setattr(connection, "_local_gpus", lambda: 1.0)
    check_pool(PoolSpec(workers=2, device="cuda", gpus_per_worker=0.5))


def test_cli_refuses_a_bad_pool_in_one_line_before_writing(monkeypatch, tmp_path):
    """Issue 13: ``--device cuda --workers 2`` on a CPU machine said ActorDiedError per shard."""
    import ray
    from click.testing import CliRunner

    from augment.cli import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(connection, "_local_head", lambda: None)
    monkeypatch.setattr(connection, "_local_gpus", lambda: 0.0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    args = ["generate", "--baseline", "--classes", "0", "--per-class", "2", "--workers", "2"]
    r = CliRunner().invoke(cli, [*args, "--device", "cuda", "--out", str(tmp_path / "a")])
    assert r.exit_code == 2 and "no Ray node offers GPU: 1" in r.output and "ActorDied" not in r.output
    r = CliRunner().invoke(cli, [*args, "--address", f"127.0.0.1:{_closed_port()}", "--out", str(tmp_path / "b")])
    assert r.exit_code == 2 and "cannot reach a Ray cluster at 127.0.0.1:" in r.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_benchmark_cuda_workers_reach_placement_as_generate_does(monkeypatch, tmp_path):
    """Issue 19: ``benchmark --device cuda --workers 2`` from a GPU-less driver said "no GPU is
    visible" (the device was resolved on the driver); the cells' workers resolve it, so it reaches
    Ray's placement and fails with generate's one line on a GPU-less cluster."""
    import ray
    from click.testing import CliRunner

    from augment.cli import cli

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(connection, "_local_head", lambda: None)
    monkeypatch.setattr(connection, "_local_gpus", lambda: 0.0)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: pytest.fail("no Ray may start"))
    gen = CliRunner().invoke(cli, ["generate", "--baseline", "--classes", "0", "--per-class", "2", "--workers", "2",
                                   "--device", "cuda", "--out", str(tmp_path / "g")])
    run = tmp_path / "run"
    run.mkdir()
    r = CliRunner().invoke(cli, ["benchmark", "--out", str(run), "--arm", "real", "--no-build", "--k", "1",
                                 "--seeds", "1", "--workers", "2", "--device", "cuda"])
    assert gen.exit_code == 2 and r.exit_code == 2, r.output
    error = [line for line in r.output.splitlines() if line.startswith("Error:")]
    assert error == [line for line in gen.output.splitlines() if line.startswith("Error:")]
    assert error[0].startswith("Error: no Ray node offers GPU: 1") and "no GPU is visible" not in r.output
    assert not (run / "report").exists()  # no cell trained, nothing reported


def test_a_stale_recorded_head_is_not_joined(monkeypatch):
    from ray._private import services

    monkeypatch.setattr(services, "find_bootstrap_address", lambda temp_dir: "127.0.0.1:1")
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset())
    assert connection._local_head() is None
    monkeypatch.setattr(services, "find_gcs_addresses", lambda: frozenset({"127.0.0.1:1"}))
    assert connection._local_head() == "127.0.0.1:1"


# --------------------------------------------------------------------------- on a private local Ray


def test_ray_pool_matches_inline(ray_local):
    assert _collect(PoolSpec(workers=2)) == _collect(PoolSpec(workers=0))


def test_ray_and_inline_tokens_are_the_same(ray_local, tmp_path, micro_pipeline_dir, micro_classifier_path):
    def cfg(out, workers):
        return Config(dataset="cub", model=str(micro_pipeline_dir), classifier=f"timm:test_resnet@{micro_classifier_path}",
                      judge=None, out=str(out), workers=workers,
                      tokens=TokenConfig(batch_size=2, steps=2, max_steps=2, grad_steps=1, lr=0.05, acc_threshold=1.1),
                      generate=GenerateConfig())

    from augment.tokens.textual_inversion import read_token

    # The config's `threads` (1 by default) holds inline and on each actor, so that the reductions
    # are the same: the results are identical, not merely close (AdamW's first steps are +-lr per
    # element, so thread-order rounding on a near-zero gradient would flip whole steps; issue 13).
    inline = run_tokens(cfg(tmp_path / "inline", 0), show_progress=False)
    on_ray = run_tokens(cfg(tmp_path / "ray", 2), show_progress=False)
    assert inline.trained == on_ray.trained == 3
    for a, b in zip(sorted((tmp_path / "inline" / "tokens").glob("*.safetensors")),
                    sorted((tmp_path / "ray" / "tokens").glob("*.safetensors")), strict=True):
        assert a.name == b.name
        assert read_token(a)[0] == read_token(b)[0]
        assert a.read_bytes() == b.read_bytes()


def test_a_gpu_nothing_offers_times_out_with_one_error(ray_local):
    """A CPU-only Ray (joined, so it might grow) and CUDA workers: they stay pending, and after the
    placement timeout the user reads what is missing, not ActorDiedError per unit (issue 13)."""
    errors: list = []
    with pytest.raises(AugmentError, match=r"no Ray node offers GPU: 1, CPU: 1 for the 2 augment workers after \d+ s;"):
        run_units(ignoring_cache(_Squarer), range(4), PoolSpec(workers=2, device="cuda", placement_timeout=2),
                  lambda u, r: pytest.fail("nothing can run"), lambda u, e: errors.append(e))
    assert errors == []


class _Unbuildable:
    def __init__(self, error: Exception) -> None:
        raise error


def test_a_worker_that_cannot_be_built_is_reported_by_its_own_name(ray_local):
    with pytest.raises(AugmentError, match="no such model"):
        run_units(ignoring_cache(partial(_Unbuildable, AugmentError("no such model; check --model"))), range(3), PoolSpec(workers=2),
                  lambda u, r: None, lambda u, e: None)
    errors: dict = {}
    run_units(ignoring_cache(partial(_Unbuildable, ValueError("weights are corrupt"))), range(3), PoolSpec(workers=2),
              lambda u, r: pytest.fail("no worker was built"), lambda u, e: errors.__setitem__(u, e))
    assert sorted(errors) == [0, 1, 2]
    assert all(isinstance(e, ValueError) and "weights are corrupt" in str(e) for e in errors.values())


class _Marked:
    """Writes ``<unit>-<n>.<pid>`` when it starts a unit (n: the attempt) so that a test can see
    and kill the process; ``hold`` units wait on their first attempt (to be killed mid-unit); the
    first ``crashes`` attempts (over all units), and every attempt of a ``crash_units`` unit, end
    their process as a segfault would."""

    def __init__(self, folder: str, hold: tuple[int, ...] = (), crashes: int = 0,
                 crash_units: tuple[int, ...] = (), load_s: float = 0.0) -> None:
        self.folder, self.hold, self.crashes, self.crash_units = Path(folder), hold, crashes, crash_units
        time.sleep(load_s)  # as loading a model: a restarted actor is unavailable meanwhile

    def run(self, unit: int) -> int:
        attempt = len([p for p in self.folder.glob(f"{unit}-*") if p.suffix != ".crash"]) + 1
        (self.folder / f"{unit}-{attempt}.{os.getpid()}").touch()
        if unit in self.crash_units or len(list(self.folder.glob("*.crash"))) < self.crashes:
            (self.folder / f"{unit}-{attempt}.crash").touch()
            os._exit(1)
        if unit in self.hold and attempt == 1:
            time.sleep(60)
        return unit * unit


def _kill_when_started(folder: Path, unit: int) -> threading.Thread:
    def kill() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            started = list(folder.glob(f"{unit}-1.*"))
            if started:
                os.kill(int(started[0].suffix[1:]), signal.SIGKILL)
                return
            time.sleep(0.05)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def test_an_actor_killed_mid_unit_costs_no_unit(ray_local, tmp_path):
    """kill -9 of a UnitActor: Ray restarts it (ActorUnavailableError while it does) and the unit
    runs again; nothing fails (issue 13: 'ActorUnavailableError, restarting' used to fail units)."""
    results: dict = {}
    killer = _kill_when_started(tmp_path, 2)
    # one actor: nothing else could take the unit while Ray restarts it
    run_units(ignoring_cache(partial(_Marked, str(tmp_path), hold=(2,), load_s=3)), range(6), PoolSpec(workers=1),
              lambda u, r: results.__setitem__(u, results.get(u, []) + [r]),
              lambda u, e: pytest.fail(f"unit {u} failed: {e!r}"))
    killer.join()
    assert results == {u: [u * u] for u in range(6)}  # each unit reached the driver exactly once
    assert len(list(tmp_path.glob("2-*"))) == 2  # the killed unit ran again


def test_an_actor_dead_for_good_is_replaced(ray_local, tmp_path):
    """Three crashes of the only actor exhaust its restarts (max_restarts=2): a new actor takes over."""
    results: dict = {}
    run_units(ignoring_cache(partial(_Marked, str(tmp_path), crashes=3)), range(3), PoolSpec(workers=1, retries=5),
              lambda u, r: results.__setitem__(u, r), lambda u, e: pytest.fail(f"unit {u} failed: {e!r}"))
    assert results == {0: 0, 1: 1, 2: 4}  # without a replacement the units would fail: no actor left
    assert len(list(tmp_path.glob("*.crash"))) == 3
    assert len(list(tmp_path.glob("0-*.crash"))) == 3  # unit 0 lost its actor three times, then ran


def test_a_unit_that_keeps_killing_its_actor_fails_alone(ray_local, tmp_path):
    """A unit that ends its process every time is reported after ``retries`` more attempts; the
    other units still run (their actors restarted or replaced)."""
    from ray.exceptions import RayActorError

    results, errors = {}, {}
    run_units(ignoring_cache(partial(_Marked, str(tmp_path), crash_units=(1,))), range(5), PoolSpec(workers=2, retries=2),
              lambda u, r: results.__setitem__(u, r), lambda u, e: errors.__setitem__(u, e))
    assert results == {u: u * u for u in (0, 2, 3, 4)}
    assert list(errors) == [1] and isinstance(errors[1], RayActorError)
    assert len(list(tmp_path.glob("1-*.crash"))) == 3
