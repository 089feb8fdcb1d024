"""augment.pipeline: the run's set-up resolved once, the build's chaining order and failure policy,
and the benchmark grid resuming from its cache through the stage skeleton."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from augment import pipeline
from augment.config import Config
from augment.generate.runner import GenerateStage, GenerateSummary
from augment.tokens.runner import TokensStage, TokensSummary
from tests.downstream import make_digit_run


def _count(monkeypatch, module: str, name: str) -> list[int]:
    """Count the calls of ``module.name`` (still calling it)."""
    import importlib

    mod = importlib.import_module(module)
    real, calls = getattr(mod, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mod, name, counted)
    return calls


def test_inputs_are_resolved_once_for_every_stage(tmp_path, monkeypatch):
    """The preflights of a build's stages share one RunInputs: the classifier's files are read and
    the classifier loaded once on the driver, not once per stage."""
    reads = _count(monkeypatch, "augment.models.classifier", "read_classifier_source")
    loads = _count(monkeypatch, "augment.models.classifier", "load_classifier")
    datasets = _count(monkeypatch, "augment.datasets.selection", "get_dataset")
    cfg = Config(out=str(tmp_path / "run"), classes="0-2")
    inputs = pipeline.resolve_inputs(cfg)
    stages = [TokensStage(cfg, inputs), GenerateStage(cfg, True, inputs), GenerateStage(cfg, True, inputs)]
    for s in stages:
        s.preflight()
    assert (len(reads), len(loads), len(datasets)) == (1, 1, 1)
    assert all(s.classes == [0, 1, 2] and s.classifier is inputs.classifier for s in stages)
    assert stages[0].fingerprint == stages[1].fingerprint == inputs.fingerprint


def _fake_stages(monkeypatch, fail_tokens: bool = False):
    """Stand-ins for the stages that record the order, the pool and the inputs they were given."""
    calls: list[tuple] = []

    def run_tokens(cfg, force=False, pool=None, inputs=None, **_):
        calls.append(("tokens", pool, inputs))
        return TokensSummary(stage="tokens", out=Path(cfg.out), done=1, skipped=0, seconds=0.0, rows=[],
                             failed=["0 zero: RuntimeError: out of memory"] if fail_tokens else [])

    def run_generate(cfg, baseline=False, force=False, pool=None, inputs=None, **_):
        from augment.io.rundir import RunDir

        arm = RunDir(cfg.out).arm_dir("baseline" if baseline else "token")
        make_digit_run(arm.path, per_class=1)
        calls.append(("baseline" if baseline else "generate", pool, inputs))
        return GenerateSummary(stage="generate", out=arm.path, done=1, skipped=0, failed=[], seconds=0.0,
                               classes=10, samples=10, shards=1, mean_confidence=None)

    monkeypatch.setattr("augment.tokens.runner.run_tokens", run_tokens)
    monkeypatch.setattr("augment.generate.runner.run_generate", run_generate)
    return calls


def test_build_chains_tokens_generate_baseline_on_one_pool(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch)
    seen: list[str] = []
    result = pipeline.build(Config(out=str(tmp_path / "run"), workers=0), baseline=True,
                            report=lambda s: seen.append(s.stage))
    assert [c[0] for c in calls] == ["tokens", "generate", "baseline"]
    assert len({id(c[1]) for c in calls}) == 1 and calls[0][1] is not None  # one shared pool
    assert len({id(c[2]) for c in calls}) == 1 and calls[0][2] is not None  # one RunInputs
    assert seen == ["tokens", "generate", "generate"]
    assert result.exit_code == 0 and result.stopped is None and result.verify is not None
    assert result.generate is result.stages[1]


def test_a_failed_token_stops_the_build_with_exit_code_1(tmp_path, monkeypatch):
    calls = _fake_stages(monkeypatch, fail_tokens=True)
    result = pipeline.build(Config(out=str(tmp_path / "run"), workers=0), baseline=True)
    assert [c[0] for c in calls] == ["tokens"]  # the shards need every token
    assert result.exit_code == 1 and result.failed == ["0 zero: RuntimeError: out of memory"]
    assert result.stopped == "some tokens failed; fix and re-run (done classes are kept)"
    assert result.verify is None and result.generate is None


def test_benchmark_resumes_from_its_cache_through_the_skeleton(tmp_path, monkeypatch):
    """The second run trains nothing: every cell is a done unit of the stage's plan (its cache)."""
    import augment.downstream.benchmark as bm

    out = make_digit_run(tmp_path / "run", per_class=2)
    cfg = Config(out=str(out), workers=0, dataset="digits")
    cfg.train.arch, cfg.train.epochs, cfg.train.batch_size = "test_resnet", 1, 32
    request = pipeline.BenchmarkRequest(k_values=[1], seeds=[0, 1], treatments=("real", "token"), build_missing=False,
                                        flags=pipeline.TrainFlags(samples_per_epoch=32))
    first = pipeline.benchmark(cfg, request)
    assert first.exit_code == 0 and first.grid.done == 4 and first.grid.skipped == 0
    trained = _count(monkeypatch, "augment.downstream.benchmark", "train_classifier")
    again = pipeline.benchmark(cfg, request)
    assert trained == [] and again.grid.done == 0 and again.grid.skipped == 4 and again.grid.stage == "benchmark"
    assert again.grid.result.cells == first.grid.result.cells
    run_json = out / "run.json"  # the grid writes no arm: no run.json entry
    assert not run_json.exists() or "benchmark" not in json.loads(run_json.read_text()).get("stages", {})
    assert isinstance(again.grid, bm.BenchmarkSummary)


def test_a_failed_cell_is_a_failed_unit(tmp_path, monkeypatch):
    import augment.downstream.benchmark as bm

    out = make_digit_run(tmp_path / "run", per_class=2)
    cfg = Config(out=str(out), workers=0, dataset="digits")
    cfg.train.arch, cfg.train.epochs, cfg.train.batch_size = "test_resnet", 1, 32

    def blow_up(*args, **kwargs):
        raise RuntimeError("a cell blew up")

    monkeypatch.setattr(bm, "train_classifier", blow_up)
    done = pipeline.benchmark(cfg, pipeline.BenchmarkRequest(k_values=[1], seeds=[0], treatments=("real",),
                                                             build_missing=False))
    assert done.exit_code == 1 and done.failed == ["k=1 real only seed=0: a cell blew up"]
    assert done.stopped == ("1 benchmark cell(s) failed, first: k=1 real only seed=0: a cell blew up; the 0 "
                            "finished cells are cached, re-run to retry the rest")


@pytest.mark.parametrize(("given", "natural"), [({}, False), ({"synthetic_prob": "natural"}, True),
                                               ({"synthetic_prob": "0.25"}, False)])
def test_trainer_flags_say_natural(given, natural):
    """The one flag a config value cannot hold: --synthetic-prob natural (the union's own share)."""
    from augment.cli.downstream import _trainer_flags

    flags = _trainer_flags({"hflip": 0.5, **given})
    assert flags == pipeline.TrainFlags(samples_per_epoch=None, hflip=0.5, natural=natural)
