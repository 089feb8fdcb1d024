"""Device truth (issue 19): what the units computed on is printed once per command, recorded in
run.json (what the workers resolved, not the "auto" typed) and in each manifest's metadata, and a
changed device never blocks a resume."""

from __future__ import annotations

import json
import os
from functools import partial

import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

from augment.cli import cli
from augment.io.rundir import RunDir, read_run_json
from augment.models.device import CUBLAS_WORKSPACE_CONFIG, DEVICE_METADATA_KEY, DeviceInfo, describe_device

GENERATE = ["generate", "--baseline", "--classes", "0,1", "--per-class", "2", "--shard-size", "2", "--steps", "2",
            "--workers", "0"]


def _device_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("device: ")]


def test_generate_prints_records_and_stamps_the_device(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*GENERATE, "--out", str(out)])
    assert r.exit_code == 0, r.output
    here = describe_device(torch.device("cpu"), torch.float32)  # auto on this GPU-less machine
    lines = _device_lines(r.stderr)
    assert lines == [f"device: {here.line()}"]  # once, though two shards ran
    assert _device_lines(r.stdout) == []  # stdout stays the summary

    record = read_run_json(RunDir(out).arm_dir("baseline").path)
    assert record is not None and record.config["device"] == "auto"  # the setting as typed ...
    assert "deterministic" not in record.config  # a run that does not use it keeps run.json's bytes
    assert record.devices == [here.to_json()]  # ... and what computed
    assert record.stage_settings("generate")["devices"] == [here.to_json()]

    manifests = sorted(RunDir(out).arm_dir("baseline").manifests.glob("*.parquet"))
    assert len(manifests) == 2
    for m in manifests:
        schema = pq.read_schema(m)
        assert DeviceInfo.from_metadata(schema.metadata) == here
        assert "device" not in schema.names  # metadata, not a column: the rows keep their bytes


def test_quiet_hides_the_device_line(tmp_path):
    r = CliRunner().invoke(cli, [*GENERATE, "-q", "--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert _device_lines(r.output) == []


def test_a_run_moved_to_another_device_resumes(tmp_path):
    """The device is a record: a run started on another card (here: run.json says a GPU) carries on."""
    out = tmp_path / "run"
    runner = CliRunner()
    first = GENERATE
    r = runner.invoke(cli, [*first, "--out", str(out)])
    assert r.exit_code == 0, r.output
    arm = RunDir(out).arm_dir("baseline").path
    gpu = DeviceInfo("cuda:0", "bfloat16", torch.__version__, "NVIDIA A10G", 22.49, "550.54.14", "12.4").to_json()
    data = json.loads((arm / "run.json").read_text())
    data["devices"] = [gpu]
    data["settings"]["generate"]["devices"] = [gpu]
    (arm / "run.json").write_text(json.dumps(data))

    r = runner.invoke(cli, [*first, "--out", str(out)])  # nothing to do: the record it had is kept
    assert r.exit_code == 0, r.output
    assert read_run_json(arm).devices == [gpu]
    more = [*GENERATE[:5], "4", *GENERATE[6:]]  # --per-class 4: new shards, on this CPU
    r = runner.invoke(cli, [*more, "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_run_json(arm).devices == [describe_device(torch.device("cpu"), torch.float32).to_json()]


def test_device_info_round_trips_metadata():
    info = DeviceInfo("cuda:1", "float16", "2.9.0", "Tesla T4", 14.58, "535.1", "12.1")
    meta = {k.encode(): v.encode() for k, v in info.metadata().items()}
    assert list(info.metadata()) == [DEVICE_METADATA_KEY]
    assert DeviceInfo.from_metadata(meta) == info
    assert DeviceInfo.from_metadata(None) is None and DeviceInfo.from_metadata({}) is None
    assert DeviceInfo.from_json({**info.to_json(), "later": 1}) == info  # a newer writer's entries are ignored


class _Resolving:
    """A worker that resolves its device in its own process (the pid stands for the node's GPU),
    as the real workers do when their models load."""

    def __init__(self, tag: str) -> None:
        self.device_info = DeviceInfo("cpu", "float32", torch.__version__, gpu=f"{tag} pid {os.getpid()}")

    def run(self, unit: int) -> int:
        return os.getpid()


def test_ray_records_what_the_actors_resolved_and_announces_it_once(ray_local):
    """On Ray the device comes from each actor's ping (the driver's own "auto" says nothing of a
    node's GPU); two stages on one pool announce each device once."""
    from augment.distributed import Pool, PoolSpec, ignoring_cache

    announced: list[DeviceInfo] = []
    with Pool(PoolSpec(workers=2, device="cpu")) as pool:
        pool.announce = announced.append
        pids: set[int] = set()
        for _ in range(2):  # two stages, same actors
            pool.run(ignoring_cache(partial(_Resolving, "actor")), range(4), lambda u, r: pids.add(r),
                     lambda u, e: pytest.fail(f"unit {u}: {e!r}"))
            seen = {d.gpu for d in pool.stage_devices}
            assert os.getpid() not in pids and f"actor pid {os.getpid()}" not in seen  # not the driver's
            assert {f"actor pid {p}" for p in pids} <= seen  # every actor that ran a unit is recorded
        stages = list(pool.devices)
        pool.run(ignoring_cache(partial(_Resolving, "actor")), [], lambda u, r: None, lambda u, e: None)
        assert pool.stage_devices == []  # a stage with nothing to do records nothing
    assert announced == stages and len({d.gpu for d in announced}) == len(announced)  # each device once


def test_benchmark_cells_resolve_the_device_on_their_worker():
    """A benchmark cell's worker turns the ``auto`` it was sent into this node's device (the driver
    no longer resolves it: ``--workers N``), and says so for the record."""
    from augment.downstream.benchmark import CellWorker
    from augment.downstream.train import TrainSettings

    worker = CellWorker(TrainSettings(device="auto"), ["a", "b"])
    assert worker.settings.device == "cpu"  # this machine has no GPU
    assert worker.device_info == describe_device(torch.device("cpu"), torch.float32)


class _Mode:
    """A worker that reports whether torch's deterministic kernels are on where it runs."""

    def run(self, unit: int) -> tuple[bool, str | None, bool]:
        return (torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
                torch.backends.cudnn.deterministic)


def _modes(workers: int, deterministic: bool) -> set[tuple[bool, str | None, bool]]:
    from augment.distributed import Pool, PoolSpec, ignoring_cache

    got: set[tuple[bool, str | None, bool]] = set()
    with Pool(PoolSpec(workers=workers, device="cpu", deterministic=deterministic)) as pool:
        pool.run(ignoring_cache(_Mode), range(4), lambda u, r: got.add(r), lambda u, e: pytest.fail(f"{u}: {e!r}"))
    return got


def test_deterministic_mode_inline_is_set_for_the_units_and_restored(monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic)
    assert _modes(0, True) == {(True, CUBLAS_WORKSPACE_CONFIG, True)}
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic) == before
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ  # the driver is left as it was
    assert _modes(0, False) == {(before[0], None, before[1])}  # off: nothing touched


def test_deterministic_mode_reaches_every_ray_worker(ray_local):
    assert _modes(2, True) == {(True, CUBLAS_WORKSPACE_CONFIG, True)}


def test_deterministic_setting_is_recorded_only_when_used():
    from augment.config import Config, config_from_dict
    from augment.stage import pool_spec

    assert "deterministic" not in Config().to_dict()
    on = Config(deterministic=True)
    assert on.to_dict()["deterministic"] is True and config_from_dict(on.to_dict()).deterministic is True
    assert pool_spec(on).deterministic and not pool_spec(Config()).deterministic


def test_generate_takes_deterministic(tmp_path):
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, [*GENERATE, "--deterministic", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert read_run_json(RunDir(out).arm_dir("baseline").path).config["deterministic"] is True
    assert not torch.are_deterministic_algorithms_enabled()  # the CLI process is left as it was
