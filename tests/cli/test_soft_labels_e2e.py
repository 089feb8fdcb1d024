"""End to end through the real `augment` executable on the embedded default: rejection sampling
with its acceptance report, soft labels in the shards, and training / benchmarking on them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

SMALL = """
tokens:
  max_steps: 1
  batch_size: 2
  steps: 4
generate:
  per_class: 3
  steps: 6
  shard_size: 6
  batch_size: 6
  soft_labels: 3
"""


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, "-m", "augment", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_rejection_soft_labels_and_distillation_through_the_cli(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    out = tmp_path / "run"
    common = ("--config", "small.yaml", "--out", str(out), "--classes", "0,1", "--workers", "0")
    r = _run("tokens", *common, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run("generate", *common, "--min-confidence", "0.5", "--max-attempts", "3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "acceptance at guide confidence >= 0.5" in r.stdout and "zero " in r.stdout
    report = json.loads((out / "acceptance.json").read_text())
    assert [c["class_name"] for c in report["classes"]] == ["zero", "one"]
    rows = pq.read_table(out / "manifests").to_pylist()
    assert report["total"]["accepted"] == len(rows) > 0
    assert all(r["guide_confidence"] >= 0.5 - 1e-6 and len(r["soft_classes"]) == 3 for r in rows)
    assert _run("verify", str(out), cwd=tmp_path).returncode == 0

    tiny = ("--epochs", "1", "--samples-per-epoch", "64", "--arch", "test_resnet")
    r = _run("train", "--synthetic", str(out), "--real-k", "1", "--distill", "--distill-temperature", "2",
             "--out", str(tmp_path / "trained"), *tiny, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "soft labels at T=2" in r.stdout
    metrics = json.loads((tmp_path / "trained" / "metrics.json").read_text())
    assert metrics["data"]["distill_temperature"] == 2.0
    r = _run("benchmark", "--out", str(out), "--arm", "token", "--arm", "token:distill", "--k", "0", "--seeds", "1",
             "--workers", "0", "--no-build", *tiny, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "distilled T=1" in (out / "report" / "benchmark.md").read_text()
