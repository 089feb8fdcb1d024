"""The caso stage on a fake CUB folder with micro models: shards of edits, labels = target, resume."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from augment.config import CasoConfig, Config
from augment.errors import AugmentError
from augment.generate.caso_runner import run_caso
from augment.io import shards as shards_mod
from augment.io.atomic import temp_path_for
from augment.verify import verify_run


def test_caso_stage(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path, monkeypatch):
    """Counterfactual edits towards class 2 (sdedit, two per image): labels = the target, one
    embedding learned (from the reals of every class), manifests carry the edit's facts, resume;
    _info.json is kept from what the stage wrote, never rebuilt by reading every manifest."""
    rebuilt = []
    real_info_dict = shards_mod.info_dict
    monkeypatch.setattr(shards_mod, "info_dict", lambda *a, **k: rebuilt.append(a) or real_info_dict(*a, **k))
    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, classes="0,1",
                 caso=CasoConfig(k=2, max_steps=2, batch_size=2, edits_per_image=2, edit_steps=4, target="2",
                                 edit_mode="sdedit"))
    s = run_caso(cfg, show_progress=False)
    assert s.done == 2 and not s.failed
    rows = pq.read_table(tmp_path / "run" / "caso" / "manifests").to_pylist()
    assert len(rows) == 2 * 2 * 2
    assert {r["class_index"] for r in rows} == {2} and {r["mode"] for r in rows} == {"edit"}
    assert {r["edit_mode"] for r in rows} == {"sdedit"} and {r["targets"] for r in rows} == {"2"}
    assert all(r["source_key"].startswith("cub:train:") and r["strength"] == pytest.approx(0.5) for r in rows)
    assert verify_run(tmp_path / "run" / "caso").ok
    assert rebuilt == []  # no full manifest scan while the stage ran
    info = json.loads((tmp_path / "run" / "caso" / "shards" / "_info.json").read_text())
    assert info == real_info_dict(tmp_path / "run" / "caso", "cub-caso")  # what a rebuild would say
    assert sorted(p.name for p in (tmp_path / "run" / "caso" / "tokens").glob("*.safetensors")) == [
        "0002-sooty-albatross.safetensors"]
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


def test_caso_multi_embedding_ddim_edits(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path):
    """``A->B+C``: only A's reals are edited, under B's and C's embeddings in one condition (both
    learned and saved; the prompt holds both tokens), with the paper's DDIM edit, labelled B."""
    from augment.tokens.textual_inversion import read_token

    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, classes="0,1",
                 caso=CasoConfig(k=2, max_steps=1, batch_size=2, edit_steps=4, target="1->0+2", guided_step=0))
    s = run_caso(cfg, show_progress=False)
    assert s.done == 1 and not s.failed  # class 0 has nothing to edit: no unit, no empty shard
    rows = pq.read_table(tmp_path / "run" / "caso" / "manifests").to_pylist()
    assert len(rows) == 2 and {r["class_index"] for r in rows} == {0}
    assert {r["targets"] for r in rows} == {"0+2"} and {r["edit_mode"] for r in rows} == {"ddim"}
    assert {r["prompt"] for r in rows} == {"<caso0000> <caso0002>"}
    files = sorted((tmp_path / "run" / "caso" / "tokens").glob("*.safetensors"))
    assert [p.name[:4] for p in files] == ["0000", "0002"]
    assert [read_token(p)[0] for p in files] == ["<caso0000>", "<caso0002>"]


@pytest.mark.parametrize(("change", "message"), [
    ({"target": "1->x"}, "not a class index"),
    ({"edits_per_image": 2}, "deterministic"),
    ({"guided_step": 9}, "outside the"),
])
def test_caso_bad_settings(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path, change, message):
    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, caso=CasoConfig(k=1, edit_steps=4, **change))
    with pytest.raises(AugmentError, match=message):
        run_caso(cfg, show_progress=False)
    assert not (tmp_path / "run").exists()


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
    pool = unit.reals.get()
    mine = [k for k, label in zip(pool.source_keys, pool.labels, strict=True) if label == 1]
    assert [s.meta.source_key for s in res.samples] == mine and len(res.samples) == 2
    assert all(k.startswith("cub:train:") for k in pool.source_keys) and sorted(set(pool.labels)) == [0, 1, 2]
    write_shard(tmp_path / "remote", res.shard, res.samples)
    assert (tmp_path / "remote" / "shards" / "synth-000000.tar").read_bytes() == \
        (tmp_path / "run" / "caso" / "shards" / "synth-000000.tar").read_bytes()
