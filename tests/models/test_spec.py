"""The one model-spec parser (augment/models/spec.py): every scheme, for each kind, and the bad specs."""

from __future__ import annotations

import dataclasses
import re

import pytest

from augment.errors import AugmentError
from augment.models.spec import (
    SCHEMES,
    ModelSpec,
    looks_like_path,
    parse_spec,
    require_supported,
    spec_forms,
    split_prefix,
)

MODEL_FORMS = "embedded:<name>, a local pipeline folder, or a hub id like stabilityai/stable-diffusion-2-1-base"
CLASSIFIER_FORMS = "embedded:<name>, timm:<arch>[@checkpoint], hf:<repo-or-folder>, or clip:<folder-or-hub-id>"


@pytest.mark.parametrize("text, kind, scheme, name, checkpoint", [
    ("embedded:tiny-digits", "backbone", "embedded", "tiny-digits", None),
    ("embedded:digits-guide", "classifier", "embedded", "digits-guide", None),
    ("embedded:x@y", "classifier", "embedded", "x@y", None),  # only timm: takes a checkpoint
    ("hf:someone/micro-sd", "backbone", "hf", "someone/micro-sd", None),
    ("hf:/models/vit", "classifier", "hf", "/models/vit", None),
    ("timm:resnet18", "classifier", "timm", "resnet18", None),
    ("timm:resnet18.a1_in1k@/ckpt/best.safetensors", "classifier", "timm", "resnet18.a1_in1k",
     "/ckpt/best.safetensors"),
    ("timm:resnet18@", "classifier", "timm", "resnet18", None),
    ("clip:ViT-B-32", "classifier", "clip", "ViT-B-32", None),
    ("stabilityai/stable-diffusion-2-1-base", "backbone", "hub", "stabilityai/stable-diffusion-2-1-base", None),
])
def test_schemes(text, kind, scheme, name, checkpoint):
    spec = parse_spec(text, kind)
    assert spec == ModelSpec(text, kind, scheme, name, checkpoint)
    assert str(spec) == text  # the text is what run.json and the manifests record


def test_a_local_folder_is_a_path_even_when_it_reads_like_a_hub_id(tmp_path, monkeypatch):
    assert parse_spec(str(tmp_path), "backbone").scheme == "path"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "owner" / "name").mkdir(parents=True)
    assert parse_spec("owner/name", "backbone") == ModelSpec("owner/name", "backbone", "path", "owner/name")
    assert parse_spec("owner/other", "backbone").scheme == "hub"


@pytest.mark.parametrize("text", ["not a spec!", "timm:resnet18", "clip:ViT-B-32"])
def test_bad_backbone_specs_keep_their_message(text):
    with pytest.raises(AugmentError) as e:
        parse_spec(text, "backbone")
    assert e.value.message == f"cannot read model spec {text!r}: use {MODEL_FORMS}"


@pytest.mark.parametrize("text", ["/nonexistent/sd", "a/b/c", "./sd", "~/no-such-sd"])
def test_a_missing_folder_does_not_exist(text):
    """Meant as a folder (looks_like_path), so the message says it is missing, not unreadable."""
    with pytest.raises(AugmentError, match=f"^model folder {re.escape(text)} does not exist; check the path"):
        parse_spec(text, "backbone")


@pytest.mark.parametrize("text", ["resnet18", "/models/clf.safetensors", "someone/vit", "TIMM:resnet18"])
def test_bad_classifier_specs_keep_their_message(text):
    with pytest.raises(AugmentError) as e:
        parse_spec(text, "classifier")
    assert e.value.message == f"cannot read classifier spec {text!r}: use {CLASSIFIER_FORMS}"


@pytest.mark.parametrize("text", [None, ""])
def test_no_classifier_given(text):
    with pytest.raises(AugmentError, match="^no classifier given: pass --classifier timm:<arch>@<checkpoint>"):
        parse_spec(text, "classifier")


def test_forms_come_from_the_table():
    assert spec_forms("backbone") == MODEL_FORMS
    assert spec_forms("classifier") == CLASSIFIER_FORMS
    assert {s.name for s in SCHEMES} == {"embedded", "hf", "timm", "clip", "path", "hub"}


def test_clip_needs_the_class_names_it_scores():
    from augment.models.classifier import load_classifier, read_classifier_source

    for call in (lambda: read_classifier_source("clip:ViT-B-32"), lambda: load_classifier("clip:ViT-B-32")):
        with pytest.raises(AugmentError, match="^classifier 'clip:ViT-B-32' scores the dataset's class names"):
            call()


def test_unsupported_schemes_are_refused_in_one_line(monkeypatch):
    import augment.models.spec as spec_module

    monkeypatch.setitem(spec_module.BY_NAME, "clip", dataclasses.replace(spec_module.BY_NAME["clip"], supported=False))
    with pytest.raises(AugmentError, match="clip: classifiers are not supported yet; use embedded:<name>"):
        require_supported(parse_spec("clip:ViT-B-32", "classifier"))
    assert require_supported(parse_spec("timm:resnet18", "classifier")).scheme == "timm"


def test_split_prefix():
    assert split_prefix("embedded:digits-judge") == ("embedded", "digits-judge")
    assert split_prefix("timm:a@b") == ("timm", "a@b")
    assert split_prefix("owner/name") == (None, "owner/name")


@pytest.mark.parametrize("text, expected", [
    ("/abs/sd", True), ("./sd", True), ("~/sd", True), ("models/sd/v1", True),
    ("owner/name", False), ("embedded:tiny-digits", False),
])
def test_looks_like_path(text, expected):
    assert looks_like_path(text) is expected


def test_models_show_reads_any_prefix():
    """`models show` describes timm specs too now (tests/cli/test_models_show.py has the forms)."""
    from click.testing import CliRunner

    from augment.cli.main import cli

    result = CliRunner().invoke(cli, ["models", "show", "timm:resnet18"])
    assert result.exit_code == 0, result.output
    assert "architecture: resnet18" in result.output
    assert CliRunner().invoke(cli, ["models", "show", "embedded:digits-guide"]).exit_code == 0
