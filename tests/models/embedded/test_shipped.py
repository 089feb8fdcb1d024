"""The SHIPPED embedded models under augment/models/embedded/ (built by
`python -m augment.models.embedded.build`): they load offline, generate, and the classifiers are
accurate on the 450 held-out test digits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import augment.models.embedded as embedded_pkg
from augment.datasets.digits import DIGIT_NAMES, digits_split, to_rgb32

EMBEDDED = Path(embedded_pkg.__file__).parent
PIPE_DIR = EMBEDDED / "tiny-digits"

pytestmark = pytest.mark.skipif(
    not (PIPE_DIR / "model_index.json").exists(), reason="embedded models not built yet"
)


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(PIPE_DIR, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def test_pipeline_generates(pipe):
    torch.set_num_threads(2)
    out = pipe(
        ["a photo of the digit three", "a photo of the digit zero"],
        num_inference_steps=10,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert out.shape == (2, 32, 32, 3)
    assert np.isfinite(out).all()
    assert out.std() > 0.05


def test_prompt_words_are_single_tokens(pipe):
    prompt = "a photo of the digit three"
    for w in prompt.split():
        assert len(pipe.tokenizer(w, add_special_tokens=False).input_ids) == 1, w
    assert len(pipe.tokenizer(prompt, add_special_tokens=False).input_ids) == len(prompt.split())
    for name in DIGIT_NAMES:
        assert len(pipe.tokenizer(name, add_special_tokens=False).input_ids) == 1, name


def test_shipped_files_small():
    for p in EMBEDDED.rglob("*"):
        if p.is_file():
            assert p.stat().st_size < 10 * 2**20, p


@pytest.mark.parametrize("name", ["digits-guide", "digits-judge"])
def test_classifier_accuracy_on_test_digits(name):
    import timm
    from safetensors.torch import load_file

    meta = json.loads((EMBEDDED / f"{name}.json").read_text())
    model = timm.create_model(
        meta["arch"], pretrained=False, num_classes=len(meta["class_names"]), **meta["kwargs"]
    )
    model.load_state_dict(load_file(str(EMBEDDED / f"{name}.safetensors")))
    model.eval()
    x8, y = digits_split()["test"]
    x = torch.from_numpy(np.stack([np.asarray(to_rgb32(im), dtype=np.float32) / 255.0 for im in x8]))
    x = x.permute(0, 3, 1, 2)
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        pred = model((x - mean) / std).argmax(-1).numpy()
    acc = float((pred == y).mean())
    assert len(y) == 450
    assert acc >= 0.95, acc
