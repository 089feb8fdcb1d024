"""The CLI: working inspection commands, and every bad input -> one line on stderr, exit 2, nothing written."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from augment.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_version_and_help():
    assert run("--version").output.strip().startswith("augment, version")
    out = run("--help").output
    for cmd in ("build", "tokens", "generate", "verify", "show", "datasets", "models"):
        assert cmd in out


def test_datasets_show_digits():
    r = run("datasets", "show", "digits")
    assert r.exit_code == 0
    assert "classes: 10" in r.output and "train=1347, test=450" in r.output


def test_datasets_list_and_models_list():
    assert "cub" in run("datasets", "list").output
    out = run("models", "list").output
    assert "timm:<arch>" in out and "embedded" in out


def test_datasets_show_fake_cub(fake_cub):
    r = run("datasets", "show", "cub", "--data-root", str(fake_cub))
    assert r.exit_code == 0 and "classes: 3" in r.output and "black footed albatross" in r.output


def _assert_one_line_error(result, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert fragment in lines[0], lines[0]


def invoke_err(*args: str):
    return CliRunner().invoke(cli, list(args))


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["datasets", "show", "nosuch"], "unknown dataset"),
        (["datasets", "show", "cub", "--data-root", "/nonexistent/cub"], "/nonexistent/cub"),
        (["tokens", "--model", "not a spec!"], "cannot read model spec"),
        (["tokens", "--model", "someone/not-cached", "--out", "{tmp}/o"], "not in the local Hugging Face cache"),
        (["tokens", "--model", "{pipe}", "--classifier", "resnet18"], "cannot read classifier spec"),
        (["tokens", "--model", "{pipe}", "--classifier", "timm:test_resnet@/nonexistent.safetensors"], "does not exist"),
        (["tokens", "--model", "{pipe}", "--classifier", "{clf}"], "3 outputs but the dataset has 10 classes"),
        (["tokens", "--config", "{tmp}/bad.yaml"], "unknown config key"),
        (["tokens", "--model", "{pipe}", "--classifier", "{clf}", "--dataset", "cub", "--out", "{tmp}/file.txt"], "file.txt"),
        (["tokens", "--classes", "12"], "out of range"),
        (["generate", "--per-class", "0"], "generate.per_class (--per-class) must be from 1 to 10,000,000, got 0"),
        (["models", "show", "embedded:nope"], "no embedded model"),
    ],
)
def test_bad_input_one_line_exit_2(args, fragment, tmp_path, micro_classifier_path, micro_pipeline_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    (tmp_path / "bad.yaml").write_text("tokens:\n  lrr: 1\n")
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)).replace("{clf}", f"timm:test_resnet@{micro_classifier_path}")
            .replace("{pipe}", str(micro_pipeline_dir)) for a in args]
    before = sorted(os.listdir(tmp_path))
    _assert_one_line_error(invoke_err(*args), fragment)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written (no runs/ folder either)




# --- `ray job submit`: a relative --out would land in Ray's temporary upload folder -----------------

def test_the_ray_job_markers_are_rays_own():
    """rundir spells Ray's names out (reading a run never imports Ray); they must stay Ray's."""
    from ray._private.ray_constants import DEFAULT_RUNTIME_ENV_DIR_NAME
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    from augment.io.rundir import RAY_JOB_ENV, RAY_UPLOAD_DIR

    assert (RAY_JOB_ENV, RAY_UPLOAD_DIR) == (RAY_JOB_CONFIG_JSON_ENV_VAR, DEFAULT_RUNTIME_ENV_DIR_NAME)


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["build"], "--out runs/digits is relative inside a Ray job"),  # the default --out
        (["tokens", "--out", "relrun"], "--out relrun is relative inside a Ray job"),
        (["generate", "--baseline", "--out", "./runs/x"], "is relative inside a Ray job"),
        (["caso", "--out", "{tmp}/session/runtime_resources/working_dir_files/_ray_pkg_1/runs"],
         "inside Ray's temporary upload folder"),
    ],
)
def test_out_in_ray_job_refused_before_anything_is_written(args, fragment, tmp_path, monkeypatch):
    from augment.io.rundir import RAY_JOB_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, '{"runtime_env": {"working_dir": "gcs://_ray_pkg_1.zip"}, "metadata": {}}')
    result = invoke_err(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    _assert_one_line_error(result, fragment)
    assert f"pass an absolute --out on the head, e.g. --out {os.path.expanduser('~')}/runs/" in result.stderr
    assert os.listdir(tmp_path) == []  # nothing written


def test_absolute_out_in_ray_job_passes_the_check(tmp_path, monkeypatch):
    from augment.io.rundir import RAY_JOB_ENV

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    # past the --out check, the next one (preflight) speaks: the folder was accepted
    _assert_one_line_error(invoke_err("tokens", "--out", str(tmp_path / "run"), "--classes", "12"), "out of range")
    monkeypatch.delenv(RAY_JOB_ENV)
    _assert_one_line_error(invoke_err("tokens", "--out", "relrun", "--classes", "12"), "out of range")  # no job: fine


# --- verify: every present arm, and an arm with no shards fails (in `verify` and in `build`) ---------

def _fake_stages(monkeypatch, token_shards: bool):
    """run_tokens / run_generate stand-ins: tokens all done; the token arm's generate either writes
    shards or fails every unit after writing run.json (as a real failed generate does); the baseline
    arm gets shards. build's own verify then decides."""
    from pathlib import Path

    from augment.generate.runner import GenerateSummary
    from augment.io.rundir import RunDir, write_run_json
    from augment.tokens.runner import TokensSummary
    from tests.io import make_run

    def run_tokens(cfg, force=False, pool=None, inputs=None):
        return TokensSummary(stage="tokens", out=Path(cfg.out), done=0, skipped=10, failed=[], seconds=0.0, rows=[])

    def run_generate(cfg, baseline=False, force=False, pool=None, inputs=None):
        arm = RunDir(cfg.out).arm_dir("baseline" if baseline else "token")
        write_run_json(arm, cfg.to_dict(), "generate")
        failed = []
        if baseline or token_shards:
            make_run(arm.path)
        else:
            failed = ["shard 0: FileNotFoundError: relrun/tokens/0000-zero.safetensors"]
        return GenerateSummary(stage="generate", out=arm.path, done=0 if failed else 3, skipped=0, failed=failed,
                               seconds=0.0, classes=3, samples=8, shards=3, mean_confidence=None)

    monkeypatch.setattr("augment.tokens.runner.run_tokens", run_tokens)
    monkeypatch.setattr("augment.generate.runner.run_generate", run_generate)


def test_build_fails_verify_on_an_arm_without_shards(tmp_path, monkeypatch):
    _fake_stages(monkeypatch, token_shards=False)
    out = tmp_path / "run"
    r = invoke_err("build", "--out", str(out))
    assert r.exit_code == 1, r.output
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("  verify:"))
    assert line == (f"  verify:    1 problems (token: 0 shards, 1 problems, baseline: 3 shards); "
                    f"`augment verify {out}` lists them")
    assert f"problem:   token: no shards in {out / 'shards'}" in r.stderr

    r = invoke_err("verify", str(out))  # the verify command says the same
    assert r.exit_code == 1 and "token: no shards" in r.stderr and f"{out / 'baseline'}: 3 shards" in r.stdout


def test_build_verify_ok_names_every_arm(tmp_path, monkeypatch):
    _fake_stages(monkeypatch, token_shards=True)
    r = invoke_err("build", "--out", str(tmp_path / "run"))
    assert r.exit_code == 0, r.output
    assert "  verify:    ok (token: 3 shards, baseline: 3 shards)\n" in r.stdout


@pytest.mark.parametrize("command", ["build", "tokens", "generate", "caso"])
def test_sdxl_refused_before_anything_is_written(command, tmp_path, monkeypatch):
    import json

    model = tmp_path / "sdxl"
    model.mkdir()
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    monkeypatch.chdir(tmp_path)
    result = invoke_err(command, "--model", str(model), "--out", str(tmp_path / "run"))
    _assert_one_line_error(result, f"{model} is a StableDiffusionXLPipeline; augment supports Stable Diffusion 1.x/2.x")
    assert os.listdir(tmp_path) == ["sdxl"]  # no run folder


@pytest.mark.parametrize("command", ["tokens", "generate", "caso", "build"])
def test_a_second_writer_exits_2_at_once_naming_the_holder(command, tmp_path):
    from tests.io.test_lock import hold_lock

    out = tmp_path / "run"
    out.mkdir()
    holder = hold_lock(out)
    try:
        r = invoke_err(command, "--out", str(out), "--workers", "0")
    finally:
        holder.kill()
        holder.wait()
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"is being written by PID {holder.pid} on " in lines[0] and "resume with `" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == [".augment.lock"]
