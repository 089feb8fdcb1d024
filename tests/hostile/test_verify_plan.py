"""Issue 24, item 3: ``verify`` checks the run against the plan its run.json records, every
manifest field against the tar's sidecar, the lock, and every token file against its row.

Each tamper is one a user (or a bug) could make; each must give exit 1 and a line naming it."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from augment.io.shards import write_info
from augment.verify import verify_arms
from tests.hostile.conftest import augment
from tests.io.test_lock import hold_lock

SHARD = "synth-000000"


def _edit_manifest(arm: Path, edit: Callable[[dict[str, Any]], None], shard: str = SHARD) -> None:
    path = arm / "manifests" / f"{shard}.parquet"
    table = pq.read_table(path)
    rows = table.to_pylist()
    for r in rows:
        edit(r)
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), path)


def _edit_tar(arm: Path, edit: Callable[[str, bytes], bytes], shard: str = SHARD) -> None:
    path = arm / "shards" / f"{shard}.tar"
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for m, data in members:
            data = edit(m.name, data)
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))
    path.write_bytes(buf.getvalue())


def _edit_sidecars(arm: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    def one(name: str, data: bytes) -> bytes:
        if not name.endswith(".json"):
            return data
        doc = json.loads(data)
        edit(doc)
        return json.dumps(doc, sort_keys=True).encode()
    _edit_tar(arm, one)


def _set(field: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def edit(row: dict[str, Any]) -> None:
        row[field] = value
    return edit


def _problems(run: Path) -> list[str]:
    summary = verify_arms(run, decode_images=False)
    assert summary.exit_code == 1
    return [p for r in summary.reports.values() for p in r.problems]


def _named(run: Path, *words: str) -> None:
    problems = _problems(run)
    assert any(all(w in p for w in words) for p in problems), problems


@pytest.mark.parametrize(("field", "value"), [("guide_confidence", 0.123), ("guide_pred", 7), ("soft_classes", [1, 0]),
                                              ("seed", 424242), ("prompt", "a photo of a cat")])
def test_a_field_edited_in_the_manifest_alone_is_named(run, field, value):
    _edit_manifest(run, _set(field, value))
    _named(run, SHARD, field)


@pytest.mark.parametrize(("field", "value"), [("guide_confidence", 0.123), ("guide_pred", 7), ("soft_classes", [1, 0]),
                                              ("seed", 424242), ("prompt", "a photo of a cat")])
def test_a_field_edited_in_the_sidecar_alone_is_named(run, field, value):
    _edit_sidecars(run, _set(field, value))
    _named(run, SHARD, ".json " + field)


def test_a_guide_confidence_edited_in_both_places_is_named(run):
    _edit_manifest(run, _set("guide_confidence", 0.5))
    _edit_sidecars(run, _set("guide_confidence", 0.5))
    _named(run, SHARD, "guide_confidence")


def test_a_consistent_relabel_is_named(run):
    """Class 0's samples say class 1 in .cls, manifest and sidecar; the key, seed and prompt still say 0."""
    def manifest(r: dict[str, Any]) -> None:
        if r["class_index"] == 0:
            r["class_index"] = 1

    def tar(name: str, data: bytes) -> bytes:
        if name.startswith("c0000_") and name.endswith(".cls"):
            return b"1"
        if name.startswith("c0000_") and name.endswith(".json"):
            doc = json.loads(data)
            doc["class_index"] = 1
            return json.dumps(doc, sort_keys=True).encode()
        return data
    _edit_manifest(run, manifest)
    _edit_tar(run, tar)
    _named(run, "c0000_s000000", "class_index 1", "plan")


def test_arms_swapped_are_named(run):
    for ext, folder in (("tar", "shards"), ("parquet", "manifests")):
        a, b = run / folder / f"{SHARD}.{ext}", run / "baseline" / folder / f"{SHARD}.{ext}"
        data = a.read_bytes()
        a.write_bytes(b.read_bytes())
        b.write_bytes(data)
    problems = _problems(run)
    assert any(p.startswith("token: ") and "token_sha256" in p for p in problems), problems
    assert any(p.startswith("baseline: ") and "token_sha256" in p for p in problems), problems


def test_a_seed_edited_in_run_json_is_named(run):
    doc = json.loads((run / "run.json").read_text())
    doc["config"]["seed"] = 5
    doc["settings"]["generate"]["config"]["seed"] = 5
    (run / "run.json").write_text(json.dumps(doc))
    _named(run, "seed", "plan of run.json")


def test_a_deleted_shard_with_rebuilt_info_is_missing(run):
    (run / "shards" / "synth-000003.tar").unlink()
    (run / "manifests" / "synth-000003.parquet").unlink()
    write_info(run, "digits-tokens")
    _named(run, "missing", "synth-000003")


def test_a_held_lock_says_a_writer_is_running(run):
    proc = hold_lock(run)
    try:
        _named(run, "incomplete: a writer is running", f"PID {proc.pid}")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("row_edit", [_set("token_sha256", None), _set("status", "failed")])
def test_a_replaced_token_vector_is_named_whatever_its_row_says(run, row_edit):
    from safetensors.torch import load_file, save_file

    tokens = run / "tokens" / "tokens.parquet"
    table = pq.read_table(tokens)
    rows = table.to_pylist()
    path = run / "tokens" / rows[0]["token_file"]
    vectors = load_file(path)
    save_file({k: v + 1 for k, v in vectors.items()}, path)
    row_edit(rows[0])
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), tokens)
    _named(run, rows[0]["token_file"])


def test_an_untouched_run_verifies_ok(reference):
    code, out = augment("verify", str(reference))
    assert code == 0, out
    assert out.count(": ok") == 2
