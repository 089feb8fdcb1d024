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

    def flaky(self, prompts, seeds, grad):
        if any("dog" in p for p in prompts):
            return torch.full((len(prompts), 3), float("nan"), requires_grad=True)
        return real(self, prompts, seeds, grad)

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
