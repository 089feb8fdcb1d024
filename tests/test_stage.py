"""The stage skeleton on a toy stage: order of the checks, resume, one failure policy, exit codes."""

from __future__ import annotations

import errno
import json
from dataclasses import dataclass
from typing import Any

import pytest

from augment import stage
from augment.config import Config
from augment.distributed import WorkerFactory
from augment.errors import AugmentError
from augment.io.rundir import ArmDir, read_run_json


class _Worker:
    """Squares its unit; some units raise what the test asks for."""

    def __init__(self, raises: dict[int, BaseException]) -> None:
        self.raises = raises

    def run(self, unit: int) -> int:
        if unit in self.raises:
            raise self.raises[unit]
        return unit * unit


@dataclass
class ToySummary(stage.StageSummary):
    results: dict[int, int]


class ToyStage(stage.Stage[int, int, ToySummary]):
    """Units 0..n-1 of the caso arm; a unit is done when ``<arm>/unit-<i>`` exists."""

    name = "toy"
    compat_keys = ["seed"]

    def __init__(self, cfg: Config, n: int = 5, raises: dict[int, BaseException] | None = None,
                 write_fails: set[int] | None = None, preflight_error: str | None = None) -> None:
        super().__init__(cfg)
        self.n, self.raises, self.write_fails = n, raises or {}, write_fails or set()
        self.preflight_error = preflight_error
        self.results: dict[int, int] = {}
        self.failed_units: list[tuple[int, str]] = []
        self.finished = False

    @property
    def arm(self) -> ArmDir:
        return self.run.arm_dir("caso")

    def preflight(self) -> None:
        if self.preflight_error:
            raise AugmentError(self.preflight_error)

    def run_json_extra(self) -> dict[str, Any]:
        return {"class_names": ["a", "b"]}

    def plan(self, force: bool) -> stage.Plan[int]:
        todo = [u for u in range(self.n) if force or not (self.arm.path / f"unit-{u}").exists()]
        return stage.Plan(todo, skipped=self.n - len(todo), total=self.n)

    def worker_factory(self) -> WorkerFactory:
        return lambda *, cache: _Worker(self.raises)

    def on_result(self, unit: int, result: int) -> str | None:
        if unit in self.write_fails:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.results[unit] = result
        (self.arm.path / f"unit-{unit}").write_text(str(result))
        return "ValueError: odd result" if result == 16 else None

    def on_failed(self, unit: int, error: str) -> None:
        self.failed_units.append((unit, error))

    def unit_label(self, unit: int) -> str:
        return f"unit {unit}"

    def finish(self) -> None:
        self.finished = True

    def summary(self, **common: Any) -> ToySummary:
        return ToySummary(**common, results=dict(self.results))


def _cfg(tmp_path, seed: int = 0) -> Config:
    return Config(out=str(tmp_path / "run"), workers=0, seed=seed)


def test_a_failing_unit_is_reported_and_the_others_finish(tmp_path):
    toy = ToyStage(_cfg(tmp_path), raises={2: ValueError("unit two is broken\nsecond line")})
    s = stage.run_stage(toy, show_progress=False)
    assert isinstance(s, ToySummary) and s.stage == "toy" and s.out == tmp_path / "run" / "caso"
    assert s.failed == ["unit 2: ValueError: unit two is broken", "unit 4: ValueError: odd result"]
    assert toy.failed_units == [(2, "ValueError: unit two is broken")]
    assert s.results == {0: 0, 1: 1, 3: 9, 4: 16}
    assert (s.done, s.skipped, s.exit_code) == (3, 0, 1)
    assert toy.finished
    record = read_run_json(tmp_path / "run" / "caso")
    assert record.stage == "toy" and record.class_names == ["a", "b"] and "toy" in record.stages


def test_resume_skips_done_units_and_exit_code_0(tmp_path):
    stage.run_stage(ToyStage(_cfg(tmp_path), n=3), show_progress=False)
    s = stage.run_stage(ToyStage(_cfg(tmp_path), n=4), show_progress=False)
    assert (s.done, s.skipped, s.failed, s.exit_code) == (1, 3, [], 0)
    assert stage.run_stage(ToyStage(_cfg(tmp_path), n=4), force=True, show_progress=False).done == 4


def test_oserror_while_writing_is_one_line_that_says_how_to_resume(tmp_path):
    with pytest.raises(AugmentError) as info:
        stage.run_stage(ToyStage(_cfg(tmp_path), write_fails={1}), show_progress=False)
    msg = info.value.message
    assert msg == (f"cannot write unit 1 in {tmp_path / 'run' / 'caso'}: [Errno 28] No space left on device; "
                   "free space or fix permissions, then re-run the same command to resume")
    assert (tmp_path / "run" / "caso" / "unit-0").exists() and not (tmp_path / "run" / "caso" / "unit-2").exists()


def test_oserror_from_a_worker_fails_its_unit_not_the_disk(tmp_path):
    """A worker's OSError happened on its node (a Ray ConnectionError, a full cache there), not in the
    run folder: it fails its unit with its own name, and the others are written."""
    toy = ToyStage(_cfg(tmp_path), raises={0: PermissionError(errno.EACCES, "Permission denied"),
                                           1: ConnectionError("GCS has gone away")})
    s = stage.run_stage(toy, show_progress=False)
    assert s.failed[:2] == ["unit 0: PermissionError: [Errno 13] Permission denied",
                            "unit 1: ConnectionError: GCS has gone away"]
    assert s.results == {2: 4, 3: 9, 4: 16} and s.exit_code == 1


def test_a_ray_error_around_the_units_is_not_a_disk_problem(tmp_path, monkeypatch):
    """Issue 11: a ConnectionError out of the pool (Ray lost its cluster) used to read "cannot write
    into ...; free space or fix permissions"."""
    from augment.distributed import Pool

    def lost(self, factory, units, on_result, on_error):
        raise ConnectionError("GCS has gone away")

    monkeypatch.setattr(Pool, "run", lost)
    with pytest.raises(ConnectionError, match="GCS has gone away"):
        stage.run_stage(ToyStage(_cfg(tmp_path)), show_progress=False, pool=Pool(stage.pool_spec(_cfg(tmp_path))))


def test_augment_error_from_a_worker_is_raised_as_is(tmp_path):
    toy = ToyStage(_cfg(tmp_path), raises={1: AugmentError("fix the thing")})
    with pytest.raises(AugmentError, match="^fix the thing$"):
        stage.run_stage(toy, show_progress=False)


def test_preflight_fails_before_the_run_folder_exists(tmp_path):
    with pytest.raises(AugmentError, match="bad name"):
        stage.run_stage(ToyStage(_cfg(tmp_path), preflight_error="bad name"), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_changed_settings_refused_once_the_stage_ran(tmp_path):
    # a run.json without this stage does not bind it
    (tmp_path / "run" / "caso").mkdir(parents=True)
    (tmp_path / "run" / "caso" / "run.json").write_text(json.dumps({"config": {"seed": 5}, "stages": {}}))
    stage.run_stage(ToyStage(_cfg(tmp_path, seed=0), n=1), show_progress=False)
    with pytest.raises(AugmentError, match="different setup.*seed"):
        stage.run_stage(ToyStage(_cfg(tmp_path, seed=1), n=1), show_progress=False)
    assert stage.run_stage(ToyStage(_cfg(tmp_path, seed=1), n=1), force=True, show_progress=False).exit_code == 0


def test_a_file_in_the_way_of_the_run_folder(tmp_path):
    (tmp_path / "run").write_text("not a folder")
    with pytest.raises(AugmentError, match="is a file, not a folder"):
        stage.run_stage(ToyStage(_cfg(tmp_path)), show_progress=False)


def test_failure_line_keeps_the_first_line_only():
    assert stage.failure_line(RuntimeError("x" * 400 + "\nmore")) == "RuntimeError: " + "x" * 300
    assert stage.failure_line(KeyError()) == "KeyError: "


def test_summary_exit_code(tmp_path):
    s = stage.StageSummary("toy", tmp_path, 1, 0, [], 0.0)
    assert s.exit_code == 0
    s.failed.append("unit 0: ValueError: x")
    assert s.exit_code == 1


def test_a_second_writer_is_refused_before_it_writes(tmp_path):
    from tests.io.test_lock import hold_lock

    (tmp_path / "run").mkdir()
    other = hold_lock(tmp_path / "run")  # another `augment` process writing the same --out
    try:
        with pytest.raises(AugmentError, match=rf"is being written by PID {other.pid} on .*resume with"):
            stage.run_stage(ToyStage(_cfg(tmp_path)), show_progress=False)
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "run" / "caso").exists()  # neither run.json nor a unit was written
    assert stage.run_stage(ToyStage(_cfg(tmp_path)), show_progress=False).results  # killed: the lock is free


class OtherStage(ToyStage):
    """Another stage writing the same arm's run.json with its own settings (``tokens`` after ``generate``)."""

    name = "other"


def test_each_stage_compares_with_the_settings_it_recorded(tmp_path):
    stage.run_stage(ToyStage(_cfg(tmp_path, seed=0), n=1), show_progress=False)
    stage.run_stage(OtherStage(_cfg(tmp_path, seed=1), n=1), force=True, show_progress=False)
    assert read_run_json(tmp_path / "run" / "caso").config["seed"] == 1  # the last writer's config
    # the toy stage's resume still compares against what the toy stage wrote with
    assert stage.run_stage(ToyStage(_cfg(tmp_path, seed=0), n=1), show_progress=False).skipped == 1
    with pytest.raises(AugmentError, match=r"seed: 0 in run.json, 1 now"):
        stage.run_stage(ToyStage(_cfg(tmp_path, seed=1), n=1), show_progress=False)
