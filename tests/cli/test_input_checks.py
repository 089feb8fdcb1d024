"""A command's input checks report every problem at once, one ``Error:`` line each, exit 2, before
any model loads; a missing --model folder says it does not exist (augment.inputs.RunInputs.check)."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from augment.cli import cli

FAST = ("--workers", "0")


def _errors(args: list[str]) -> list[str]:
    result = CliRunner().invoke(cli, args, prog_name="augment")
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert all(ln.startswith("Error: ") for ln in lines), lines
    return lines


@pytest.fixture()
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return tmp_path


@pytest.mark.parametrize("command", ["tokens", "generate", "caso", "build"])
def test_model_classifier_and_classes_reported_together(command, in_tmp, monkeypatch):
    """Three independent problems -> three lines, in one run, and no model was loaded for them."""
    import augment.models.classifier as classifier

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the cheap checks reported")

    monkeypatch.setattr(classifier, "load_classifier", no_load)
    extra = ("--baseline",) if command == "generate" else ()
    lines = _errors([command, "--model", str(in_tmp / "no-such-pipeline"),
                     "--classifier", f"timm:test_resnet@{in_tmp}/none.safetensors",
                     "--classes", "0-12", "--out", str(in_tmp / "run"), *extra, *FAST])
    assert len(lines) == 3, lines
    assert any("class 12 is out of range" in ln for ln in lines), lines
    assert any(f"model folder {in_tmp / 'no-such-pipeline'} does not exist" in ln for ln in lines), lines
    assert any("none.safetensors does not exist" in ln for ln in lines), lines
    assert not (in_tmp / "run").exists()


def test_class_count_from_the_checkpoint_with_the_model_problem(in_tmp, micro_classifier_path, monkeypatch):
    """The classifier's 3 outputs are read from its files (no load) and reported beside a bad model."""
    import augment.models.classifier as classifier

    monkeypatch.setattr(classifier, "load_classifier", lambda *a, **k: pytest.fail("model loaded"))
    lines = _errors(["tokens", "--model", "/no/such/sd", "--classifier", f"timm:test_resnet@{micro_classifier_path}",
                     "--out", str(in_tmp / "run"), *FAST])
    assert len(lines) == 2, lines
    assert "model folder /no/such/sd does not exist" in lines[0]
    assert "3 outputs but the dataset has 10 classes" in lines[1]


def test_class_count_from_the_safetensors_header(in_tmp, micro_classifier_path, micro_pipeline_dir, monkeypatch):
    """Without a sidecar the count comes from the head's shape in the safetensors header."""
    import augment.models.classifier as classifier

    bare = in_tmp / "bare.safetensors"
    shutil.copy(micro_classifier_path, bare)  # no bare.json beside it
    monkeypatch.setattr(classifier, "load_classifier", lambda *a, **k: pytest.fail("model loaded"))
    lines = _errors(["tokens", "--model", str(micro_pipeline_dir), "--classifier", f"timm:test_resnet@{bare}",
                     "--classes", "3,3", "--out", str(in_tmp / "run"), *FAST])
    assert len(lines) == 2, lines
    assert "class 3 is selected twice" in lines[0], lines
    assert "3 outputs but the dataset has 10 classes" in lines[1]


def test_one_problem_stays_one_line(in_tmp):
    lines = _errors(["tokens", "--model", "/no/such/sd", "--out", str(in_tmp / "run"), *FAST])
    assert lines == ["Error: model folder /no/such/sd does not exist; check the path (a diffusers pipeline folder "
                     "saved with save_pretrained), or pass a hub id like stabilityai/stable-diffusion-2-1-base"]


@pytest.mark.parametrize("spec, fragment", [
    ("/abs/missing/sd", "model folder /abs/missing/sd does not exist"),
    ("./rel/missing", "model folder ./rel/missing does not exist"),
    ("not a spec!", "cannot read model spec"),  # neither a path nor a hub id
])
def test_missing_model_path_says_does_not_exist(spec, fragment, in_tmp):
    (line,) = _errors(["tokens", "--model", spec, "--out", str(in_tmp / "run"), *FAST])
    assert fragment in line, line
