"""tokens -> generate on micro models: resume, determinism, per-class growth, baseline arm, bad input."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from augment.config import Config, GenerateConfig, TokenConfig
from augment.errors import AugmentError
from augment.generate.runner import run_generate
from augment.io.verify import verify_run
from augment.tokens.runner import run_tokens


def micro_config(out: Path, pipe_dir: Path, clf_path: Path, **gen) -> Config:
    g = dict(prompts=["a photo of a {token} {name}"], per_class=3, steps=2, guidance_scale=3.0, shard_size=4,
             batch_size=4, image_format="png")
    g.update(gen)
    return Config(
        dataset="cub", model=str(pipe_dir), classifier=f"timm:test_resnet@{clf_path}", judge=None, out=str(out),
        workers=0, tokens=TokenConfig(batch_size=2, steps=2, max_steps=1, grad_steps=1, val_seeds=2),
        generate=GenerateConfig(**g),
    )


def _hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.tar"))}


@pytest.fixture(scope="module")
def trained_template(tmp_path_factory, micro_pipeline_dir, micro_classifier_path):
    cfg = micro_config(tmp_path_factory.mktemp("tokens") / "run", micro_pipeline_dir, micro_classifier_path)
    summary = run_tokens(cfg, show_progress=False)
    assert summary.trained == 3 and not summary.failed
    return cfg


@pytest.fixture()
def trained(trained_template, tmp_path):
    """A fresh copy of a run folder whose tokens are trained (training once per module)."""
    shutil.copytree(trained_template.out, tmp_path / "run")
    return dataclasses.replace(trained_template, out=str(tmp_path / "run"),
                               generate=dataclasses.replace(trained_template.generate))


def test_generate_resume_and_growth(trained, tmp_path):
    cfg = trained
    s = run_generate(cfg, show_progress=False)
    out = Path(cfg.out)
    assert (s.samples, s.shards, s.written) == (9, 3, 3)
    report = verify_run(out)
    assert report.ok, report.problems
    first = _hashes(out / "shards")
    table = pq.read_table(out / "manifests")
    # classes interleaved inside shards
    first_shard = [r["class_index"] for r in table.to_pylist() if r["shard"] == "synth-000000"]
    assert set(first_shard) == {0, 1, 2}
    # a re-run does nothing; deleting a shard's marker redoes exactly that shard, byte-identical
    assert run_generate(cfg, show_progress=False).written == 0
    (out / "manifests" / "synth-000001.parquet").unlink()
    s2 = run_generate(cfg, show_progress=False)
    assert s2.written == 1 and _hashes(out / "shards") == first
    # raising per-class keeps full shards and rewrites only the last partial one + new ones
    cfg.generate.per_class = 5
    s3 = run_generate(cfg, show_progress=False)
    after = _hashes(out / "shards")
    assert s3.samples == 15 and s3.written == 2  # shard 2 (was partial, 1 sample) and shard 3
    assert after["synth-000000.tar"] == first["synth-000000.tar"]
    assert after["synth-000001.tar"] == first["synth-000001.tar"]
    assert verify_run(out).ok


def test_baseline_arm_same_seeds_no_token(trained):
    s = run_generate(trained, baseline=True, show_progress=False)
    t = pq.read_table(Path(s.out) / "manifests").to_pylist()
    assert Path(s.out).name == "baseline"
    assert all(r["token"] is None and "<c" not in r["prompt"] for r in t)
    run_generate(trained, show_progress=False)
    tok = {r["key"]: r for r in pq.read_table(Path(trained.out) / "manifests").to_pylist()}
    for r in t:
        assert tok[r["key"]]["seed"] == r["seed"]
        assert tok[r["key"]]["prompt"].replace(tok[r["key"]]["token"] + " ", "") == r["prompt"]


def test_a_tokens_own_negative_prompt_is_used_in_generation(trained):
    """tokens.negative_confusers records a per-class negative prompt in tokens.parquet; the token arm
    generates that class with it (the baseline arm keeps generate.negative_prompt)."""
    from augment.io.rundir import RunDir
    from augment.io.tokens_table import read_token_rows, write_token_rows

    path = RunDir(trained.out).tokens_parquet
    rows = read_token_rows(path)
    rows[1].negative_prompt = "a photo of a bird"
    write_token_rows(path, rows)
    trained.generate.per_class = 1
    run_generate(trained, show_progress=False)
    negatives = {r["class_index"]: r["negative_prompt"] for r in pq.read_table(Path(trained.out) / "manifests").to_pylist()}
    assert negatives == {0: None, 1: "a photo of a bird", 2: None}
    base = run_generate(trained, baseline=True, show_progress=False)
    assert {r["negative_prompt"] for r in pq.read_table(Path(base.out) / "manifests").to_pylist()} == {None}


def test_min_confidence_records_attempts(trained):
    trained.generate.min_confidence = 0.99  # random micro classifier: never reached
    trained.generate.max_attempts = 2
    trained.generate.per_class = 1
    s = run_generate(trained, show_progress=False)
    rows = pq.read_table(Path(s.out) / "manifests").to_pylist()
    assert all(r["attempts"] == 2 and r["status"] == "low_confidence" for r in rows)


def test_missing_token_named(tmp_path, micro_pipeline_dir, micro_classifier_path):
    cfg = micro_config(tmp_path / "empty", micro_pipeline_dir, micro_classifier_path)
    with pytest.raises(AugmentError, match="no token for class 0 .*augment tokens"):
        run_generate(cfg, show_progress=False)


def test_bad_per_class_and_changed_run(trained):
    trained.generate.per_class = 0
    with pytest.raises(AugmentError, match="per-class must be at least 1"):
        run_generate(trained, show_progress=False)
    trained.generate.per_class = 1
    run_generate(trained, show_progress=False)
    trained.generate.prompts = ["another {token} {name}"]
    with pytest.raises(AugmentError, match="different setup"):
        run_generate(trained, show_progress=False)


def test_disk_full_mid_shard_leaves_no_half_shard_and_resumes(trained, monkeypatch):
    import augment.io.shards as shards

    real = shards.write_parquet
    calls = {"n": 0}

    def full_disk(path, rows, schema):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows, schema)

    monkeypatch.setattr(shards, "write_parquet", full_disk)
    with pytest.raises(AugmentError, match="No space left on device.*re-run"):
        run_generate(trained, show_progress=False)
    out = Path(trained.out)
    assert (out / "manifests" / "synth-000000.parquet").exists()
    assert not (out / "manifests" / "synth-000001.parquet").exists()
    monkeypatch.setattr(shards, "write_parquet", real)
    s = run_generate(trained, show_progress=False)
    assert s.written == 2 and s.skipped == 1
    assert verify_run(out).ok


def test_the_worker_needs_neither_the_run_folder_nor_the_checkpoint(trained, micro_classifier_path, tmp_path):
    """A worker node that shares no disk with the driver: its factory (pickled, as it crosses to an
    actor) carries the token vectors and the checkpoint's bytes; with the run folder and the
    checkpoint gone it writes the shard the stage writes, byte for byte, with the files' sha256."""
    import pickle

    from augment.generate.plan import plan_shards
    from augment.generate.runner import GenerateStage
    from augment.io.shards import write_shard

    (tmp_path / "clf").mkdir()
    clf = Path(shutil.copy(micro_classifier_path, tmp_path / "clf"))
    shutil.copy(micro_classifier_path.with_suffix(".json"), tmp_path / "clf")
    cfg = dataclasses.replace(trained, classifier=f"timm:test_resnet@{clf}")
    stage = GenerateStage(cfg, baseline=False)
    stage.preflight()
    factory = pickle.dumps(stage.worker_factory())
    unit = plan_shards(stage.classes, cfg.generate.per_class, cfg.generate.shard_size)[0]
    shas = {p.name[:4]: hashlib.sha256(p.read_bytes()).hexdigest() for p in (Path(cfg.out) / "tokens").glob("*.safetensors")}
    hidden = shutil.move(cfg.out, tmp_path / "hidden")
    shutil.rmtree(tmp_path / "clf")
    samples = pickle.loads(factory)().run(unit)
    write_shard(tmp_path / "remote", unit.index, samples)
    shutil.move(hidden, cfg.out)
    assert {s.meta["token_sha256"] for s in samples} == {shas[f"{s.class_index:04d}"] for s in samples}
    assert len(set(shas.values())) == 3
    (tmp_path / "clf").mkdir()  # the driver's own run, for comparison
    shutil.copy(micro_classifier_path, clf)
    shutil.copy(micro_classifier_path.with_suffix(".json"), tmp_path / "clf")
    run_generate(cfg, show_progress=False)
    assert (tmp_path / "remote" / "shards" / "synth-000000.tar").read_bytes() == \
        (Path(cfg.out) / "shards" / "synth-000000.tar").read_bytes()
