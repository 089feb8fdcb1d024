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
from augment.generate.rejection import stream_seed
from augment.generate.runner import run_generate
from augment.tokens.runner import run_tokens
from augment.verify import verify_run


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


def test_soft_labels_in_manifest_and_sidecar(trained):
    """Every sample carries the guide's top-k (here k=2 of 3 classes) in its manifest row and its
    <key>.json, most probable first, probabilities rounded to 6 decimals; k >= classes gives all."""
    import json

    import webdataset as wds

    trained.generate.soft_labels = 2
    s = run_generate(trained, show_progress=False)
    rows = pq.read_table(Path(s.out) / "manifests").to_pylist()
    for r in rows:
        assert len(r["soft_classes"]) == len(r["soft_probs"]) == 2
        assert r["soft_classes"][0] == r["guide_pred"]
        assert r["soft_probs"] == sorted(r["soft_probs"], reverse=True)
        top_target = dict(zip(r["soft_classes"], r["soft_probs"], strict=True)).get(r["class_index"])
        if top_target is not None:
            assert abs(top_target - r["guide_confidence"]) < 1e-6
    side = {x["__key__"]: json.loads(x["json"]) for x in wds.WebDataset(
        sorted(str(p) for p in (Path(s.out) / "shards").glob("*.tar")), shardshuffle=False, empty_check=False)}
    for r in rows:
        doc = side[r["key"]]
        assert doc["soft_classes"] == r["soft_classes"]
        assert all(round(p, 6) == p for p in doc["soft_probs"])
        assert [abs(a - b) < 1e-6 for a, b in zip(doc["soft_probs"], r["soft_probs"], strict=True)] == [True, True]
    full = dataclasses.replace(trained, out=str(Path(trained.out).parent / "full"),
                               generate=dataclasses.replace(trained.generate, soft_labels=10, per_class=1))
    shutil.copytree(Path(trained.out) / "tokens", Path(full.out) / "tokens")
    rows = pq.read_table(Path(run_generate(full, show_progress=False).out) / "manifests").to_pylist()
    assert all(sorted(r["soft_classes"]) == [0, 1, 2] and abs(sum(r["soft_probs"]) - 1) < 1e-5 for r in rows)


def _confidences(cfg) -> dict[int, float]:
    """The guide's confidence of every draw of shard 0's attempt streams, computed directly."""
    from augment.generate.plan import plan_shards
    from augment.generate.rejection import stream_seed
    from augment.generate.runner import GenerateStage

    stage = GenerateStage(cfg, baseline=False)
    stage.preflight()
    worker = stage.worker_factory()()
    unit = plan_shards(stage.classes, cfg.generate.per_class, cfg.generate.shard_size)[0]
    draws = [(c, d, stream_seed(cfg.seed, c, unit.index, d)) for c in stage.classes for d in range(8)]
    return {(c, d): r.confidence for (c, d, _), r in zip(draws, worker.draw(draws), strict=True)}


def test_rejection_sampling_fills_slots_from_class_streams(trained, tmp_path):
    """Under --min-confidence each class draws from its own seed stream until its slots are full or
    its budget (max_attempts x slots) is spent; the kept images are the first accepted draws, the
    acceptance per class is in the summary and in acceptance.json, and the shard bytes do not
    depend on the batch size or on a resume."""
    import json

    trained.generate.per_class = 2
    trained.generate.shard_size = 6  # one shard: 2 slots per class
    trained.generate.max_attempts = 4
    conf = _confidences(trained)
    threshold = sorted(conf.values())[len(conf) // 2]  # about half the draws pass
    trained.generate.min_confidence = threshold
    s = run_generate(trained, show_progress=False)
    out = Path(s.out)
    rows = pq.read_table(out / "manifests").to_pylist()
    by_class: dict[int, list[dict]] = {}
    for r in rows:
        by_class.setdefault(r["class_index"], []).append(r)
    for c in (0, 1, 2):
        accepted = [d for d in range(8) if conf[c, d] >= threshold]
        kept = by_class.get(c, [])
        expect = [d for d in accepted if d < 8][:2]
        assert [r["sample_index"] for r in kept] == [0, 1][: len(expect)]
        assert all(r["guide_confidence"] >= threshold - 1e-6 for r in kept)
        attempts = expect[-1] + 1 if len(expect) == 2 else 8
        assert sum(r["attempts"] for r in kept) == (expect[-1] + 1 if expect else 0)
        stats = next(a for a in s.acceptance.classes if a.class_index == c)
        assert (stats.slots, stats.accepted, stats.attempts) == (2, len(expect), attempts)
    doc = json.loads((out / "acceptance.json").read_text())
    assert doc["min_confidence"] == threshold and [c["class_name"] for c in doc["classes"]] == s.class_names
    assert doc["total"]["accepted"] == len(rows) == s.samples
    assert verify_run(out).ok
    first = _hashes(out / "shards")
    # the shard redone from scratch (a resume after its marker was lost): the same draws, the same bytes
    (out / "manifests" / "synth-000000.parquet").unlink()
    assert run_generate(trained, show_progress=False).written == 1
    assert _hashes(out / "shards") == first
    assert run_generate(trained, show_progress=False).written == 0  # done: resumed, not redrawn


def test_rejection_with_nothing_accepted_fails_the_shard_without_writing(trained):
    trained.generate.min_confidence = 0.999  # the random micro classifier never gets there
    trained.generate.max_attempts = 1
    trained.generate.per_class = 1
    s = run_generate(trained, show_progress=False)
    assert s.exit_code == 1 and "lower --min-confidence or raise --max-attempts" in s.failed[0]
    assert not list((Path(s.out) / "shards").glob("*.tar"))
    assert s.acceptance is None and s.samples == 0  # no shard done: nothing drawn is on record


def test_missing_token_named(tmp_path, micro_pipeline_dir, micro_classifier_path):
    cfg = micro_config(tmp_path / "empty", micro_pipeline_dir, micro_classifier_path)
    with pytest.raises(AugmentError, match="no token for class 0 .*augment tokens"):
        run_generate(cfg, show_progress=False)


def test_bad_per_class_and_changed_run(trained):
    trained.generate.per_class = 0
    with pytest.raises(AugmentError, match=r"per_class \(--per-class\) must be from 1"):
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

    def full_disk(path, rows, schema, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows, schema, metadata)

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

    from augment.distributed import torch_threads
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
    with torch_threads(cfg.threads):  # what the stage gives a unit
        samples = pickle.loads(factory)().run(unit).samples
    write_shard(tmp_path / "remote", unit.index, samples)
    shutil.move(hidden, cfg.out)
    assert {s.meta.token_sha256 for s in samples} == {shas[f"{s.class_index:04d}"] for s in samples}
    assert len(set(shas.values())) == 3
    (tmp_path / "clf").mkdir()  # the driver's own run, for comparison
    shutil.copy(micro_classifier_path, clf)
    shutil.copy(micro_classifier_path.with_suffix(".json"), tmp_path / "clf")
    run_generate(cfg, show_progress=False)
    assert (tmp_path / "remote" / "shards" / "synth-000000.tar").read_bytes() == \
        (Path(cfg.out) / "shards" / "synth-000000.tar").read_bytes()


def test_a_truncated_or_empty_manifest_or_shard_is_redone(trained):
    out = Path(trained.out)
    assert run_generate(trained, show_progress=False).written == 3
    reference = _hashes(out / "shards")
    manifest = out / "manifests" / "synth-000000.parquet"
    manifest.write_bytes(manifest.read_bytes()[:100])  # truncated
    (out / "manifests" / "synth-000001.parquet").write_bytes(b"")  # empty
    shard = out / "shards" / "synth-000002.tar"
    shard.write_bytes(shard.read_bytes()[:1500])  # cut inside its first sample
    s = run_generate(trained, show_progress=False)
    assert (s.written, s.skipped, s.failed) == (3, 0, [])
    assert _hashes(out / "shards") == reference
    assert verify_run(out).ok


def _swap_token(trained, write) -> Path:
    """Replace class 1's token file by what ``write(path)`` writes; returns its path."""
    path = Path(trained.out) / "tokens" / "0001-dog.safetensors"
    path.unlink()
    write(path)
    return path


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: shutil.copy(p.parent / "0000-cat.safetensors", p), r"holds the token '<c0000>', expected '<c0001>'"),
    (lambda p: __import__("augment.tokens.textual_inversion").tokens.textual_inversion.save_token(
        p, "<c0001>", __import__("torch").zeros(1, 7)), r"shape \[1, 7\], expected \[1, \d+\]"),
    (lambda p: __import__("safetensors.torch").torch.save_file({"<c0001>": __import__("torch").tensor(1.0)}, str(p)),
     r"shape \[\]; a token file holds \[1, D\]"),
])
def test_a_wrong_token_file_is_refused_naming_it(trained, write, message):
    path = _swap_token(trained, write)
    with pytest.raises(AugmentError, match=message) as e:
        run_generate(trained, show_progress=False)
    assert str(path) in e.value.message and "\n" not in e.value.message
    assert not (Path(trained.out) / "shards").exists()  # refused before anything was written


def test_the_worker_reports_images_as_they_finish(trained):
    """The bar counts images, not shards (issue 13): each batch tells the sink how many images of
    the shard are final, and a retried sample counts once, after its last attempt."""
    from augment.generate.plan import plan_shards
    from augment.generate.runner import GenerateStage

    cfg = dataclasses.replace(trained, generate=dataclasses.replace(trained.generate, batch_size=2, shard_size=4))
    stage = GenerateStage(cfg, baseline=False)
    stage.preflight()
    reports: list[tuple[int, int]] = []
    stage.progress = lambda key, done: reports.append((key, done))
    unit = plan_shards(stage.classes, cfg.generate.per_class, cfg.generate.shard_size)[1]
    stage.worker_factory()().run(unit)
    assert reports == [(1, 2), (1, 4)]


def _nan_on(monkeypatch, seeds: set[int]) -> None:
    """Make the sampler return a NaN image for every draw whose seed is in ``seeds`` (an fp16 overflow)."""
    from augment.generate.worker import GenerateWorker

    real = GenerateWorker.sample

    def sample(self, prompts, draw_seeds, negatives=None):
        images = real(self, prompts, draw_seeds, negatives)
        for j, s in enumerate(draw_seeds):
            if s in seeds:
                images[j] = float("nan")
        return images

    monkeypatch.setattr(GenerateWorker, "sample", sample)


def test_a_nan_image_costs_one_draw_not_the_shard(trained, monkeypatch, capsys):
    """Issue 19: one NaN image was a bare AssertionError that failed its shard; it is a rejected draw,
    redrawn from its class's attempt stream, counted in the summary and on record as attempts=2."""
    from augment.cli.stages import print_generate
    from augment.generate.plan import sample_seed

    cfg = trained
    bad = sample_seed(cfg.seed, 1, 2)
    _nan_on(monkeypatch, {bad})
    s = run_generate(cfg, show_progress=False)
    assert s.exit_code == 0 and not s.failed and s.nonfinite == 1 and (s.samples, s.written) == (9, 3)
    rows = {(r["class_index"], r["sample_index"]): r for r in pq.read_table(Path(s.out) / "manifests").to_pylist()}
    assert len(rows) == 9
    assert rows[1, 2]["seed"] == stream_seed(cfg.seed, 1, 1, 0) != bad and rows[1, 2]["attempts"] == 2
    assert all(r["attempts"] == 1 and r["seed"] == sample_seed(cfg.seed, c, i)
               for (c, i), r in rows.items() if (c, i) != (1, 2))
    assert verify_run(Path(s.out)).ok
    capsys.readouterr()
    print_generate(s)
    assert "1 NaN/inf draws rejected" in capsys.readouterr().out


def test_an_image_that_stays_nan_stops_the_stage_naming_the_dtype(trained, monkeypatch):
    from augment.generate.plan import sample_seed

    trained.generate.max_attempts = 2
    _nan_on(monkeypatch, {sample_seed(trained.seed, 0, 0), stream_seed(trained.seed, 0, 0, 0)})
    with pytest.raises(AugmentError, match="NaN/inf images.*--dtype"):
        run_generate(trained, show_progress=False)


def test_a_nan_image_under_min_confidence_is_a_rejected_draw(trained, monkeypatch):
    trained.generate.per_class = 2
    trained.generate.shard_size = 6
    trained.generate.min_confidence = 1e-9  # every finite draw passes
    _nan_on(monkeypatch, {stream_seed(trained.seed, 2, 0, 0)})
    s = run_generate(trained, show_progress=False)
    assert s.exit_code == 0 and s.nonfinite == 1
    by = {a.class_index: (a.accepted, a.attempts) for a in s.acceptance.classes}
    assert by == {0: (2, 2), 1: (2, 2), 2: (2, 3)}
    rows = [r for r in pq.read_table(Path(s.out) / "manifests").to_pylist() if r["class_index"] == 2]
    assert [r["seed"] for r in rows] == [stream_seed(trained.seed, 2, 0, d) for d in (1, 2)]
