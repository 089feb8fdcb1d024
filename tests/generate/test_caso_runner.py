"""The caso stage on a fake CUB folder with micro models: shards of edits, labels = target, resume."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from augment.config import CasoConfig, Config
from augment.errors import AugmentError
from augment.generate.caso_runner import run_caso
from augment.io.atomic import temp_path_for
from augment.io.verify import verify_run


def test_caso_stage(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path):
    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, classes="0,1",
                 caso=CasoConfig(k=2, max_steps=2, batch_size=2, edits_per_image=2, edit_steps=4, target=2))
    s = run_caso(cfg, show_progress=False)
    assert s.done == 2 and not s.failed
    rows = pq.read_table(tmp_path / "run" / "caso" / "manifests").to_pylist()
    assert len(rows) == 2 * 2 * 2
    assert {r["class_index"] for r in rows} == {2} and {r["mode"] for r in rows} == {"edit"}
    assert all(r["source_key"].startswith("cub:train:") and r["strength"] == pytest.approx(0.5) for r in rows)
    assert verify_run(tmp_path / "run" / "caso").ok
    assert sorted(p.name for p in (tmp_path / "run" / "caso" / "tokens").glob("*.safetensors")) == [
        "0000-black-footed-albatross-to-0002.safetensors", "0001-laysan-albatross-to-0002.safetensors"]
    assert run_caso(cfg, show_progress=False).skipped == 2
    # what a kill -9 leaves mid-class: a shard without its manifest, temp files; the re-run redoes the class
    arm = tmp_path / "run" / "caso"
    (arm / "manifests" / "synth-000001.parquet").unlink()
    for folder, name in (("shards", "synth-000001.tar"), ("tokens", "tokens.parquet")):
        temp_path_for(arm / folder / name).write_bytes(b"cut short")
    assert not verify_run(arm).ok
    s = run_caso(cfg, show_progress=False)
    assert (s.done, s.skipped) == (1, 1) and verify_run(arm).ok
    cfg.caso.k = 99
    with pytest.raises(AugmentError, match="k=99 is larger"):
        run_caso(cfg, show_progress=False)


def test_caso_needs_real_images(tmp_path, micro_pipeline_dir, micro_classifier_path):
    cfg = Config(dataset="cub", model=str(micro_pipeline_dir), classifier=f"timm:test_resnet@{micro_classifier_path}",
                 out=str(tmp_path / "run"), workers=0)
    with pytest.raises(AugmentError, match="has no split 'train'"):
        run_caso(cfg, show_progress=False)


def test_caso_worker_reads_no_dataset(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path):
    """The reals of a class travel in its unit (decoded by the driver); the worker, built from its
    pickled factory, edits them with the dataset folder gone, into the shard the stage writes."""
    import pickle
    import shutil

    from augment.distributed import torch_threads
    from augment.generate.caso_runner import CasoStage
    from augment.io.shards import write_shard

    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, classes="1", caso=CasoConfig(k=2, max_steps=1, batch_size=2, edits_per_image=1, edit_steps=2))
    assert run_caso(cfg, show_progress=False).done == 1
    stage = CasoStage(cfg)
    stage.preflight()
    [unit] = stage.plan(force=True).todo
    unit, factory = pickle.loads(pickle.dumps((unit, stage.worker_factory())))  # as they cross to an actor
    shutil.rmtree(fake_cub)
    with torch_threads(cfg.threads):  # what the stage gives a unit
        res = factory().run(unit)
    assert [s.meta["source_key"] for s in res.samples] == unit.reals.get().source_keys
    assert all(k.startswith("cub:train:") for k in unit.reals.get().source_keys) and len(res.samples) == 2
    write_shard(tmp_path / "remote", res.shard, res.samples)
    assert (tmp_path / "remote" / "shards" / "synth-000000.tar").read_bytes() == \
        (tmp_path / "run" / "caso" / "shards" / "synth-000000.tar").read_bytes()
