"""End to end through the real `augment` executable on the embedded default (small settings).

One build with Ray workers (tokens, generate, baseline, verify), then a generate killed with
SIGKILL mid-run and re-run, which must give byte-identical shards to the uninterrupted run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

AUGMENT = [sys.executable, "-m", "augment"]
SMALL = """
tokens:
  max_steps: 2
  batch_size: 4
  val_seeds: 4
  steps: 5
generate:
  per_class: 4
  steps: 10
  shard_size: 8
  batch_size: 8
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    return env


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*AUGMENT, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=900)


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


@pytest.mark.slow
def test_build_then_kill_and_resume(tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    a = tmp_path / "A"
    r = _run("build", "--config", "small.yaml", "--out", str(a), "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "40 samples" in r.stdout and "verify:    ok" in r.stdout
    assert len(list((a / "tokens").glob("*.safetensors"))) == 10
    assert pq.read_table(a / "manifests").num_rows == 40
    assert pq.read_table(a / "baseline" / "manifests").num_rows == 40
    assert _run("verify", str(a), cwd=tmp_path).returncode == 0
    reference = _hashes(a / "shards")
    assert len(reference) == 5

    # same tokens, fresh generate: SIGKILL once the first shard is done, then the same command again
    b = tmp_path / "B"
    shutil.copytree(a / "tokens", b / "tokens")  # token files, tokens.parquet and history/
    cmd = [*AUGMENT, "generate", "--config", "small.yaml", "--out", str(b), "--workers", "2"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list((b / "manifests").glob("*.parquet")):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((b / "manifests").glob("*.parquet")))
    assert 1 <= done_before < 5, "the kill must land mid-run"
    r = _run("generate", "--config", "small.yaml", "--out", str(b), "--workers", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{done_before} already done" in r.stdout
    assert _hashes(b / "shards") == reference
    assert _run("verify", str(b), cwd=tmp_path).returncode == 0

    # a tampered shard is caught
    victim = b / "shards" / "synth-000002.tar"
    data = bytearray(victim.read_bytes())
    data[2000] ^= 0xFF
    victim.write_bytes(bytes(data))
    bad = _run("verify", str(b), cwd=tmp_path)
    assert bad.returncode == 1 and "synth-000002" in bad.stderr
