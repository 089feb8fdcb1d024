"""A pipeline folder holding only fp16-variant weight files (``*.fp16.safetensors``, what the hub's
fp16 branches and ``save_pretrained(variant="fp16")`` write) loads: the variant is auto-detected
and passed to diffusers (issue 19)."""

from __future__ import annotations

import pytest
import torch

from augment.models.backbone import load_backbone, weights_variant


def test_an_fp16_only_folder_loads_with_its_variant(tmp_path, micro_pipeline_dir):
    from diffusers import StableDiffusionPipeline

    pipe = load_backbone(str(micro_pipeline_dir))
    folder = tmp_path / "fp16-only"
    pipe.save_pretrained(folder, variant="fp16")
    assert list((folder / "unet").glob("*.fp16.safetensors")) and not list((folder / "unet").glob("*model.safetensors"))
    assert weights_variant(folder) == "fp16" and weights_variant(micro_pipeline_dir) is None
    with pytest.raises((OSError, ValueError)):  # what diffusers does without the variant: the bug
        StableDiffusionPipeline.from_pretrained(folder, local_files_only=True, safety_checker=None,
                                                feature_extractor=None, requires_safety_checker=False)
    loaded = load_backbone(str(folder))
    for a, b in ((pipe.unet, loaded.unet), (pipe.vae, loaded.vae), (pipe.text_encoder, loaded.text_encoder)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
