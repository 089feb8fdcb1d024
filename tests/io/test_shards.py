import io
import json
import tarfile
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
from PIL import Image

from augment.io.atomic import temp_path_for
from augment.io.manifest import MANIFEST_SCHEMA, read_manifests
from augment.io.shards import (
    SynthSample,
    cleanup_partial,
    done_shards,
    manifest_path,
    parse_shard_name,
    sample_key,
    shard_name,
    shard_path,
    shard_urls,
    write_info,
    write_shard,
)
from tests.io import CLASS_NAMES, encode, make_run, make_sample, sha256


def test_names():
    assert sample_key(42, 17) == "c0042_s000017" and "." not in sample_key(3, 5)
    assert shard_name(0) == "synth-000000" and shard_name(123) == "synth-000123"
    assert parse_shard_name("synth-000012.tar") == 12 and parse_shard_name("_info.json") is None


def test_shard_layout_and_manifest(tmp_path):
    make_run(tmp_path, shards=(4, 2))
    tar = shard_path(tmp_path, 0)
    with tarfile.open(tar) as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names[:6] == [
        "c0000_s000000.cls",
        "c0000_s000000.jpg",
        "c0000_s000000.json",
        "c0001_s000000.cls",
        "c0001_s000000.jpg",
        "c0001_s000000.json",
    ]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {
        (946684800, 0, 0, "augment", "augment")
    }
    t = pq.read_table(manifest_path(tmp_path, 0))
    assert t.schema.equals(MANIFEST_SCHEMA)
    rows = t.to_pylist()
    assert [r["key"] for r in rows] == ["c0000_s000000", "c0001_s000000", "c0002_s000000", "c0000_s000001"]
    r = rows[0]
    assert r["shard"] == "synth-000000" and r["width"] == r["height"] == 16 and r["image_format"] == "jpg"
    assert r["bytes"] == len(encode(0, 0)) and r["tool_version"] and r["status"] == "ok"
    with tarfile.open(tar) as tf:
        side = json.loads(tf.extractfile("c0000_s000000.json").read())
        assert tf.extractfile("c0001_s000000.cls").read() == b"1"
    assert side["class_name"] == "zero" and side["seed"] == 0 and side["guidance_scale"] == 7.0
    assert "created_at" not in side and "image_sha256" not in side
    info = json.loads((tmp_path / "shards" / "_info.json").read_text())
    assert info == {
        "name": "synth",
        "splits": {
            "train": {
                "name": "train",
                "num_samples": 6,
                "filenames": ["synth-000000.tar", "synth-000001.tar"],
                "shard_lengths": [4, 2],
            }
        },
    }


def test_write_shard_says_what_it_wrote(tmp_path):
    from augment.io.shards import ShardWritten

    samples = [make_sample(0, 0), make_sample(1, 0), make_sample(0, 1)]
    written = write_shard(tmp_path, 2, samples)
    assert isinstance(written, ShardWritten)
    assert (written.shard, written.index, written.num_samples) == ("synth-000002", 2, 3)
    assert written.tar == shard_path(tmp_path, 2) and written.manifest == manifest_path(tmp_path, 2)
    assert written.tar_bytes == shard_path(tmp_path, 2).stat().st_size
    assert written.image_bytes == sum(len(s.image) for s in samples) and written.per_class == {0: 2, 1: 1}
    assert ShardWritten.from_json(json.loads(json.dumps(written.to_json()))) == written
    # the stage's row is not changed by writing (write_shard fills a copy)
    assert samples[0].meta.key is None and samples[0].meta.image_sha256 is None


def test_a_dict_meta_becomes_a_manifest_row():
    from augment.io.manifest import ManifestRow

    s = make_sample(0, 0)
    again = type(s)(s.key, 0, s.image, "jpg", s.meta.to_json())
    assert isinstance(again.meta, ManifestRow) and again.meta == s.meta


def test_byte_identical_rewrite(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a)
    make_run(b)
    make_run(a)  # rewrite in place too
    for i in range(3):
        assert shard_path(a, i).read_bytes() == shard_path(b, i).read_bytes()
        assert manifest_path(a, i).read_bytes() == manifest_path(b, i).read_bytes()
    assert sha256(a / "shards" / "_info.json") == sha256(b / "shards" / "_info.json")
    # without a given created_at the manifest records "now", but the tar stays identical
    write_shard(tmp_path / "c", 0, [make_sample(0, 0, created_at=None)])
    write_shard(tmp_path / "d", 0, [make_sample(0, 0)])
    assert shard_path(tmp_path / "c", 0).read_bytes() == shard_path(tmp_path / "d", 0).read_bytes()
    assert (
        pq.read_table(manifest_path(tmp_path / "c", 0))["created_at"][0].as_py()
        != pq.read_table(manifest_path(tmp_path / "d", 0))["created_at"][0].as_py()
    )


def test_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty shard"):
        write_shard(tmp_path, 0, [])
    s = make_sample(0, 0)
    with pytest.raises(ValueError, match="no dots"):
        write_shard(tmp_path, 0, [SynthSample("c0.s1", 0, s.image, "jpg", s.meta)])
    with pytest.raises(ValueError, match="twice"):
        write_shard(tmp_path, 0, [s, s])
    with pytest.raises(ValueError, match="PNG image"):
        write_shard(tmp_path, 0, [SynthSample(s.key, 0, encode(0, 0, "png"), "jpg", s.meta)])
    with pytest.raises(ValueError, match="not in the schema: colour"):
        write_shard(tmp_path, 0, [SynthSample(s.key, 0, s.image, "jpg", {**s.meta.to_json(), "colour": "red"})])
    with pytest.raises(ValueError, match="required column 'class_name'"):
        write_shard(tmp_path, 0, [SynthSample(s.key, 0, s.image, "jpg", replace(s.meta, class_name=None))])
    with pytest.raises(ValueError, match="contradicts"):
        write_shard(tmp_path, 0, [SynthSample(s.key, 0, s.image, "jpg", replace(s.meta, class_index=5))])
    assert not (tmp_path / "shards").exists() or list((tmp_path / "shards").iterdir()) == []
    assert not manifest_path(tmp_path, 0).exists()


def test_partial_cleanup_and_done(tmp_path):
    make_run(tmp_path, info=False)
    assert done_shards(tmp_path) == {0, 1, 2}
    # crash after the tar, before the Parquet marker; plus a leftover temp file in each folder
    manifest_path(tmp_path, 2).unlink()
    write_shard(tmp_path, 3, [make_sample(1, 9)])
    shard_path(tmp_path, 3).unlink()  # a manifest whose tar is gone
    tmp_tar = temp_path_for(shard_path(tmp_path, 4))
    tmp_tar.write_bytes(b"half a tar")
    tmp_pq = temp_path_for(manifest_path(tmp_path, 4))
    tmp_pq.write_bytes(b"half")
    assert done_shards(tmp_path) == {0, 1}
    removed = cleanup_partial(tmp_path)
    assert set(removed) == {shard_path(tmp_path, 2), manifest_path(tmp_path, 3), tmp_tar, tmp_pq}
    assert sorted(p.name for p in (tmp_path / "shards").iterdir()) == ["synth-000000.tar", "synth-000001.tar"]
    assert done_shards(tmp_path) == {0, 1}
    write_info(tmp_path, "synth")
    info = json.loads((tmp_path / "shards" / "_info.json").read_text())["splits"]["train"]
    assert info["filenames"] == ["synth-000000.tar", "synth-000001.tar"] and info["num_samples"] == 6
    assert len(shard_urls(tmp_path)) == 2 and cleanup_partial(tmp_path) == []


# ----------------------------------------------------------------------------- real readers


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


def test_webdataset_reader(run):
    import webdataset as wds

    ds = wds.WebDataset(shard_urls(run), shardshuffle=False).decode("pil").to_tuple("jpg", "cls", "json")
    items = list(ds)
    assert len(items) == 8
    img, cls, meta = items[4]
    assert isinstance(img, Image.Image) and img.size == (16, 16)
    assert cls == 1 and meta["class_name"] == "one" and meta["key"] == "c0001_s000001"
    assert [c for _, c, _ in items] == [0, 1, 2, 0, 1, 2, 0, 1]


def test_timm_wds_reader(run):
    import torch
    from timm.data import create_dataset
    from torchvision.transforms import ToTensor

    ds = create_dataset("wds/synth", root=str(run / "shards"), split="train")
    samples = list(ds)
    assert len(samples) == 8 and samples[0][1] == 0 and samples[1][1] == 1
    ds = create_dataset("wds/synth", root=str(run / "shards"), split="train", transform=ToTensor())
    images, targets = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert images.shape == (4, 3, 16, 16) and targets.tolist() == [0, 1, 2, 0]


def test_hf_datasets_reader(run, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from datasets import load_dataset

    ds = load_dataset(
        "webdataset", data_files={"train": shard_urls(run)}, split="train", cache_dir=str(tmp_path / "hf")
    )
    assert len(ds) == 8
    row = ds[2]
    assert row["cls"] == 2 and row["json"]["class_name"] == "two" and row["jpg"].size == (16, 16)


def test_tables_pandas_duckdb(run):
    import duckdb
    import pandas as pd

    t = pq.read_table(run / "manifests")
    assert t.num_rows == 8 and read_manifests(run).num_rows == 8
    df = pd.read_parquet(run / "manifests")
    assert df.groupby("class_name").size().to_dict() == {"one": 3, "two": 2, "zero": 3}
    assert str(df["created_at"].dtype).startswith("datetime64") and df["seed"].dtype == "int64"
    got = duckdb.sql(
        f"select class_name, count(*) from '{run}/manifests/*.parquet' group by 1 order by 1"
    ).fetchall()
    assert got == [("one", 3), ("two", 2), ("zero", 3)]


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_other_formats(tmp_path, fmt):
    import webdataset as wds

    make_run(tmp_path, shards=(3,), fmt=fmt)
    items = list(wds.WebDataset(shard_urls(tmp_path), shardshuffle=False).decode("pil").to_tuple(fmt, "cls"))
    assert [c for _, c in items] == [0, 1, 2]
    assert read_manifests(tmp_path).column("image_format").to_pylist() == [fmt] * 3
    assert Image.open(io.BytesIO(encode(0, 0, fmt))).format.lower().startswith(fmt[:3])
    assert CLASS_NAMES[items[1][1]] == "one"
