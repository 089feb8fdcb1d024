"""augment/models/speed.py on the micro pipeline: channels_last, fused QKV and the compiled UNet give
the images the plain pipeline gives (within float tolerance), undo exactly, and stay off on the CPU
unless forced."""

from __future__ import annotations

import torch

from augment.config import Config
from augment.models.diffusion import Diffusion
from augment.models.speed import compiled_unet, tune_pipeline, tuning_of

RES = 32
PROMPTS = ["a photo of a zero", "a photo of a one"]


def _generate(pipe) -> torch.Tensor:
    return Diffusion(pipe).generate(PROMPTS, [3, 4], 2, 5.0, None, RES)


def test_off_on_the_cpu_unless_forced(micro_pipe):
    processors = {type(p).__name__ for p in micro_pipe.unet.attn_processors.values()}
    assert tune_pipeline(micro_pipe, channels_last=True, fuse_qkv=True) == {"channels_last": False, "fuse_qkv": False}
    assert {type(p).__name__ for p in micro_pipe.unet.attn_processors.values()} == processors
    assert micro_pipe.unet.conv_in.weight.is_contiguous()


def test_forced_speedups_match_the_plain_images_and_undo_exactly(micro_pipe):
    plain = _generate(micro_pipe)
    applied = tune_pipeline(micro_pipe, channels_last=True, fuse_qkv=True, force=True)
    assert applied == tuning_of(micro_pipe) == {"channels_last": True, "fuse_qkv": True}
    assert micro_pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    names = {type(p).__name__ for p in micro_pipe.unet.attn_processors.values()}
    assert names == {"FusedAttnProcessor2_0"}
    # the fused projections are frozen like the rest (a token step on the cached pipe trains none of them)
    fused = [m for m in micro_pipe.unet.modules() if hasattr(m, "to_qkv") or hasattr(m, "to_kv")]
    assert fused and not any(p.requires_grad for m in fused for n in ("to_qkv", "to_kv")
                             if hasattr(m, n) for p in getattr(m, n).parameters())
    fast = _generate(micro_pipe)
    assert fast.shape == plain.shape
    assert torch.allclose(fast, plain, atol=1e-4), float((fast - plain).abs().max())
    assert tune_pipeline(micro_pipe, channels_last=True, fuse_qkv=True, force=True) == applied  # idempotent
    tune_pipeline(micro_pipe, channels_last=False, fuse_qkv=False, force=True)
    assert tuning_of(micro_pipe) == {"channels_last": False, "fuse_qkv": False}
    assert torch.equal(_generate(micro_pipe), plain)  # undone: the very same computation again


def test_compiled_unet_is_swapped_in_for_the_call_only_and_built_once(micro_pipe):
    plain = _generate(micro_pipe)
    own = micro_pipe.unet
    with compiled_unet(micro_pipe, backend="eager"):
        compiled = micro_pipe.unet
        assert compiled is not own and compiled._orig_mod is own
        images = _generate(micro_pipe)
    assert micro_pipe.unet is own
    assert torch.allclose(images, plain, atol=1e-5)
    with compiled_unet(micro_pipe, backend="eager"):
        assert micro_pipe.unet is compiled  # compiled once per pipeline
    with compiled_unet(micro_pipe, enabled=False):
        assert micro_pipe.unet is own


def test_settings_leave_recorded_configs_unchanged_at_their_defaults():
    cfg = Config()
    recorded = cfg.to_dict()["generate"]
    assert not {"channels_last", "fuse_qkv", "compile"} & set(recorded)
    cfg.generate.compile = True
    cfg.generate.fuse_qkv = False
    recorded = cfg.to_dict()["generate"]
    assert recorded["compile"] is True and recorded["fuse_qkv"] is False and "channels_last" not in recorded
