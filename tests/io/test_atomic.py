import json
import os

import pytest

from augment.io.atomic import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    is_temp_name,
    remove_temp_files,
    temp_path_for,
)


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if is_temp_name(p.name)]


def test_writes_and_replaces(tmp_path):
    p = tmp_path / "sub" / "a.bin"
    atomic_write_bytes(p, b"one")
    atomic_write_bytes(p, b"two")
    assert p.read_bytes() == b"two"
    atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert _leftovers(tmp_path) == [] and _leftovers(p.parent) == []


def test_json_is_sorted_and_deterministic(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2], "p": tmp_path})
    first = (tmp_path / "a.json").read_bytes()
    atomic_write_json(tmp_path / "a.json", {"p": tmp_path, "a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == first
    assert list(json.loads(first)) == ["a", "b", "p"]
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists() and _leftovers(tmp_path) == []


def test_exception_leaves_no_temp_and_keeps_old_content(tmp_path):
    p = tmp_path / "x.tar"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        assert tmp.parent == p.parent and is_temp_name(tmp.name)
        raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []

    class Unserialisable:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(tmp_path / "y.json", {"x": Unserialisable()})
    assert not (tmp_path / "y.json").exists() and _leftovers(tmp_path) == []


def test_block_must_write_the_file(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_path(tmp_path / "never"):
        pass
    assert os.listdir(tmp_path) == []


def test_temp_names_are_hidden_from_globs(tmp_path):
    t = temp_path_for(tmp_path / "synth-000001.parquet")
    assert t.name.startswith(".") and not t.name.endswith(".parquet") and is_temp_name(t.name)
    assert not is_temp_name("synth-000001.parquet")


def test_remove_temp_files_only_the_leftovers_and_only_of_the_targets(tmp_path):
    """What a kill -9 mid-write leaves is removed before a resume; another writer's temps can be spared."""
    kept = atomic_write_text(tmp_path / "report.json", "{}")
    a, b = temp_path_for(tmp_path / "report.json"), temp_path_for(tmp_path / "other.md")
    a.write_text("half"), b.write_text("half")
    assert remove_temp_files(tmp_path, ["report.json"]) == [a]
    assert remove_temp_files(tmp_path) == [b]
    assert sorted(p.name for p in tmp_path.iterdir()) == [kept.name]
    assert remove_temp_files(tmp_path / "missing") == []
