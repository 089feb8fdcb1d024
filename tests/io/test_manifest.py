import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augment.io.manifest import (
    MANIFEST_SCHEMA,
    SCHEMA_DIR,
    SCHEMA_DOCS,
    TOKENS_SCHEMA,
    read_manifests,
    schema_doc,
    write_parquet,
)


@pytest.mark.parametrize("name", sorted(SCHEMA_DOCS))
def test_schema_docs_match_the_schemas(name):
    """manifests/schema/*.json are generated: regenerate with `python -m augment.io.manifest`."""
    on_disk = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8"))
    assert on_disk == schema_doc(SCHEMA_DOCS[name]), "run `python -m augment.io.manifest` to regenerate"
    assert all(c["description"] for c in on_disk["columns"])


def test_brief_types():
    t = {f.name: f.type for f in MANIFEST_SCHEMA}
    assert t["class_index"] == pa.int32() and t["seed"] == pa.int64() and t["steps"] == pa.int16()
    assert t["guidance_scale"] == pa.float32() and t["guide_confidence"] == pa.float32()
    assert t["guide_pred"] == pa.int32() and t["created_at"] == pa.timestamp("us", tz="UTC")
    assert t["width"] == t["height"] == t["sample_index"] == pa.int32() and t["bytes"] == pa.int64()
    assert t["attempts"] == pa.int16() and t["strength"] == pa.float32()
    assert MANIFEST_SCHEMA.field("strength").nullable and MANIFEST_SCHEMA.field("source_key").nullable
    k = {f.name: f.type for f in TOKENS_SCHEMA}
    assert k["seeds"] == pa.list_(pa.int64()) and k["status"] == pa.string() and k["steps"] == pa.int32()
    assert TOKENS_SCHEMA.field("error").nullable


def _token_row(i=0, **kw):
    row = {
        "class_index": i,
        "class_name": f"c{i}",
        "token": f"<c{i:04d}>",
        "status": "ok",
        "seeds": [1, 2, 3],
        "lr": 0.00125,
        "grad_steps": "1",
        "best_loss": 0.25,
    }
    row.update(kw)
    return row


def test_write_parquet_roundtrip_and_determinism(tmp_path):
    p = tmp_path / "tokens.parquet"
    rows = [_token_row(0), _token_row(1, status="failed", error="nan loss", seeds=[])]
    write_parquet(p, rows, TOKENS_SCHEMA)
    first = p.read_bytes()
    write_parquet(p, rows, TOKENS_SCHEMA)
    assert p.read_bytes() == first
    t = pq.read_table(p)
    assert t.schema.equals(TOKENS_SCHEMA)
    assert t.column("seeds").to_pylist() == [[1, 2, 3], []]
    assert t.column("error").to_pylist() == [None, "nan loss"]


def test_write_parquet_refuses_bad_rows(tmp_path):
    p = tmp_path / "t.parquet"
    with pytest.raises(ValueError, match="not in the schema: tokn"):
        write_parquet(p, [_token_row(tokn="x")], TOKENS_SCHEMA)
    with pytest.raises(ValueError, match="required column 'status'"):
        write_parquet(p, [_token_row(status=None)], TOKENS_SCHEMA)
    with pytest.raises(ValueError, match="does not fit"):
        write_parquet(p, [_token_row(steps="many")], TOKENS_SCHEMA)
    assert list(tmp_path.iterdir()) == []


def test_read_manifests_empty(tmp_path):
    t = read_manifests(tmp_path / "missing")
    assert t.num_rows == 0 and t.schema.equals(MANIFEST_SCHEMA)
