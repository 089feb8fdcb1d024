"""tokens.parquet as TokenRow objects: the schema's columns, round trip, the same bytes as dict rows."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import pytest

from augment.io.manifest import TOKENS_SCHEMA, write_parquet
from augment.io.tokens_table import TokenRow, read_token_rows, write_token_rows


def test_fields_are_the_schema_columns():
    assert [f.name for f in fields(TokenRow)] == TOKENS_SCHEMA.names
    required = {f.name for f in TOKENS_SCHEMA if not f.nullable}
    assert required == {"class_index", "class_name", "token", "status"}


def test_round_trip_and_bytes_equal_to_dict_rows(tmp_path):
    rows = {
        2: TokenRow(2, "dog", "<c0002>", init_token="dog", token_file="0002-dog.safetensors", token_sha256="ab" * 32,
                    steps=3, best_loss=0.25, final_accuracy=0.5, seconds=1.5, grad_steps="all", lr=0.01,
                    seeds=[1, 2], model_id="m"),
        0: TokenRow(0, "cat", "<c0000>", status="failed", error="RuntimeError: boom", grad_steps="1", lr=0.5),
    }
    write_token_rows(tmp_path / "typed.parquet", rows)
    # what the stages wrote before: dicts that leave out the columns they do not fill
    as_dicts = [{"class_index": 0, "class_name": "cat", "token": "<c0000>", "status": "failed",
                 "error": "RuntimeError: boom", "grad_steps": "1", "lr": 0.5},
                {k: v for k, v in rows[2].to_json().items() if v is not None}]
    write_parquet(tmp_path / "dicts.parquet", as_dicts, TOKENS_SCHEMA)

    def digest(name):
        return hashlib.sha256((tmp_path / name).read_bytes()).hexdigest()

    assert digest("typed.parquet") == digest("dicts.parquet")
    back = read_token_rows(tmp_path / "typed.parquet")
    assert list(back) == [0, 2] and back[0] == rows[0]  # (lr 0.5: exact in the float32 column)
    assert back[2].seeds == [1, 2] and back[2].best_loss == pytest.approx(0.25)
    write_token_rows(tmp_path / "again.parquet", back)  # read then rewritten: unchanged
    assert digest("again.parquet") == digest("typed.parquet")


def test_missing_file_and_unknown_columns(tmp_path):
    assert read_token_rows(tmp_path / "none.parquet") == {}
    with pytest.raises(ValueError, match="not in the schema: extra"):
        TokenRow.from_json({"class_index": 0, "class_name": "a", "token": "<c0000>", "extra": 1})


def test_file_written_before_the_validation_columns_still_reads(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    new = {"init_val_accuracy", "final_val_accuracy", "n_vectors", "negative_prompt"}
    old_schema = pa.schema([f for f in TOKENS_SCHEMA if f.name not in new])
    pq.write_table(pa.Table.from_pylist([{"class_index": 1, "class_name": "dog", "token": "<c0001>", "status": "ok",
                                          "final_accuracy": 0.5}], schema=old_schema), tmp_path / "old.parquet")
    row = read_token_rows(tmp_path / "old.parquet")[1]
    assert row.final_accuracy == 0.5 and row.init_val_accuracy is None and row.n_vectors is None


def test_a_garbage_tokens_table_is_one_line(tmp_path):
    """A tokens.parquet overwritten with noise (hostile probe defect 4: a pyarrow traceback in
    `augment tokens`) is one AugmentError naming the file and what to do."""
    import pytest

    from augment.errors import AugmentError
    from augment.io.tokens_table import read_token_rows

    path = tmp_path / "tokens.parquet"
    path.write_bytes(bytes(range(100)))
    with pytest.raises(AugmentError, match=r"tokens\.parquet is not a readable tokens table .*move it aside") as e:
        read_token_rows(path)
    assert "\n" not in e.value.message
