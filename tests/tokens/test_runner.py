"""The tokens stage: files, tokens.parquet, resume after a crash, --force, sanitised names, failures."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from augment.config import Config, GenerateConfig, TokenConfig
from augment.errors import AugmentError
from augment.io.rundir import RunDir
from augment.tokens.runner import run_tokens


def _cfg(out: Path, pipe_dir: Path, clf: Path, **tok) -> Config:
    t = dict(batch_size=2, steps=2, max_steps=1, grad_steps=1, val_seeds=2, acc_threshold=1.1)
    t.update(tok)
    return Config(dataset="cub", model=str(pipe_dir), classifier=f"timm:test_resnet@{clf}", judge=None, out=str(out),
                  workers=0, tokens=TokenConfig(**t), generate=GenerateConfig())


def test_outputs_resume_and_force(tmp_path, micro_pipeline_dir, micro_classifier_path):
    cfg = _cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    s = run_tokens(cfg, show_progress=False)
    assert (s.trained, s.skipped, s.failed) == (3, 0, [])
    files = sorted((tmp_path / "run" / "tokens").glob("*.safetensors"))
    assert [f.name for f in files] == ["0000-cat.safetensors", "0001-dog.safetensors", "0002-bird.safetensors"]
    rows = pq.read_table(tmp_path / "run" / "tokens" / "tokens.parquet").to_pylist()
    assert [r["token"] for r in rows] == ["<c0000>", "<c0001>", "<c0002>"]
    assert all(r["status"] == "ok" and r["init_token"] in ("cat", "dog", "bird") and len(r["seeds"]) == 2 for r in rows)
    assert all(r["final_val_accuracy"] >= r["init_val_accuracy"] and r["n_vectors"] == 1 for r in rows)
    history = json.loads(RunDir(tmp_path / "run").token_history(1, "dog").read_text())
    assert history["token"] == "<c0001>" and len(history["steps"]) == 1
    assert [v["step"] for v in history["validations"]] == [0, 1]
    # a crash after class 0 and 2 were written: only class 1 is redone
    mtime0 = files[0].stat().st_mtime_ns
    files[1].unlink()
    s2 = run_tokens(cfg, show_progress=False)
    assert (s2.trained, s2.skipped) == (1, 2)
    assert files[1].exists() and files[0].stat().st_mtime_ns == mtime0
    assert len(pq.read_table(tmp_path / "run" / "tokens" / "tokens.parquet")) == 3
    # --force retrains everything
    assert run_tokens(cfg, force=True, show_progress=False).trained == 3


def test_class_selection_and_changed_settings(tmp_path, micro_pipeline_dir, micro_classifier_path):
    cfg = _cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    cfg.classes = "1"
    assert run_tokens(cfg, show_progress=False).trained == 1
    assert [p.name for p in (tmp_path / "run" / "tokens").glob("*.safetensors")] == ["0001-dog.safetensors"]
    cfg.tokens.lr = 0.5
    with pytest.raises(AugmentError, match="different setup.*tokens.lr"):
        run_tokens(cfg, show_progress=False)
    cfg.classes = "5"
    with pytest.raises(AugmentError, match="out of range"):
        run_tokens(cfg, force=True, show_progress=False)


def test_slugs_never_escape_the_tokens_folder(tmp_path):
    run = RunDir(tmp_path)
    for name in ("../../etc/passwd", "a/b\\c", "..", "", "St. Bernard's dog"):
        path = run.token_file(7, name).resolve()
        assert path.parent == (tmp_path / "tokens").resolve()
        assert path.name.startswith("0007-") and path.name.endswith(".safetensors")


def test_failed_class_recorded_and_others_carry_on(tmp_path, micro_pipeline_dir, micro_classifier_path, monkeypatch):
    from augment.tokens import disco

    real = disco.DiscoTrainer._forward

    def flaky(self, prompts, seeds, grad, *args, **kwargs):
        if any("dog" in p for p in prompts):
            return torch.full((len(prompts), 3), float("nan"), requires_grad=True)
        return real(self, prompts, seeds, grad, *args, **kwargs)

    monkeypatch.setattr(disco.DiscoTrainer, "_forward", flaky)
    cfg = _cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    s = run_tokens(cfg, show_progress=False)
    assert s.trained == 2 and len(s.failed) == 1 and "dog" in s.failed[0]
    rows = {r["class_name"]: r for r in pq.read_table(tmp_path / "run" / "tokens" / "tokens.parquet").to_pylist()}
    assert rows["dog"]["status"] == "failed" and "nan" in rows["dog"]["error"].lower()
    assert not RunDir(tmp_path / "run").token_file(1, "dog").exists()


def test_retrained_model_under_the_same_name_is_refused(tmp_path, micro_pipeline_dir, micro_classifier_path):
    import shutil

    pipe = tmp_path / "pipe"
    shutil.copytree(micro_pipeline_dir, pipe)
    cfg = _cfg(tmp_path / "run", pipe, micro_classifier_path)
    cfg.classes = "0"
    run_tokens(cfg, show_progress=False)
    weights = pipe / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[min(len(data) - 1, 100_000)] ^= 0xFF  # same size and name, other weights (in the hashed first MiB)
    weights.write_bytes(bytes(data))
    with pytest.raises(AugmentError, match="model_fingerprint"):
        run_tokens(cfg, show_progress=False)


#: run the tokens stage, dying (as a SIGKILL would) right after class 1's token file is renamed
#: into place and before its tokens.parquet row is written
CRASH_BETWEEN_FILE_AND_ROW = """
import os, sys
from pathlib import Path
from augment.tokens import runner
from tests.tokens.test_runner import _cfg

record = runner.TokensStage._record
def crash(self, row):
    if row.class_index == 1:
        assert self.token_file(1).exists()
        os._exit(137)
    record(self, row)
runner.TokensStage._record = crash
runner.run_tokens(_cfg(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])), show_progress=False)
"""


def test_a_kill_between_token_file_and_row_is_repaired_on_resume(tmp_path, micro_pipeline_dir, micro_classifier_path):
    import subprocess
    import sys

    from augment.verify import verify_run

    out = tmp_path / "run"
    crashed = subprocess.run([sys.executable, "-c", CRASH_BETWEEN_FILE_AND_ROW, str(out), str(micro_pipeline_dir),
                              str(micro_classifier_path)], capture_output=True, text=True, timeout=300,
                             env={**__import__("os").environ, "PYTHONPATH": ":".join(sys.path)})
    assert crashed.returncode == 137, crashed.stderr[-2000:]
    assert (out / "tokens" / "0001-dog.safetensors").exists()
    assert sorted(r["class_index"] for r in pq.read_table(out / "tokens" / "tokens.parquet").to_pylist()) == [0]
    assert any("not listed in tokens.parquet" in p for p in verify_run(out).problems)  # the state the kill left
    s = run_tokens(_cfg(out, micro_pipeline_dir, micro_classifier_path), show_progress=False)
    assert (s.trained, s.skipped, s.failed) == (2, 1, [])  # class 1's file without its row is not done
    assert verify_run(out).problems == []
    # a token file that is not the one its row lists (changed after the row) is not done either
    (out / "tokens" / "0002-bird.safetensors").write_bytes((out / "tokens" / "0000-cat.safetensors").read_bytes())
    s = run_tokens(_cfg(out, micro_pipeline_dir, micro_classifier_path), show_progress=False)
    assert (s.trained, s.skipped) == (1, 2) and verify_run(out).problems == []


def test_token_files_are_world_readable_like_every_output(tmp_path, micro_pipeline_dir, micro_classifier_path):
    import os

    run_tokens(_cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path, max_steps=0), show_progress=False)
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in (tmp_path / "run" / "tokens").rglob("*") if p.is_file()]  # history/ too
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in files}
    assert len(modes) == 7 and set(modes.values()) == {0o666 & ~mask}, modes


def _classifier_named(tmp_path: Path, names: list[str]) -> Path:
    """The micro classifier's architecture with ``names`` as its label map (class names come from it)."""
    from tests.fixtures.models import build_micro_classifier

    tmp_path.mkdir(parents=True, exist_ok=True)
    return build_micro_classifier(tmp_path / "named-clf.safetensors", names)


HOSTILE_NAMES = ["../../escaped", "/etc/passwd", "nul\x00byte", "x" * 300, "狐狸 ünïcode"]


def test_hostile_class_names_never_write_outside_the_run_folder(tmp_path, micro_pipeline_dir):
    clf = _classifier_named(tmp_path / "clf", HOSTILE_NAMES)
    before = {p for p in tmp_path.rglob("*")}
    out = tmp_path / "deep" / "run"
    s = run_tokens(_cfg(out, micro_pipeline_dir, clf, max_steps=0), show_progress=False)
    assert (s.trained, s.failed) == (5, [])
    written = {p for p in tmp_path.rglob("*")} - before
    assert written and all(p == out.parent or out in p.parents or p == out for p in written), sorted(written)
    files = sorted(p.name for p in (out / "tokens").glob("*.safetensors"))
    assert len(files) == 5 and all(len(f) < 80 and f.isascii() and "/" not in f for f in files)
    assert [r["class_name"] for r in pq.read_table(out / "tokens" / "tokens.parquet").to_pylist()] == HOSTILE_NAMES


def test_a_class_name_holding_a_token_string_is_refused(tmp_path, micro_pipeline_dir):
    clf = _classifier_named(tmp_path, ["cat", "dog <c0000>", "bird"])
    with pytest.raises(AugmentError, match=r"class 1 name 'dog <c0000>' contains '<c0000>'"):
        run_tokens(_cfg(tmp_path / "run", micro_pipeline_dir, clf), show_progress=False)
    assert not (tmp_path / "run").exists()


def test_a_killed_token_write_is_cleaned_by_the_resume(tmp_path, micro_pipeline_dir, micro_classifier_path):
    """kill -9 while a token file (or tokens.parquet) was being written leaves its temp file; the
    re-run removes it, or verify would fail the folder for good (issue 13, kill harness)."""
    from augment.io.atomic import temp_path_for
    from augment.verify import verify_run

    cfg = _cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path, max_steps=1)
    cfg.classes = "0"
    run_tokens(cfg, show_progress=False)
    tokens = tmp_path / "run" / "tokens"
    for name in ("0001-dog.safetensors", "tokens.parquet"):
        temp_path_for(tokens / name).write_bytes(b"cut short")
    assert not verify_run(tmp_path / "run").ok
    cfg.classes = "0,1"
    assert run_tokens(cfg, show_progress=False).trained == 1
    assert verify_run(tmp_path / "run").ok


def test_a_token_stage_leaves_the_hosts_pipeline_as_a_fresh_load(tmp_path, micro_pipeline_dir, micro_classifier_path):
    """The host's cached pipeline after a token worker trained two classes: the same tokenizer (its
    length and vocabulary) and the same embedding table, byte for byte, as a pipeline just loaded,
    so the next stage on that host starts from what a fresh load gives."""
    from functools import partial

    from augment.distributed import WorkerHost
    from augment.models.backbone import load_backbone
    from augment.models.classifier import read_classifier_source
    from augment.shipping import Payload
    from augment.tokens.runner import make_worker

    cfg = _cfg(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    host = WorkerHost()
    factory = partial(make_worker, cfg.to_dict(), ["cat", "dog", "bird"], Payload(read_classifier_source(cfg.classifier)))
    assert [host.run(1, factory, c).status for c in (0, 1)] == ["ok", "ok"]
    cached = host.cache.backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
    assert host.cache.loads == 2  # the stage's backbone and classifier, nothing loaded again above
    fresh = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
    assert len(cached.tokenizer) == len(fresh.tokenizer)
    assert cached.tokenizer.get_vocab() == fresh.tokenizer.get_vocab()
    assert cached.text_encoder.config.vocab_size == fresh.text_encoder.config.vocab_size
    assert torch.equal(cached.text_encoder.get_input_embeddings().weight, fresh.text_encoder.get_input_embeddings().weight)


def test_a_multi_token_initialiser_exits_2_on_the_driver_before_any_model_loads(
        tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path, monkeypatch):
    """Issue 19: the initialiser's single-token check ran on the worker after the model loaded
    (minutes into a cluster run); the driver checks it with the tokenizer alone, before run.json."""
    from click.testing import CliRunner

    from augment.cli import cli
    from augment.models.cache import ModelCache

    def no_load(*args, **kwargs):
        pytest.fail("a model loaded before the initialiser was checked")

    monkeypatch.setattr(ModelCache, "backbone", no_load)
    monkeypatch.setattr(ModelCache, "classifier", no_load)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["tokens", "--dataset", "cub", "--data-root", str(fake_cub), "--model",
                                      str(micro_pipeline_dir), "--classifier",
                                      f"timm:test_resnet@{micro_classifier_path}", "--out", str(out),
                                      "--workers", "0", "--set", "tokens.init_token=zz qx"], prog_name="augment")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    assert "initialiser 'zz qx' is not a single token" in lines[0]
    assert not (out / "run.json").exists() and not (out / "tokens").exists()
