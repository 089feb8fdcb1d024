"""``--classifier clip:<folder>``: a zero-shot guide from a transformers CLIP model (a micro random
CLIP built here), checked against transformers' own CLIP forward and image processor, and through
the real CLI (`augment tokens`, `augment generate`)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from augment.cli import cli
from augment.errors import AugmentError
from augment.models.classifier import load_classifier, read_classifier_source

NAMES = ["zero", "one", "two"]


def test_logits_are_clips_own_for_the_class_prompts(micro_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    clf = load_classifier(f"clip:{micro_clip_dir}", class_names=NAMES)
    assert clf.class_names == NAMES and clf.num_classes == 3
    images = torch.rand(4, 3, 32, 32)
    model, proc = CLIPModel.from_pretrained(micro_clip_dir), CLIPProcessor.from_pretrained(micro_clip_dir)
    pil = [Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)) for im in images]
    quantised = torch.stack([torch.from_numpy(np.array(p)).permute(2, 0, 1) for p in pil]).float() / 255
    ref = proc(text=[f"a photo of a {n}" for n in NAMES], images=pil, return_tensors="pt", padding=True)
    # the differentiable preprocessing is the processor's (same size: no resize, same mean/std)
    assert torch.allclose(clf.preprocess(quantised), ref["pixel_values"], atol=1e-5)
    with torch.no_grad():
        expected = model(**ref).logits_per_image
    assert torch.allclose(clf(quantised), expected, atol=1e-4)


def test_gradient_reaches_the_images_at_any_size(micro_clip_dir):
    clf = load_classifier(f"clip:{micro_clip_dir}", class_names=NAMES)
    images = torch.rand(2, 3, 48, 64, requires_grad=True)  # resized and centre-cropped to 32 in torch
    torch.nn.functional.cross_entropy(clf(images), torch.tensor([0, 2])).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in clf.parameters())


def test_the_source_carries_files_and_names_to_a_worker_without_the_folder(micro_clip_dir, tmp_path):
    folder = shutil.copytree(micro_clip_dir, tmp_path / "clip")
    source = read_classifier_source(f"clip:{folder}", NAMES)
    assert source.class_names == tuple(NAMES) and "model.safetensors" in source.files
    here = load_classifier(f"clip:{folder}", class_names=NAMES)
    shutil.rmtree(folder)
    there = load_classifier(source)  # no names passed: the source's
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(here(x), there(x))
    other = read_classifier_source(f"clip:{micro_clip_dir}", ["zero", "one"])
    from augment.models.cache import _source_key

    assert _source_key(other) != _source_key(read_classifier_source(f"clip:{micro_clip_dir}", NAMES))


def test_a_missing_model_is_one_line(tmp_path):
    with pytest.raises(AugmentError, match="cannot load CLIP model .* offline"):
        load_classifier(f"clip:{tmp_path / 'nothing'}", class_names=NAMES)


SMALL = "workers: 0\ntokens:\n  max_steps: 1\n  batch_size: 2\n  steps: 3\n  val_seeds: 2\n  val_every: 1\n"


@pytest.mark.slow
def test_tokens_and_generate_through_the_cli(micro_clip_dir, tmp_path):
    (tmp_path / "small.yaml").write_text(SMALL)
    out = tmp_path / "run"
    spec = f"clip:{micro_clip_dir}"
    common = ["--config", str(tmp_path / "small.yaml"), "--classifier", spec, "--classes", "0,1", "--out", str(out)]
    runner = CliRunner()
    r = runner.invoke(cli, ["tokens", *common])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["generate", *common, "--per-class", "2", "--shard-size", "4", "--steps", "3"])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["config"]["classifier"] == spec
    import pyarrow.parquet as pq

    from augment.io.rundir import RunDir

    table = pq.read_table(RunDir(out).manifest_path(0))
    confidence = table.column("guide_confidence").to_pylist()
    assert len(confidence) == 4 and all(0 < c < 1 for c in confidence)  # the CLIP guide scored each image
