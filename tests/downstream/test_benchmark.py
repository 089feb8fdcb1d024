"""The few-shot grid: treatments, k=0 real-only as no data, caching, reports, missing arms."""

from __future__ import annotations

import csv
import json
from functools import partial

import pytest

from augment.datasets import get_dataset
from augment.downstream.benchmark import (
    CellUnit,
    CellWorker,
    Treatment,
    _cell_key,
    _read_cache,
    parse_treatment,
    render_text,
    run_benchmark,
)
from augment.downstream.benchmark_result import BenchmarkCell, BenchmarkResult, SummaryRow
from augment.downstream.train import TrainSettings
from augment.errors import AugmentError
from tests.downstream import make_digit_run

TINY = TrainSettings(arch="test_resnet", epochs=1, samples_per_epoch=32, batch_size=32)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture()
def run(tmp_path):
    out = make_digit_run(tmp_path / "run", per_class=2, confidence=lambda c, i: 0.5 + 0.4 * i)
    make_digit_run(out / "baseline", per_class=2, confidence=lambda c, i: 0.2)
    return out


def test_parse_arm():
    assert parse_treatment("real") == Treatment("real")
    assert parse_treatment("token:conf=0.9, w=0.5") == Treatment("token", weight=0.5, min_confidence=0.9)
    assert parse_treatment("Baseline:prob=0.2") == Treatment("baseline", prob=0.2)
    for bad in ("tokens", "token:conf", "token:foo=1", "token:prob=2", "real:prob=0.5", "token:w=x"):
        with pytest.raises(AugmentError):
            parse_treatment(bad)
    assert Treatment("token", 0.5, 0.5, 0.9).label == "real + token synthetic (conf ≥ 0.9, p=0.5, w=0.5)"


def test_grid_reports_and_cache(tmp_path, run, digits):
    arms = ["real", "baseline", "token", "token:conf=0.8,weight=0.5"]
    result = run_benchmark(run, digits, TINY, k_values=[0, 1], seeds=[0, 1], treatments=arms, synthetic_prob=0.5,
                           progress=False).result
    res = result.to_json()
    cells = res["cells"]
    assert len(cells) == 2 * 4 * 2 - 2  # no k=0 real-only cells
    by = {(c["arm"], c["k"], c["seed"]): c for c in cells}
    assert by[("real + token synthetic (conf ≥ 0.8, p=0.5, w=0.5)", 1, 0)]["synthetic"] == 10  # i=1 only
    assert by[("real + token synthetic (p=0.5)", 0, 1)]["real"] == 0
    assert by[("real only", 1, 0)]["real"] == 10 and by[("real only", 1, 0)]["synthetic"] == 0
    summary = {(s["arm"], s["k"]): s for s in res["summary"]}
    assert summary[("real only", 0)]["mean"] is None and summary[("real only", 0)]["note"]
    s = summary[("real + baseline synthetic (p=0.5)", 1)]
    assert s["n"] == 2 and 0 <= s["mean"] <= 1 and s["std"] >= 0
    report = run / "report"
    assert json.loads((report / "benchmark.json").read_text())["summary"] == res["summary"]
    rows = list(csv.DictReader((report / "benchmark.csv").open()))
    assert len(rows) == 8 and rows[0]["arm"] == "real only" and rows[0]["mean_top1"] == ""
    assert (report / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (report / "benchmark.md").read_text()
    assert "| real only | – |" in md
    assert "real only" in render_text(result) and "±" in render_text(result)
    # a re-run reuses every cached cell (same numbers, no training)
    again = run_benchmark(run, digits, TINY, k_values=[0, 1], seeds=[0, 1], treatments=arms, synthetic_prob=0.5,
                          progress=False).result.to_json()
    assert [c["top1"] for c in again["cells"]] == [c["top1"] for c in cells]
    assert again["seconds"] < res["seconds"]
    lines = (report / "benchmark-cells.jsonl").read_text().splitlines()
    assert len(lines) == len(cells)


def test_caso_arms_read_the_edits_of_each_cells_own_draw(tmp_path, run, digits):
    """caso cells read OUT/caso/draws/k<K>-seed<S> of their own (k, seed), never another draw's; no
    caso cell at k=0 (no reals to edit); token+caso pools the token arm and the draw's edits."""
    from augment.io.rundir import RunDir

    for (k, seed), per in {(1, 0): 1, (1, 1): 2, (2, 0): 3, (2, 1): 4}.items():
        make_digit_run(RunDir(run).caso_draw(k, seed).path, per_class=per)
    make_digit_run(RunDir(run).caso_draw(3, 0).path, per_class=5)  # a draw no cell of this grid uses
    res = run_benchmark(run, digits, TINY, k_values=[0, 1, 2], seeds=[0, 1], treatments=["caso", "token+caso"],
                        synthetic_prob=None, progress=False).result.to_json()
    by = {(c["arm_spec"]["source"], c["k"], c["seed"]): c for c in res["cells"]}
    assert sorted(k for _, k, _ in by) == [1] * 4 + [2] * 4  # no k=0 cell
    assert by["caso", 2, 1]["synthetic"] == 40
    assert by["caso", 1, 0]["synthetic"] == 10 and by["caso", 1, 1]["synthetic"] == 20
    assert by["caso", 2, 0]["real"] == 20 and by["caso", 2, 0]["synthetic"] == 30
    assert by["token+caso", 1, 1]["synthetic"] == 20 + 20  # token arm: 2 per class
    notes = {(r["arm_spec"]["source"], r["k"]): r["note"] for r in res["summary"]}
    assert notes["caso", 0] == "no reals to edit (k=0)" and notes["caso", 1] is None
    with pytest.raises(AugmentError, match="no caso arm shards.*k4-seed0"):
        run_benchmark(run, digits, TINY, k_values=[4], seeds=[0], treatments=["caso"], progress=False)


def test_missing_baseline_arm_says_to_build(tmp_path, digits):
    out = make_digit_run(tmp_path / "run", per_class=1)
    with pytest.raises(AugmentError, match=r"no baseline arm shards .*augment build --baseline"):
        run_benchmark(out, digits, TINY, k_values=[1], seeds=[0], treatments=["real", "baseline"], progress=False)


def test_k_too_large_is_refused_before_training(run, digits):
    with pytest.raises(AugmentError, match="smallest class"):
        run_benchmark(run, digits, TINY, k_values=[1, 5000], seeds=[0], treatments=["real"], progress=False)


def test_filter_that_empties_an_arm(run, digits):
    with pytest.raises(AugmentError, match="20 of 20 dropped"):
        run_benchmark(run, digits, TINY, k_values=[1], seeds=[0], treatments=["baseline:conf=0.5"], progress=False)


def test_bad_arm_is_found_before_any_cell_trains(run, digits):
    with pytest.raises(AugmentError, match="dropped"):
        run_benchmark(run, digits, TINY, k_values=[1], seeds=[0], treatments=["real", "token:conf=0.99"], progress=False)
    assert not (run / "report" / "benchmark-cells.jsonl").exists()


def test_failed_cell_is_reported_and_finished_cells_stay_cached(run, digits, monkeypatch):
    import augment.downstream.benchmark as bm

    real_train = bm.train_classifier

    def flaky(mixed, *args, **kwargs):
        if args[2].seed == 1:
            raise RuntimeError("a cell blew up")
        return real_train(mixed, *args, **kwargs)

    monkeypatch.setattr(bm, "train_classifier", flaky)
    failed = run_benchmark(run, digits, TINY, k_values=[1], seeds=[0, 1], treatments=["real"], progress=False)
    assert failed.failed == ["k=1 real only seed=1: a cell blew up"] and failed.exit_code == 1
    assert failed.result is None and not (run / "report" / "benchmark.json").exists()  # no partial report
    lines = (run / "report" / "benchmark-cells.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [0]
    monkeypatch.setattr(bm, "train_classifier", real_train)
    res = run_benchmark(run, digits, TINY, k_values=[1], seeds=[0, 1], treatments=["real"], progress=False).result.to_json()
    assert [c["seed"] for c in res["cells"]] == [0, 1]


@pytest.mark.slow
def test_ray_workers_give_the_inline_figures(tmp_path, run, digits):
    """Cells carry their own seeds and train single-threaded: two Ray actors reproduce the inline grid."""
    import torch

    from augment.config import Config
    from augment.distributed import shutdown

    args = dict(k_values=[1], seeds=[0, 1], treatments=["real", "token"], synthetic_prob=0.5, progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each of the two actors on a 2-core machine (and the CLI's inline default)
    try:
        inline = run_benchmark(run, digits, TINY, resume=False, **args).result.to_json()
    finally:
        torch.set_num_threads(threads)
    try:
        # the actors get every image from the driver, by reference (none opens a file)
        cfg = Config(workers=2, device=TINY.device, threads=1)  # the pool comes from the config
        ray = run_benchmark(run, digits, TINY, resume=False, cfg=cfg, **args).result.to_json()
    finally:
        shutdown()
    assert ray["workers"] == 2
    assert [(c["arm"], c["seed"], c["top1"]) for c in ray["cells"]] == \
        [(c["arm"], c["seed"], c["top1"]) for c in inline["cells"]]


def test_cell_worker_trains_from_the_images_a_cell_carries(tmp_path, run, digits):
    """A worker needs no dataset and no run folder: the driver's payloads are all it reads."""
    import shutil

    import torch

    from augment.downstream.benchmark import _kshot_reals, _read_arm, arm_sources
    from augment.downstream.mixing import load_split
    from augment.shipping import Payload

    arm = Treatment("token", prob=0.5, weight=1.0, min_confidence=0.0)
    test = Payload(load_split(digits, "test", TINY.input_size))
    synthetic = Payload(_read_arm(arm_sources(run)["token"], 0.0, digits, TINY.input_size, lambda m: None))
    reals = Payload.lazy(partial(_kshot_reals, digits, 1, 0, TINY.input_size))
    cell = CellUnit("key", 1, arm, 0, reals, test, [synthetic])
    shutil.rmtree(run)  # the shards were read by the "driver" above; the worker must not need them
    worker = CellWorker(TINY, digits.class_names)
    row = worker.run(cell)
    assert row.real == 10 and row.synthetic == 20 and 0 <= row.top1 <= 1
    assert worker.shared(test) is test.get() and len(test.get()[1]) == 450
    reals.release()  # a lazy payload drops its images and rebuilds the same ones when used again
    torch.testing.assert_close(reals.get()[1], _kshot_reals(digits, 1, 0, TINY.input_size)[1])


def test_cell_worker_starts_from_the_checkpoint_the_driver_read(tmp_path, run, digits):
    """train.checkpoint travels with the factory (a Payload), like the classifier checkpoints:
    the cell trains the same as from the file, after the file is gone."""
    import dataclasses

    from augment.downstream.benchmark import _kshot_reals
    from augment.downstream.mixing import load_split
    from augment.downstream.train import create_classifier, read_checkpoint, save_checkpoint, sidecar
    from augment.shipping import Payload

    model, _ = create_classifier(TINY, 10)
    path = save_checkpoint(model, tmp_path / "init.safetensors", sidecar(TINY, digits.class_names))
    settings = dataclasses.replace(TINY, checkpoint=str(path))
    arm = Treatment("real")
    test = Payload(load_split(digits, "test", TINY.input_size))
    reals = Payload(_kshot_reals(digits, 1, 0, TINY.input_size))
    cell = CellUnit("key", 1, arm, 0, reals, test, [])
    from_file = CellWorker(settings, digits.class_names).run(cell)
    shipped = Payload(read_checkpoint(settings))
    path.unlink()
    with pytest.raises(AugmentError, match="does not exist"):  # read by path, as before
        CellWorker(settings, digits.class_names).run(cell)
    row = CellWorker(settings, digits.class_names, shipped).run(cell)
    assert (row.top1, row.top5) == (from_file.top1, from_file.top5)


# a line of benchmark-cells.jsonl as written before the cells were typed: caches must stay valid
OLD_CACHE_LINE = (
    '{"arm": "real + baseline synthetic (p=0.5)", "arm_spec": {"min_confidence": 0.0, "prob": 0.5, '
    '"source": "baseline", "weight": 1.0}, "k": 0, "key": "edaf5529c3e0ea296eb45d6d", "mean_class_top1": 0.1, '
    '"real": 0, "seconds": 3.273283785999979, "seed": 0, "synthetic": 30, "top1": 0.10222221910953522, '
    '"top5": 0.504444420337677}'
)


def test_cell_keys_are_unchanged():
    """The cache key hashes TrainSettings.to_dict() (minus seed/device/eval cadence): its values
    for these settings were computed before TrainSettings became TrainConfig + seed + device."""
    assert _cell_key(Treatment("token", 0.5, 1.0, 0.9), 3, 1, TINY, "abc", "digits") == "d7140000535ad9f1412e95b9"
    assert _cell_key(Treatment("real"), 0, 0, TrainSettings(), None, "digits") == "f6f6b8f1625a794d42206f34"


def test_old_cache_lines_are_read_and_written_back_the_same(tmp_path):
    cell = BenchmarkCell.from_json(json.loads(OLD_CACHE_LINE))
    assert cell.arm_spec == Treatment("baseline", 0.5, 1.0, 0.0) and cell.arm == cell.arm_spec.label
    assert json.dumps(cell.to_json(), sort_keys=True) == OLD_CACHE_LINE
    path = tmp_path / "cells.jsonl"
    path.write_text(OLD_CACHE_LINE + "\n" + '{"key": "cut by a cr' + "\n" + '{"key": "x", "arm": "other layout"}\n')
    assert _read_cache(path) == {cell.key: cell}


def test_benchmark_result_round_trip():
    real, token = Treatment("real"), Treatment("token", 0.5, 0.5, 0.9)
    cells = [BenchmarkCell(f"k{s}", token.label, token, 1, s, 0.5 + s / 10, 0.9, float("nan"), 10, 20, 1.5)
             for s in (0, 1)]
    result = BenchmarkResult(
        run="/run", dataset="digits", test_split="test", test_images=450, k_values=[0, 1], seeds=[0, 1],
        arms=[real, token], metric="top-1", settings=TINY.to_dict(), workers=0,
        summary=[SummaryRow.of(real, 0, [], "no data"), SummaryRow.of(real, 1, []),
                 SummaryRow.of(token, 0, []), SummaryRow.of(token, 1, [c.top1 for c in cells])],
        cells=cells, seconds=2.0, created="2025-01-02T03:04:05+00:00",
    )
    doc = result.to_json()
    assert doc["arms"][1]["label"] == token.label and doc["cells"][0]["mean_class_top1"] is None
    back = BenchmarkResult.from_json(json.loads(json.dumps(doc)))
    assert back.to_json() == doc
    assert back == BenchmarkResult.from_json(doc) and back.cells[1] == BenchmarkCell.from_json(cells[1].to_json())
    assert back.summary_of(token)[1].mean == pytest.approx(0.55) and back.seconds == 2.0
    with pytest.raises(ValueError, match="'cells'"):
        BenchmarkResult.from_json({k: v for k, v in doc.items() if k != "cells"})


def test_a_killed_report_write_leaves_nothing_after_the_rerun(run, digits):
    """kill -9 while benchmark.json (or .md, .png) was being written leaves its temp file; the re-run
    removes it (issue 13, kill harness), and only its own: another command's temp stays."""
    from augment.io.atomic import is_temp_name, temp_path_for

    report = run / "report"
    report.mkdir(exist_ok=True)
    ours, theirs = temp_path_for(report / "benchmark.json"), temp_path_for(report / "eval.json")
    ours.write_text("{"), theirs.write_text("{")
    run_benchmark(run, digits, TINY, k_values=[1], seeds=[0], treatments=["real"], progress=False)
    assert [p for p in report.iterdir() if is_temp_name(p.name)] == [theirs]
