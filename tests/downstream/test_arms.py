"""augment.pipeline.build_missing_arms: only the arms a run folder lacks are built, tokens before the token arm."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from augment.config import Config
from augment.downstream.arms import missing_arms
from augment.io.rundir import RunDir
from augment.pipeline import build_missing_arms
from tests.downstream import make_digit_run


@pytest.fixture()
def stages(monkeypatch, tmp_path):
    """Fake token and generate stages that record their calls and write the arm they make."""
    import augment.generate.runner as generate_runner
    import augment.tokens.runner as tokens_runner

    calls: list[tuple] = []
    failed: dict[str, list[str]] = {}

    def fake_generate(cfg, baseline=False, **_):
        arm = "baseline" if baseline else "token"
        calls.append(("generate", arm))
        if not failed.get(arm):
            make_digit_run(RunDir(cfg.out).arm_dir(arm).path, per_class=1)
        return SimpleNamespace(failed=failed.get(arm, []))

    def fake_tokens(cfg, **_):
        calls.append(("tokens",))
        return SimpleNamespace(failed=failed.get("tokens", []))

    monkeypatch.setattr(generate_runner, "run_generate", fake_generate)
    monkeypatch.setattr(tokens_runner, "run_tokens", fake_tokens)
    return SimpleNamespace(calls=calls, failed=failed)


def test_builds_only_the_missing_arm(tmp_path, stages):
    run = RunDir(make_digit_run(tmp_path / "run", per_class=1))  # token arm present
    messages: list[str] = []
    built = build_missing_arms(Config(out=str(run)), run, ["real", "baseline:conf=0.9", "token"], messages.append)
    assert built.built == ["baseline"] and built.exit_code == 0 and stages.calls == [("generate", "baseline")]
    assert messages == [f"benchmark: baseline arm missing in {run}; building it first "
                        "(as `augment build --baseline`; --no-build refuses instead)"]
    assert missing_arms(run, ["baseline", "token"]) == []
    assert build_missing_arms(Config(out=str(run)), run, ["baseline"], messages.append).built == [] and len(messages) == 1


def test_empty_run_gets_tokens_then_both_arms(tmp_path, stages):
    run = RunDir(tmp_path / "run")
    assert build_missing_arms(Config(out=str(run)), run, ["token", "baseline"], lambda m: None).built == ["baseline", "token"]
    assert stages.calls == [("tokens",), ("generate", "baseline"), ("generate", "token")]


def test_a_failed_stage_stops_the_build(tmp_path, stages):
    run = RunDir(tmp_path / "run")
    stages.failed["tokens"] = ["0003-three: out of memory"]
    chain = build_missing_arms(Config(out=str(run)), run, ["token", "baseline"], lambda m: None)
    assert chain.exit_code == 1 and chain.stopped.startswith("1 token(s) failed, first: 0003-three")
    assert stages.calls == [("tokens",)]  # the shards need every token: the chain stops
    stages.failed.clear()
    stages.failed["baseline"] = ["synth-000000"]
    chain = build_missing_arms(Config(out=str(run)), run, ["baseline"], lambda m: None)
    assert chain.exit_code == 1 and chain.failed == ["synth-000000"] and "baseline arm: 1 shard" in chain.stopped


def test_caso_arm_is_built_per_draw_from_exactly_its_reals(tmp_path, fake_cub, micro_pipeline_dir,
                                                           micro_classifier_path):
    """Each (k, seed) draw gets its own caso arm (the real stage, micro models) whose edits are of
    exactly that draw's reals, the ones the benchmark's cells of that draw train on; k=0 gets none."""
    import pyarrow.parquet as pq

    from augment.config import CasoConfig
    from augment.downstream.arms import missing_draws
    from augment.models.labels import load_dataset

    run = RunDir(tmp_path / "run")
    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(run), workers=0,
                 caso=CasoConfig(k=5, max_steps=1, edit_steps=2))
    draws = [(0, 0), (1, 0), (2, 1)]
    assert missing_draws(run, ["token"], draws) == []
    assert missing_draws(run, ["token+caso"], draws) == [(1, 0), (2, 1)]
    assert build_missing_arms(cfg, run, ["caso"], lambda m: None, draws=draws).built == ["caso"]
    dataset = load_dataset(cfg)
    for k, seed in [(1, 0), (2, 1)]:
        rows = pq.read_table(run.caso_draw(k, seed).manifests).to_pylist()
        assert sorted(r["source_key"] for r in rows) == sorted(f"cub:train:{s.ref}" for s in dataset.kshot(k, seed))
    assert not run.caso_draw(0, 0).path.exists() and not run.arm_dir("caso").manifests.exists()
    assert missing_draws(run, ["caso"], draws) == []
