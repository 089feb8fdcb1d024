"""Issue 24, item 2: a resume is decided on content (token sha256, seeds, prompts, every setting
that changes a token), never on sample keys alone; it refuses in one line rather than mix."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.hostile.conftest import augment


def _common(tiny, run) -> list[str]:
    return ["--classes", "0,1", "--config", str(tiny), "--workers", "0", "--out", str(run)]


def _shas(run) -> dict[int, str]:
    rows = pq.read_table(run / "tokens" / "tokens.parquet").to_pylist()
    return {r["class_index"]: r["token_sha256"] for r in rows}


def _last_line(out: str) -> str:
    assert "Traceback" not in out, out
    return out.strip().splitlines()[-1]


def test_generate_after_retrained_tokens_refuses_instead_of_mixing(run, tiny):
    before = _shas(run)
    code, out = augment("tokens", *_common(tiny, run), "--force", "--max-steps", "4", "--lr", "0.05")
    assert code == 0, out
    assert _shas(run) != before  # the precondition: the tokens did change
    manifests = {p.name: p.read_bytes() for p in (run / "manifests").iterdir()}
    code, out = augment("generate", *_common(tiny, run), "--per-class", "6")
    assert code == 2, out
    line = _last_line(out)
    assert "token sha256" in line and "--force" in line and "new --out" in line
    assert {p.name: p.read_bytes() for p in (run / "manifests").iterdir()} == manifests  # nothing mixed in
    code, out = augment("generate", *_common(tiny, run), "--per-class", "6", "--force")
    assert code == 0, out
    rows = pq.read_table(run / "manifests").to_pylist()
    assert {r["token_sha256"] for r in rows} == set(_shas(run).values())


def test_tokens_with_another_max_steps_names_the_setting(run, tiny):
    code, out = augment("tokens", *_common(tiny, run), "--max-steps", "4")
    assert code == 2, out
    line = _last_line(out)
    assert "tokens.max_steps: 2 in run.json, 4 now" in line and "--force" in line


def test_tokens_with_other_generation_steps_names_them(run, tiny):
    """Validation scores candidates with generate.steps: another value makes another token."""
    code, out = augment("tokens", *_common(tiny, run), "--set", "generate.steps=7")
    assert code == 2, out
    assert "sampler" in _last_line(out)


def test_a_seed_edited_in_run_json_does_not_resume_into_seed_0_shards(run, tiny):
    doc = json.loads((run / "run.json").read_text())
    doc["config"]["seed"] = 5
    for stage in doc["settings"].values():
        stage["config"]["seed"] = 5
    (run / "run.json").write_text(json.dumps(doc))
    code, out = augment("generate", *_common(tiny, run), "--seed", "5", "--per-class", "6")
    assert code == 2, out
    assert "seed" in _last_line(out) and "--force" in _last_line(out)


def test_an_untouched_run_resumes_as_before(run, tiny):
    code, out = augment("generate", *_common(tiny, run), "--per-class", "6")
    assert code == 0, out
    assert "(2 written, 4 already done)" in out
