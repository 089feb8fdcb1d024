"""augment train / eval / benchmark through click's CliRunner on tiny fixtures."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from augment.cli.downstream import benchmark, eval_cmd, train
from augment.datasets.digits import DIGIT_NAMES
from tests.downstream import make_digit_run
from tests.fixtures.models import build_micro_classifier

TINY = ["--arch", "test_resnet", "--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "32", "--device", "cpu"]


@pytest.fixture()
def run(tmp_path):
    out = make_digit_run(tmp_path / "run", per_class=3, index_of=lambda c: 9 - c)
    make_digit_run(out / "baseline", per_class=3)
    return out


def test_train_end_to_end(tmp_path, run):
    out = tmp_path / "train"
    res = CliRunner().invoke(train, [*TINY, "--real-k", "2", "--synthetic", str(run), "--synthetic", str(run / "baseline"),
                                     "--synthetic-prob", "0.3", "--synthetic-weight", "0.5", "--min-confidence", "0.5",
                                     "--seed", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "20 real" in res.output and "60 synthetic" in res.output and "test top-1" in res.output
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["final"]["top1"] <= m["final"]["top5"] <= 1
    assert set(m["final"]["per_class_top1"]) == set(DIGIT_NAMES) and m["class_names"] == DIGIT_NAMES
    assert sum(map(sum, m["final"]["confusion_matrix"])) == 450 == m["test"]["n"]
    assert m["data"]["synthetic_prob"] == 0.3 and m["data"]["synthetic_weight"] == 0.5
    assert [s["kept"] for s in m["data"]["synthetic_sets"]] == [30, 30]
    assert m["config"]["real_k"] == 2 and m["config"]["seed"] == 1 and m["config"]["train"]["epochs"] == 1
    assert m["config"]["synthetic"] == [str(run), str(run / "baseline")]
    assert (out / "best.safetensors").exists() and json.loads((out / "best.json").read_text())["class_names"] == DIGIT_NAMES


def test_train_default_output_folder_and_natural_prob(run):
    res = CliRunner().invoke(train, [*TINY, "--real-k", "1", "--synthetic", str(run), "--synthetic-prob", "natural"])
    assert res.exit_code == 0, res.output
    out = run / "train" / "k1-run-seed0"
    assert json.loads((out / "metrics.json").read_text())["data"]["effective_synthetic_prob"] == pytest.approx(30 / 40)


@pytest.mark.parametrize(("args", "message"), [
    (["--real-k", "5000"], "smallest class"),
    (["--real-k", "1", "--synthetic", "{bad}"], "'nul' (class 0)"),
    (["--real-k", "1", "--synthetic", "{run}", "--min-confidence", "0.99"], "30 of 30 dropped"),
    (["--real-k", "1", "--split", "val"], "no real split 'val'"),
    (["--real-k", "1", "--test-split", "val"], "no real split 'val'"),
    (["--real-k", "1", "--arch", "nonet"], "unknown timm architecture"),
    (["--real-k", "1", "--synthetic-prob", "lots"], "--synthetic-prob"),
])
def test_train_bad_input_is_one_line_exit_2(tmp_path, run, args, message):
    bad = make_digit_run(tmp_path / "bad", per_class=1, names=["nul", *DIGIT_NAMES[1:]])
    args = [a.format(bad=bad, run=run) for a in args]
    res = CliRunner().invoke(train, [*TINY, *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert message in res.output and "Traceback" not in res.output


def test_eval_prints_and_writes_the_table(tmp_path, run):
    clf = build_micro_classifier(tmp_path / "clf.safetensors", DIGIT_NAMES)
    res = CliRunner().invoke(eval_cmd, [str(run), "--eval-classifier", f"timm:test_resnet@{clf}", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "| token | 30 |" in res.output and "| baseline | 30 |" in res.output and "not Inception" in res.output
    assert "warning: FID/KID of token from 30 images against" in res.output  # fewer than 50: said, still scored
    data = json.loads((run / "report" / "eval.json").read_text())
    assert all(0 <= r["top1"] <= 1 for r in data["accuracy"])
    assert (run / "report" / "eval.md").exists()


def test_benchmark_cli(run):
    res = CliRunner().invoke(benchmark, [*TINY, "--out", str(run), "--k", "0,1", "--seeds", "1", "--workers", "0",
                                         "--arm", "real", "--arm", "token", "--arm", "token:conf=0.5,w=0.5"])
    assert res.exit_code == 0, res.output
    assert "inline" in res.output
    assert "real only" in res.output and "–" in res.output and "benchmark.json" in res.output
    data = json.loads((run / "report" / "benchmark.json").read_text())
    assert data["seeds"] == [0] and data["k_values"] == [0, 1] and len(data["cells"]) == 5


def test_benchmark_without_baseline_arm(tmp_path):
    out = make_digit_run(tmp_path / "run", per_class=1)
    res = CliRunner().invoke(benchmark, [*TINY, "--out", str(out), "--k", "1", "--seeds", "1", "--no-build"])
    assert res.exit_code == 2 and "augment build --baseline" in res.output


def test_benchmark_builds_only_the_missing_arm(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import augment.generate.runner as generate_runner
    import augment.tokens.runner as tokens_runner

    out = make_digit_run(tmp_path / "run", per_class=3)  # token arm present, no baseline arm
    calls = []

    def fake_generate(cfg, baseline=False, **_):
        calls.append(("generate", baseline, cfg.out))
        make_digit_run(tmp_path / "run" / "baseline", per_class=3)
        return SimpleNamespace(failed=[])

    monkeypatch.setattr(generate_runner, "run_generate", fake_generate)
    monkeypatch.setattr(tokens_runner, "run_tokens", lambda cfg, **_: calls.append(("tokens",)) or SimpleNamespace(failed=[]))
    res = CliRunner().invoke(benchmark, [*TINY, "--out", str(out), "--k", "1", "--seeds", "1", "--workers", "0",
                                         "--arm", "real", "--arm", "baseline", "--arm", "token"])
    assert res.exit_code == 0, res.output
    assert "baseline arm missing" in res.output
    assert calls == [("generate", True, str(out))]  # the token arm was there: no tokens, no token shards
    data = json.loads((out / "report" / "benchmark.json").read_text())
    assert {c["arm"] for c in data["cells"]} == {"real only", "real + baseline synthetic (p=0.5)",
                                                 "real + token synthetic (p=0.5)"}


@pytest.mark.parametrize(("victim", "damage"), [
    ("manifests/synth-000000.parquet", lambda data: data[: len(data) // 2]),  # truncated
    ("manifests/synth-000001.parquet", lambda data: b""),  # empty
    ("shards/synth-000000.tar", lambda data: data[: len(data) // 2]),  # truncated mid-sample
    ("shards/synth-000001.tar", lambda data: data[:1024] + bytes(len(data) - 1024)),  # zeroed after a header
])
def test_train_on_a_corrupt_shard_or_manifest_names_the_file(tmp_path, run, victim, damage):
    path = run / victim
    path.write_bytes(damage(path.read_bytes()))
    res = CliRunner().invoke(train, [*TINY, "--real-k", "1", "--synthetic", str(run), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and str(path) in lines[0] and "augment verify" in lines[0], res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("command", ["train", "benchmark"])
def test_train_and_benchmark_into_a_locked_run_are_refused(run, command):
    from tests.io.test_lock import hold_lock

    holder = hold_lock(run)
    try:
        args = ["--real-k", "1", "--synthetic", str(run)] if command == "train" else [
            "--out", str(run), "--k", "1", "--seeds", "1", "--workers", "0", "--no-build"]
        res = CliRunner().invoke(train if command == "train" else benchmark, [*TINY, *args])
    finally:
        holder.kill()
        holder.wait()
    assert res.exit_code == 2, res.output
    assert f"is being written by PID {holder.pid}" in res.output and "Traceback" not in res.output
    assert not (run / "train").exists() and not (run / "report").exists()
