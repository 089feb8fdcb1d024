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


# ------------------------------------------------------------------------------- typed records

def _arrow_type(hint) -> set:
    """The Arrow types a dataclass field's annotation is compatible with (None stripped from unions)."""
    import datetime as dt
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) else [hint]
    (t,) = args
    if typing.get_origin(t) is list:
        (inner,) = typing.get_args(t)
        return {pa.list_(x) for x in _arrow_type(inner)}
    return {
        str: {pa.string()},
        int: {pa.int16(), pa.int32(), pa.int64()},
        float: {pa.float32(), pa.float64()},
        dt.datetime: {pa.timestamp("us", tz="UTC")},
    }[t]


@pytest.mark.parametrize("record, schema", [("ManifestRow", MANIFEST_SCHEMA), ("TokenRow", TOKENS_SCHEMA)])
def test_records_have_the_schema_columns_in_order_with_compatible_types(record, schema):
    import dataclasses
    import typing

    from augment.io import manifest, tokens_table

    cls = getattr(manifest, record, None) or getattr(tokens_table, record)
    assert [f.name for f in dataclasses.fields(cls)] == schema.names
    hints = typing.get_type_hints(cls)
    for f in schema:
        assert f.type in _arrow_type(hints[f.name]), f"{record}.{f.name}: {hints[f.name]} vs {f.type}"


def test_manifest_row_round_trips_through_the_parquet(tmp_path):
    import datetime as dt

    from augment.io.manifest import ManifestRow

    row = ManifestRow(key="c0001_s000002", shard="synth-000000", sample_index=2, class_index=1, class_name="one",
                      seed=7, mode="txt2img", width=8, height=8, image_format="png", image_sha256="0" * 64,
                      bytes=10, soft_classes=[1, 0], soft_probs=[0.75, 0.25], guidance_scale=7.5,
                      created_at=dt.datetime(2025, 1, 2, tzinfo=dt.UTC), tool_version="0")
    assert ManifestRow.from_json(row.to_json()) == row
    assert list(row.to_json()) == MANIFEST_SCHEMA.names
    write_parquet(tmp_path / "m.parquet", [row.to_json()], MANIFEST_SCHEMA)
    (back,) = [ManifestRow.from_json(r) for r in pq.read_table(tmp_path / "m.parquet").to_pylist()]
    assert back == row
    # a manifest from before soft labels existed lacks those columns: they read as None
    old = {k: v for k, v in row.to_json().items() if k not in ("soft_classes", "soft_probs")}
    assert ManifestRow.from_json(old).soft_classes is None
    with pytest.raises(ValueError, match="not in the schema: colour"):
        ManifestRow.from_json({**old, "colour": "red"})
