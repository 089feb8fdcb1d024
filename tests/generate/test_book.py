"""The generate driver's bookkeeping (augment.generate.book): constant per shard, the manifests read
once on resume, and files equal to what the manifests give — with the stub worker of
benchmarks/scale.py (no model), so a run of hundreds of shards takes seconds."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from augment import stage
from augment.generate import book as book_mod
from augment.generate.book import ArmBook, ShardFacts, arm_acceptance, write_acceptance
from augment.generate.plan import plan_shards
from augment.io.manifest import read_manifests
from augment.io.rundir import ArmDir
from augment.io.shards import info_dict, write_shard
from augment.verify import verify_run

ROOT = Path(__file__).resolve().parents[2]


def _scale():
    """benchmarks/scale.py as a module (its stub stage and its manifest-read counter)."""
    name = "benchmarks_scale"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / "scale.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _stub_run(out: Path, classes: int, per_class: int, shard_size: int, min_confidence: float = 0.0,
              force: bool = False):
    sc = _scale()
    st = sc.StubGenerateStage(sc.stub_config(out, classes, per_class, shard_size, min_confidence), classes)
    with sc.ManifestReads() as reads:
        summary = stage.run_stage(st, force=force, show_progress=False)
    return summary, reads.count


def _truth(arm: ArmDir, name: str, plan: range) -> tuple[dict, dict | None, float | None]:
    """_info.json, acceptance.json and the mean confidence as the manifests give them (read them all)."""
    stats = arm_acceptance(arm, plan)
    acc = None
    if stats is not None:
        write_acceptance(arm, stats, [f"class{c}" for c in range(1000)])
        acc = json.loads(arm.acceptance_json.read_text())
    vals = [v for v in read_manifests(arm.manifests).column("guide_confidence").to_pylist() if v is not None]
    return info_dict(arm.path, name), acc, (sum(vals) / len(vals) if vals else None)


def test_n_one_image_shards_read_the_manifests_o_n_times_not_n_squared(tmp_path):
    """The issue's figure: 200 one-image shards opened manifests 20,500 times before (every shard
    re-read every done manifest); now writing reads none, and a resume reads each done one a few times."""
    out = tmp_path / "run"
    s, reads = _stub_run(out, 200, 1, 1)
    assert (s.shards, s.written, s.failed) == (200, 200, [])
    assert reads == 0
    arm = ArmDir(s.out)
    info = json.loads(arm.info_json.read_text())
    assert info == info_dict(arm.path, "digits-baseline") and info["splits"]["train"]["num_samples"] == 200
    # a resume: each done shard's manifest is read a bounded number of times (done check + the book)
    s2, reads = _stub_run(out, 200, 1, 1)
    assert (s2.written, s2.skipped) == (0, 200)
    assert 200 <= reads <= 3 * 200
    assert s2.mean_confidence == s.mean_confidence


def test_the_final_files_are_the_manifests_own_under_rejection_force_and_growth(tmp_path):
    """acceptance.json, _info.json and the mean equal a rebuild from the manifests, byte for byte:
    a first run, a grown plan (a rewritten last shard), and a --force redo of everything."""
    out = tmp_path / "run"
    for per_class, force in ((3, False), (5, False), (5, True)):
        s, _ = _stub_run(out, 4, per_class, 3, min_confidence=0.5, force=force)
        assert not s.failed
        arm = ArmDir(s.out)
        info_bytes, acc_bytes = arm.info_json.read_bytes(), arm.acceptance_json.read_bytes()
        info, acc, mean = _truth(arm, "digits-baseline", range(s.shards))  # rewrites acceptance.json
        assert json.loads(info_bytes) == info and acc_bytes == arm.acceptance_json.read_bytes()
        assert s.mean_confidence == mean
        assert s.acceptance == arm_acceptance(arm, range(s.shards)) and s.samples == 4 * per_class == acc["total"]["accepted"]


def _write(arm: ArmDir, index: int, classes: list[int], offset: int) -> tuple[ShardFacts, object]:
    """Shard ``index`` of the stub's kind, confidences shifted by ``offset`` (a redo differs)."""
    sc = _scale()
    unit = plan_shards(classes, 1, len(classes))[0]
    result = sc.StubWorker([f"class{c}" for c in range(1000)], 0.5, 2).run(type(unit)(index, unit.entries))
    for k, smp in enumerate(result.samples):
        smp.meta.guide_confidence = ((index * 37 + k * 11 + offset) % 101) / 101 + 1e-7
    written = write_shard(arm.path, index, result.samples, result.rejection.metadata())
    return ShardFacts.of_written(written, result.samples, result.rejection), result


def test_out_of_order_results_failures_and_shards_beyond_the_plan(tmp_path):
    """Results in any order, a failed redo (the old shard stays and counts), a shard beyond the plan
    (in _info.json and the mean, not in the acceptance): the book says what the manifests say."""
    arm = ArmDir(tmp_path / "arm")
    for i in range(7):
        _write(arm, i, [i % 3, 5], 0)
    book = ArmBook(arm, "x", range(6), [f"class{c}" for c in range(1000)], acceptance=True,
                   every_shards=10**9, every_seconds=float("inf"))
    book.seed({0, 1, 2, 3, 4, 6}, {1, 3, 5})  # shard 5 is new, shard 6 beyond the plan
    for index in (5, 3):
        facts, _ = _write(arm, index, [index % 3, 7], 13)
        book.wrote(index, facts)
    book.failed(1)
    book.write()
    info, acc, mean = _truth(arm, "x", range(6))
    assert json.loads(arm.info_json.read_text()) == info
    assert book.acceptance() == arm_acceptance(arm, range(6))
    assert book.mean_confidence() == mean  # the same float: summed in shard order, float32 as stored


def test_files_are_written_every_n_shards_or_t_seconds_and_a_crash_between_is_repaired(tmp_path, monkeypatch):
    """Between two writes _info.json lags (verify says so); the resume rebuilds it from the manifests."""
    now = [0.0]
    monkeypatch.setattr(book_mod, "EVERY_SHARDS", 4)
    sc = _scale()
    out = tmp_path / "run"

    class Crash(BaseException):
        pass

    class CrashingStage(sc.StubGenerateStage):
        def on_result(self, unit, result):
            if unit.index == 6:
                raise Crash
            return super().on_result(unit, result)

    st = CrashingStage(sc.stub_config(out, 2, 5, 1), 2)
    with pytest.raises(Crash):
        stage.run_stage(st, show_progress=False)
    arm = ArmDir(st.arm.path)
    assert json.loads(arm.info_json.read_text())["splits"]["train"]["shard_lengths"] == [1] * 4  # written after 4
    assert not verify_run(arm.path).ok  # 6 shards done, 4 listed
    s, _ = _stub_run(out, 2, 5, 1)
    assert (s.written, s.skipped) == (4, 6) and verify_run(s.out).ok
    assert json.loads(arm.info_json.read_text()) == info_dict(arm.path, "digits-baseline")
    # the time-based write: a book whose clock passed every_seconds writes at the next shard
    book = ArmBook(ArmDir(tmp_path / "b"), "y", range(3), ["a"], acceptance=False, every_shards=100,
                   every_seconds=5, clock=lambda: now[0])
    facts, _ = _write(book.arm, 0, [0], 0)
    book.wrote(0, facts)
    assert not book.arm.info_json.exists()
    now[0] = 5.0
    facts, _ = _write(book.arm, 1, [0], 0)
    book.wrote(1, facts)
    assert json.loads(book.arm.info_json.read_text())["splits"]["train"]["num_samples"] == 2
