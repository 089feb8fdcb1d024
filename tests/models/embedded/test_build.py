"""Smoke test of the embedded-model build: a handful of steps per part, then load what it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from augment.datasets.digits import DIGIT_NAMES
from augment.models.embedded.build import build_embedded
from augment.models.embedded.captions import caption_table, sample_caption_indices
from augment.models.embedded.text import build_tokenizer, tokenizer_words


@pytest.fixture(scope="module")
def smoke_build(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("emb") / "embedded"
    out.mkdir()
    (out / "__init__.py").write_text("")  # files the build does not produce are kept
    summary = build_embedded(out, budget="smoke", seed=0)
    return out, summary


def test_layout_and_cards(smoke_build):
    out, summary = smoke_build
    assert (out / "__init__.py").exists()
    assert not list(out.parent.glob(".embedded.tmp-*"))
    for name in (
        "tiny-digits/model_index.json",
        "tiny-digits/card.json",
        "digits-guide.safetensors",
        "digits-guide.json",
        "digits-judge.safetensors",
        "digits-judge.json",
    ):
        assert (out / name).is_file(), name
    card = json.loads((out / "tiny-digits" / "card.json").read_text())
    assert card["budget"] == "smoke"
    assert set(card["wall_time_s"]) >= {
        "tokenizer",
        "vae",
        "unet_text_encoder",
        "guide",
        "judge",
        "evaluation",
        "total",
    }
    assert {"by_guide", "by_judge"} <= set(card["evaluation"])
    assert card["caption_scheme"]["confusable_swaps"]["three->eight"] == 0.5
    for size in summary["sizes"].values():
        assert size < 10 * 2**20


def test_pipeline_loads_offline_and_generates(smoke_build):
    from diffusers import StableDiffusionPipeline

    out, _ = smoke_build
    pipe = StableDiffusionPipeline.from_pretrained(out / "tiny-digits", local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.model_max_length == 32
    ids = pipe.tokenizer("a photo of the digit three", add_special_tokens=False).input_ids
    assert len(ids) == 6
    img = pipe(
        ["a photo of the digit seven"] * 2,
        num_inference_steps=2,
        guidance_scale=7.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert img.shape == (2, 32, 32, 3)
    # textual inversion: a new token loads into this tokenizer / text encoder
    emb = torch.zeros(pipe.text_encoder.config.hidden_size)
    pipe.load_textual_inversion(emb, token="<digit-x>")
    assert len(pipe.tokenizer("a <digit-x> photo", add_special_tokens=False).input_ids) == 3


@pytest.mark.parametrize("name", ["digits-guide", "digits-judge"])
def test_classifier_sidecar_and_weights(smoke_build, name):
    import timm
    from safetensors.torch import load_file

    out, _ = smoke_build
    meta = json.loads((out / f"{name}.json").read_text())
    assert set(meta) == {
        "arch",
        "kwargs",
        "class_names",
        "input_size",
        "mean",
        "std",
        "interpolation",
        "crop_pct",
        "card",
    }
    assert meta["class_names"] == DIGIT_NAMES
    assert meta["input_size"] == [3, 32, 32]
    assert {"config", "seed", "data_split", "wall_time_s", "test_accuracy", "per_class_test_accuracy"} <= set(
        meta["card"]
    )
    model = timm.create_model(meta["arch"], pretrained=False, num_classes=10, **meta["kwargs"])
    model.load_state_dict(load_file(str(out / f"{name}.safetensors")))
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_tokenizer_words_are_single_tokens(tmp_path):
    tok = build_tokenizer(tmp_path)
    for w in tokenizer_words() + DIGIT_NAMES + ["bird", "realistic", "resolution"]:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    merges = (tmp_path / "merges.txt").read_text().splitlines()[1:]
    assert all("</w>" not in m.split() for m in merges)
    # byte fallback: anything tokenizes, nothing maps to the unknown token
    ids = tok("zebra 42 é!", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in ids


def test_caption_sampling_is_deterministic_and_swaps():
    import numpy as np

    labels = np.full(4000, 3)
    a = sample_caption_indices(labels, np.random.default_rng(0))
    b = sample_caption_indices(labels, np.random.default_rng(0))
    assert (a == b).all()
    captions, groups = caption_table()
    named = [captions[i] for i in a if i in groups["named:3"] + groups["named:8"]]
    frac_eight = np.mean([c.endswith("eight") for c in named])
    assert 0.45 < frac_eight < 0.55


def test_shape_captions_name_the_true_digit_and_are_single_tokens(tmp_path):
    """Shape captions are never swapped: they are the other words a class token can reach."""
    import numpy as np

    from augment.models.embedded.captions import P_SHAPE, SHAPE_WORDS

    tok = build_tokenizer(tmp_path)
    for w in SHAPE_WORDS:
        assert len(tok(w, add_special_tokens=False).input_ids) == 1, w
    captions, groups = caption_table()
    for digit in (3, 8):
        idx = sample_caption_indices(np.full(4000, digit), np.random.default_rng(1))
        shaped = [captions[i] for i in idx if any(i in groups[f"shape:{d}"] for d in range(10))]
        assert abs(len(shaped) / len(idx) - P_SHAPE) < 0.03
        assert shaped and all(SHAPE_WORDS[digit] in c for c in shaped)
