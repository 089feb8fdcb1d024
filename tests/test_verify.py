import hashlib
import io
import json
import shutil
import tarfile

import pytest
import torch
from safetensors.torch import save_file

from augment.io.manifest import TOKENS_SCHEMA, write_parquet
from augment.io.shards import manifest_path, shard_path, write_shard
from augment.verify import VerifyCounts, verify_run
from tests.io import encode, make_run, make_sample


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("clean"))
    tokens = run / "tokens"
    tokens.mkdir()
    rows = []
    for i, name in enumerate(["zero", "one", "two"]):
        fname = f"{i:04d}-{name}.safetensors"
        save_file({f"<c{i:04d}>": torch.full((1, 8), float(i))}, str(tokens / fname))
        sha = hashlib.sha256((tokens / fname).read_bytes()).hexdigest()
        rows.append(
            {
                "class_index": i,
                "class_name": name,
                "token": f"<c{i:04d}>",
                "token_file": fname,
                "token_sha256": sha,
                "status": "ok",
                "seeds": [0],
            }
        )
    rows.append(
        {
            "class_index": 3,
            "class_name": "three",
            "token": "<c0003>",
            "status": "failed",
            "error": "out of memory",
        }
    )
    write_parquet(tokens / "tokens.parquet", rows, TOKENS_SCHEMA)
    return run


@pytest.fixture
def run(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "run")


def _rewrite_tar(path, change):
    """Rebuild a tar, passing each (TarInfo, bytes) through change() (None drops the member)."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            item = change(m, tf.extractfile(m).read())
            if item is not None:
                out.append(item)
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, data in out:
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def test_clean_run(clean):
    r = verify_run(clean)
    assert r.ok, r.problems
    s = r.summary
    assert s.shards == 3 and s.samples == 8 and s.classes == 3
    assert s.per_class == {0: 3, 1: 3, 2: 2} and s.class_names == {0: "zero", 1: "one", 2: "two"}
    assert s.tokens == 4 and s.token_files == 3 and s.problems == 0
    doc = json.loads(json.dumps(r.to_dict()))
    # `augment verify --json` prints the counts in this order, and they read back as they were
    assert list(doc["summary"]) == ["shards", "samples", "classes", "per_class", "class_names", "image_bytes",
                                    "tokens", "token_files", "problems"]
    assert VerifyCounts.from_json(doc["summary"]) == s


def test_tampered_image(run):
    def change(m, data):
        if m.name == "c0001_s000000.jpg":
            data = encode(2, 7)  # a valid JPEG, but not the one in the manifest
        return m, data

    _rewrite_tar(shard_path(run, 0), change)
    r = verify_run(run)
    assert len(r.problems) == 1 and "c0001_s000000" in r.problems[0] and "sha256" in r.problems[0]


def test_corrupt_image_and_wrong_cls(run):
    def change(m, data):
        if m.name == "c0002_s000000.jpg":
            data = data[:20] + b"\0" * (len(data) - 20)
        if m.name == "c0000_s000000.cls":
            data = b"2"
        if m.name == "c0001_s000000.json":
            data = json.dumps({**json.loads(data), "class_name": "uno"}).encode()
        return m, data

    _rewrite_tar(shard_path(run, 0), change)
    text = "\n".join(verify_run(run).problems)
    assert "c0002_s000000: image sha256" in text and "PIL cannot read" in text
    assert ".cls is 2, manifest class_index 0" in text and "'uno'" in text


def test_missing_and_extra_members(run):
    _rewrite_tar(shard_path(run, 1), lambda m, d: None if m.name == "c0001_s000001.json" else (m, d))
    _rewrite_tar(shard_path(run, 2), lambda m, d: None if m.name.startswith("c0000_s000002") else (m, d))
    text = "\n".join(verify_run(run).problems)
    assert "c0001_s000001 has files ['cls', 'jpg']" in text
    assert "synth-000002: tar has 1 samples, manifest 2 rows" in text


def test_missing_shard_and_orphans(run):
    shard_path(run, 1).unlink()
    manifest_path(run, 2).unlink()
    (run / "shards" / ".synth-000003.tar.abcd.tmp").write_bytes(b"x")
    text = "\n".join(verify_run(run).problems)
    assert "synth-000001.parquet: manifest without its tar" in text
    assert "synth-000002.tar: tar without its manifest" in text
    assert "leftover temporary file" in text
    assert "_info.json: filenames do not match" in text and "num_samples is 8, the shards hold 3" in text


def test_wrong_info_counts(run):
    path = run / "shards" / "_info.json"
    info = json.loads(path.read_text())
    info["splits"]["train"]["shard_lengths"][1] = 5
    info["splits"]["train"]["num_samples"] = 10
    path.write_text(json.dumps(info))
    text = "\n".join(verify_run(run).problems)
    assert "synth-000001.tar has 5 samples, it has 3" in text and "num_samples is 10" in text
    path.unlink()
    assert any("_info.json: missing" in p for p in verify_run(run).problems)


def test_non_contiguous_sample(tmp_path):
    make_run(tmp_path, shards=(2,))
    members = []
    with tarfile.open(shard_path(tmp_path, 0)) as tf:
        for m in tf.getmembers():
            members.append((m, tf.extractfile(m).read()))
    members = [members[0], members[3], members[1], members[2], members[4], members[5]]
    with tarfile.open(shard_path(tmp_path, 0), "w", format=tarfile.USTAR_FORMAT) as tf:
        for m, d in members:
            tf.addfile(m, io.BytesIO(d))
    assert any("not contiguous" in p for p in verify_run(tmp_path).problems)


def test_token_problems(run):
    tokens = run / "tokens"
    save_file(
        {"<c0001>": torch.zeros(1, 8), "extra": torch.zeros(1, 8)}, str(tokens / "0001-one.safetensors")
    )
    (tokens / "0002-two.safetensors").unlink()
    save_file({"<c0009>": torch.zeros(8)}, str(tokens / "0009-stray.safetensors"))
    text = "\n".join(verify_run(run).problems)
    assert "class 1 (one): 0001-one.safetensors sha256 differs" in text
    assert "holds keys ['<c0001>', 'extra'], expected exactly ['<c0001>']" in text
    assert "class 2 (two): token file 0002-two.safetensors is missing" in text
    assert "0009-stray.safetensors: token file not listed" in text


def test_manifest_token_sha_cross_check(run):
    s = make_sample(0, 50)
    s.meta.token_sha256 = "0" * 64
    write_shard(run, 0, [s])
    text = "\n".join(verify_run(run).problems)
    assert "class 0: samples were made with token sha256 000000000000" in text
    assert "_info.json" in text  # the rewritten shard changed its length


def test_not_a_run(tmp_path):
    assert "no such folder" in verify_run(tmp_path / "nope").problems[0]
    assert "no shards and no tokens" in verify_run(tmp_path).problems[0]


def test_verify_arms_checks_every_arm_and_gives_an_exit_code(run):
    from augment.io.rundir import RunDir
    from augment.verify import verify_arms

    s = verify_arms(run)
    assert list(s.arms) == ["token"] and s.reports["token"].ok and (s.done, s.exit_code) == (1, 0)
    baseline = RunDir(run).arm_dir("baseline").path
    shutil.copytree(run / "shards", baseline / "shards")
    shutil.copytree(run / "manifests", baseline / "manifests")
    _rewrite_tar(shard_path(baseline, 0), lambda m, data: (m, data[:-1] + b"x") if m.name.endswith(".jpg") else (m, data))
    s = verify_arms(run, decode_images=False)
    assert list(s.arms) == ["token", "baseline"] and s.reports["token"].ok and not s.reports["baseline"].ok
    assert s.exit_code == 1 and s.done == 1 and len(s.failed) == 1 and str(baseline) in s.failed[0]


def test_verify_arms_of_a_folder_with_only_tokens(tmp_path):
    from augment.verify import verify_arms

    s = verify_arms(tmp_path)
    assert list(s.arms) == ["token"] and s.exit_code == 1 and "no shards and no tokens" in s.reports["token"].problems[0]


# --- an arm that was generated into must hold shards ------------------------------------------------

@pytest.fixture
def tokens_only(clean, tmp_path):
    """A run folder where only the tokens stage ran: tokens/ and a run.json that says so."""
    from augment.io.rundir import write_run_json

    run = tmp_path / "run"
    shutil.copytree(clean / "tokens", run / "tokens")
    write_run_json(run, {"dataset": "digits"}, "tokens")
    return run


def test_tokens_only_run_verifies_its_tokens_and_passes(tokens_only):
    from augment.verify import verify_arms

    s = verify_arms(tokens_only)
    assert list(s.arms) == ["token"] and s.exit_code == 0 and s.reports["token"].summary.tokens == 4
    (tokens_only / "tokens" / "0001-one.safetensors").write_bytes(b"x")  # and the tokens are really checked
    assert verify_arms(tokens_only).exit_code == 1


def test_generate_that_wrote_no_shard_fails_verify(tokens_only):
    from augment.io.rundir import write_run_json
    from augment.verify import verify_arms

    write_run_json(tokens_only, {"dataset": "digits"}, "generate")  # generate started (and then failed)
    r = verify_run(tokens_only)
    assert not r.ok and r.problems[0].startswith("token: no shards in ")
    assert f"re-run `augment generate --out {tokens_only}`" in r.problems[0]
    s = verify_arms(tokens_only)
    assert s.exit_code == 1 and s.failed == [f"{tokens_only}: 1 problems"]


def _caso_started(arm_path):
    from augment.io.rundir import write_run_json

    write_run_json(arm_path, {}, "caso")


@pytest.mark.parametrize(
    "arm, make, command",
    [
        ("baseline", lambda a: (a / "manifests").mkdir(parents=True), "augment generate --baseline"),
        ("baseline", lambda a: (a / "shards").mkdir(parents=True), "augment generate --baseline"),
        ("caso", _caso_started, "augment caso"),
    ],
)
def test_every_present_arm_is_checked(run, arm, make, command):
    from augment.io.rundir import RunDir
    from augment.verify import verify_arms

    make(RunDir(run).arm_dir(arm).path)
    s = verify_arms(run)
    assert list(s.arms) == ["token", arm] and s.reports["token"].ok and s.exit_code == 1
    assert s.reports[arm].problems == [
        f"{arm}: no shards in {RunDir(run).arm_dir(arm).shards} (generate did not finish? re-run `{command} "
        f"--out {run}` with the same settings, or the same `augment build`, to resume)"]


def test_an_arm_with_only_a_run_json_of_another_stage_is_not_present(run):
    from augment.io.rundir import RunDir, write_run_json
    from augment.verify import arm_present, verify_arms

    caso = RunDir(run).arm_dir("caso")
    write_run_json(caso, {}, "tokens")
    assert not arm_present(caso) and list(verify_arms(run).arms) == ["token"]
    caso.run_json.write_text("{not json")  # unreadable: the folders decide
    assert not arm_present(caso)


@pytest.mark.parametrize(("arm", "stage", "extra"), [("baseline", "generate", {"baseline": True}),
                                                    ("caso", "caso", {})])
def test_a_folder_with_only_another_arm_passes(clean, tmp_path, arm, stage, extra):
    """``augment generate --baseline`` or ``augment caso`` alone: OUT holds nothing but OUT/<arm>/
    (and the lock file); no token arm is expected of it."""
    from augment.io.rundir import LOCK_NAME, RunDir, write_run_json
    from augment.verify import verify_arms

    out = tmp_path / "out"
    path = RunDir(out).arm_dir(arm).path
    for folder in ("shards", "manifests"):
        shutil.copytree(clean / folder, path / folder)
    write_run_json(path, {"dataset": "digits"}, stage, extra=extra)
    (out / LOCK_NAME).write_text("")
    s = verify_arms(out)
    assert s.exit_code == 0, {n: r.problems for n, r in s.reports.items()}
    assert list(s.arms) == [arm] and s.reports[arm].summary.shards >= 1


def test_every_problem_names_its_arm(run):
    from augment.io.rundir import RunDir
    from augment.verify import verify_arms

    baseline = RunDir(run).arm_dir("baseline").path
    shutil.copytree(run / "shards", baseline / "shards")
    shutil.copytree(run / "manifests", baseline / "manifests")
    _rewrite_tar(shard_path(baseline, 0), lambda m, data: None if m.name.endswith(".cls") else (m, data))
    manifest_path(baseline, 1).write_bytes(b"")
    problems = verify_arms(run, decode_images=False).reports["baseline"].problems
    assert len(problems) >= 2 and all("baseline" in p for p in problems), problems
