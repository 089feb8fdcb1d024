import json
import os

import pytest

from augment.errors import AugmentError
from augment.io.rundir import RunDir, check_compatible, check_writable, read_run_json, write_run_json

CONFIG = {
    "model": "embedded:tiny-digits",
    "classifier": "embedded:digits-guide",
    "seed": 0,
    "generate": {"prompts": ["A photo of a {token} {name}"], "per_class": 10},
}


def test_layout(tmp_path):
    rd = RunDir(tmp_path / "run")
    assert rd.tokens == tmp_path / "run" / "tokens" and rd.shards.name == "shards"
    assert rd.manifests.name == "manifests" and rd.report.name == "report"
    assert rd.run_json.name == "run.json" and rd.info_json == rd.shards / "_info.json"
    assert not rd.path.exists()
    rd.make()
    assert all(p.is_dir() for p in (rd.tokens, rd.shards, rd.manifests, rd.report))
    assert os.fspath(rd) == str(tmp_path / "run")


def test_write_run_json(tmp_path):
    rec = write_run_json(tmp_path, CONFIG, "tokens", {"class_names": ["zero", "one"]})
    assert rec == read_run_json(tmp_path)
    assert rec.config == CONFIG and rec.stage == "tokens" and rec.model_id == "embedded:tiny-digits"
    assert rec.classifier_id == "embedded:digits-guide" and rec.class_names == ["zero", "one"]
    assert rec.augment_version and rec.packages["pyarrow"] and "webdataset" in rec.packages
    assert rec.has("git_sha")  # None outside a checkout with commits; never fails
    rec2 = write_run_json(RunDir(tmp_path), {**CONFIG, "seed": 0}, "generate",
                          {"baseline": True, "model_fingerprint": "abc"})
    assert rec2.created == rec.created and set(rec2.stages) == {"tokens", "generate"}
    assert rec2.class_names == ["zero", "one"] and rec2.stage == "generate"
    assert rec2.baseline is True and rec2.model_fingerprint == "abc" and rec.baseline is None
    assert rec2.stage_settings("generate") == {"config": CONFIG, "baseline": True, "model_fingerprint": "abc"}
    assert not [p for p in tmp_path.iterdir() if p.name != "run.json"]
    # the record is the file: what is written reads back as written
    assert rec2.to_json() == json.loads((tmp_path / "run.json").read_text())


def test_run_record_reads_older_run_json(tmp_path):
    """A run.json from before settings, stages and class names were recorded: absent entries stay
    absent (to_json gives the file back), entries of the wrong type are read as absent."""
    from augment.io.rundir import RunRecord

    old = {"config": CONFIG, "stage": "tokens", "created": "2024-01-01T00:00:00+00:00", "model_id": "m",
           "settings": ["not", "an", "object"], "custom": 1}
    rec = RunRecord.from_json(old)
    assert rec.config == CONFIG and rec.stages == {} and rec.settings == {} and rec.class_names is None
    assert rec.stage_settings("tokens") is None and rec.extra == {"custom": 1}
    assert not rec.has("class_names") and not rec.has("settings") and rec.has("custom") and rec.has("config")
    assert rec.to_json() == {k: v for k, v in old.items() if k != "settings"}
    (tmp_path / "run.json").write_text(json.dumps(old))
    assert check_compatible(tmp_path, CONFIG, ["model", "class_names"], force=False) == []
    with pytest.raises(AugmentError, match="model_id"):
        check_compatible(tmp_path, CONFIG, ["model_id"], force=False, extra={"model_id": "other"})
    rec2 = write_run_json(tmp_path, CONFIG, "generate")  # keeps created and the unknown entry
    assert rec2.created == old["created"] and rec2.extra == {"custom": 1} and rec2.stages.keys() == {"generate"}


def test_check_compatible(tmp_path):
    assert check_compatible(tmp_path, CONFIG, ["model"], force=False) == []  # no run.json yet
    write_run_json(tmp_path, CONFIG, "tokens", {"class_names": ["zero", "one"]})
    keys = ["model", "classifier", "seed", "generate.prompts", "class_names"]
    assert check_compatible(tmp_path, CONFIG, keys, force=False, extra={"class_names": ["zero", "one"]}) == []
    # a setting that is not checked may change
    assert (
        check_compatible(
            tmp_path, {**CONFIG, "generate": {**CONFIG["generate"], "per_class": 99}}, keys, force=False
        )
        == []
    )
    changed = {**CONFIG, "model": "stabilityai/sd-2-1-base"}
    with pytest.raises(AugmentError) as e:
        check_compatible(tmp_path, changed, keys, force=False)
    msg = str(e.value.message)
    assert "model" in msg and "embedded:tiny-digits" in msg and "stabilityai/sd-2-1-base" in msg
    assert "--out" in msg and "--force" in msg
    diffs = check_compatible(tmp_path, changed, keys, force=True)
    assert len(diffs) == 1 and diffs[0].startswith("model:")
    with pytest.raises(AugmentError, match="class_names"):
        check_compatible(tmp_path, CONFIG, keys, force=False, extra={"class_names": ["zero", "uno"]})
    with pytest.raises(AugmentError, match=r"generate\.prompts"):
        check_compatible(tmp_path, {**CONFIG, "generate": {"prompts": ["x {token}"]}}, keys, force=False)


def test_corrupt_run_json(tmp_path):
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(AugmentError, match="not valid JSON"):
        check_compatible(tmp_path, CONFIG, ["model"], force=False)
    assert check_compatible(tmp_path, CONFIG, ["model"], force=True) == []
    write_run_json(tmp_path, CONFIG, "tokens")  # replaces it
    assert read_run_json(tmp_path).config == CONFIG


def test_check_writable(tmp_path):
    assert check_writable(tmp_path / "new" / "dir").is_dir()
    assert list((tmp_path / "new" / "dir").iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(AugmentError, match="is a file"):
        check_writable(tmp_path / "file")
    with pytest.raises(AugmentError, match="not writable"):
        check_writable(tmp_path / "file" / "sub")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        try:
            with pytest.raises(AugmentError, match="not writable"):
                check_writable(ro)
        finally:
            ro.chmod(0o755)


def test_run_json_is_json(tmp_path):
    write_run_json(tmp_path, {**CONFIG, "out": tmp_path}, "build")
    assert json.loads((tmp_path / "run.json").read_text())["config"]["out"] == str(tmp_path)
