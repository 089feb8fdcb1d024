"""The Diffusion object on the micro pipeline: generation is diffusers' own call, the training
sampler's gradient depth, noise, encode/decode and edits."""

from __future__ import annotations

import pytest
import torch

from augment.models.diffusion import Diffusion
from augment.seeds import initial_latents

RES = 32  # the micro pipeline's native resolution (8x8 latents)


def _images(n: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, RES, RES, generator=g)


def _embeddings(diffusion: Diffusion, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        cond = diffusion.encode_prompts(prompts)
        uncond = diffusion.encode_prompts([""] * len(prompts))
    return cond, uncond


def _start(diffusion: Diffusion, seeds: list[int]) -> torch.Tensor:
    latents = diffusion.initial_latents(seeds, RES, torch.float32)
    return latents * diffusion.scheduler.init_noise_sigma


def test_exposes_the_pipeline(micro_pipe):
    d = Diffusion(micro_pipe)
    assert d.pipe is micro_pipe and d.scheduler is micro_pipe.scheduler
    assert d.device == micro_pipe.unet.device and d.dtype == micro_pipe.unet.dtype
    assert d.latent_shape(RES) == (micro_pipe.unet.config.in_channels, 8, 8)


def test_initial_latents_are_the_seeded_noise(micro_pipe):
    d = Diffusion(micro_pipe)
    lat = d.initial_latents([3, 4], RES)
    assert lat.dtype == d.dtype and lat.shape == (2, *d.latent_shape(RES))
    assert torch.equal(lat, initial_latents([3, 4], d.latent_shape(RES), d.device, d.dtype))
    assert torch.equal(lat[1:], d.initial_latents([4], RES))  # a sample's noise does not depend on its batch


@pytest.mark.parametrize("negative_prompt", ["", "blurry"])
def test_generate_is_diffusers_own_call(micro_pipe, negative_prompt):
    d = Diffusion(micro_pipe)
    prompts, seeds = ["a photo of a cat", "a photo of a dog"], [11, 12]
    got = d.generate(prompts, seeds, steps=3, guidance_scale=4.0, negative_prompt=negative_prompt, resolution=RES)
    latents = initial_latents(seeds, d.latent_shape(RES), d.device, d.dtype)
    with torch.no_grad():
        want = micro_pipe(prompt=prompts, negative_prompt=[negative_prompt] * 2 if negative_prompt else None,
                          latents=latents, num_inference_steps=3, guidance_scale=4.0, height=RES, width=RES,
                          output_type="pt").images.float().clamp(0, 1)
    assert got.shape == (2, 3, RES, RES)
    assert torch.equal(got, want)
    again = d.generate(prompts, seeds, steps=3, guidance_scale=4.0, negative_prompt=negative_prompt, resolution=RES)
    assert torch.equal(got, again)


def test_generate_takes_one_negative_prompt_per_image(micro_pipe):
    d = Diffusion(micro_pipe)
    kw = dict(steps=2, guidance_scale=3.0, resolution=RES)
    mixed = d.generate(["a cat", "a dog"], [1, 2], negative_prompt=["", "a bird"], **kw)
    torch.testing.assert_close(mixed[:1], d.generate(["a cat"], [1], negative_prompt=None, **kw))
    torch.testing.assert_close(mixed[1:], d.generate(["a dog"], [2], negative_prompt="a bird", **kw))
    assert not torch.allclose(mixed[1:], d.generate(["a dog"], [2], negative_prompt="", **kw))


def test_grad_steps_0_has_no_gradient_and_1_has_one(micro_pipe):
    d = Diffusion(micro_pipe)
    d.pipe.unet.requires_grad_(False)
    cond, uncond = _embeddings(d, ["a photo of a cat"] * 2)
    start = _start(d, [1, 2])

    cond0 = cond.clone().requires_grad_(True)
    out0 = d.sample_latents(start, cond0, uncond, steps=3, guidance_scale=3.0, grad_steps=0)
    assert not out0.requires_grad and out0.grad_fn is None

    cond1 = cond.clone().requires_grad_(True)
    out1 = d.sample_latents(start, cond1, uncond, steps=3, guidance_scale=3.0, grad_steps=1)
    assert out1.requires_grad
    out1.square().mean().backward()
    assert cond1.grad is not None and float(cond1.grad.norm()) > 0


def test_gradient_depth_does_not_change_the_samples(micro_pipe):
    """How many steps keep the graph (and checkpointing) changes what the gradient sees, never the images."""
    d = Diffusion(micro_pipe)
    d.pipe.unet.requires_grad_(False)
    cond, uncond = _embeddings(d, ["a photo of a dog"] * 2)
    start = _start(d, [5, 6])
    ref = d.sample_latents(start, cond, uncond, steps=3, guidance_scale=3.0)
    grads = {}
    for grad_steps, ckpt in ((1, True), ("all", True), ("all", False)):
        c = cond.clone().requires_grad_(True)
        out = d.sample_latents(start, c, uncond, steps=3, guidance_scale=3.0, grad_steps=grad_steps,
                               checkpointing=ckpt)
        assert torch.equal(out, ref)
        out.square().mean().backward()
        grads[grad_steps, ckpt] = c.grad
    assert torch.allclose(grads["all", True], grads["all", False], atol=1e-6)  # checkpointing: same gradient
    assert not torch.allclose(grads[1, True], grads["all", True])  # deeper: another gradient


def test_encode_decode_images(micro_pipe):
    d = Diffusion(micro_pipe)
    imgs = _images(2)
    z = d.encode_images(imgs)
    assert z.shape == (2, *d.latent_shape(RES)) and not z.requires_grad
    assert torch.equal(z, d.encode_images(imgs))  # posterior mean: deterministic
    with torch.no_grad():
        out = d.decode(z)
    assert out.shape == imgs.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_straight_through_decode_clamps_forward_and_passes_gradient(micro_pipe):
    d = Diffusion(micro_pipe)
    z = (d.encode_images(_images(2)) * 6).requires_grad_(True)  # pushed out of range: pixels past 0 and 1
    hard, st = d.decode(z), d.decode(z, straight_through=True)
    assert torch.equal(hard, st)
    out_of_range = ((st.detach() == 0) | (st.detach() == 1)).float().mean()
    assert out_of_range > 0
    (g_hard,) = torch.autograd.grad(hard.sum(), z)
    (g_st,) = torch.autograd.grad(d.decode(z, straight_through=True).sum(), z)
    vae = micro_pipe.vae
    unclamped = vae.decode(z / vae.config.scaling_factor).sample / 2 + 0.5
    (g_raw,) = torch.autograd.grad(unclamped.sum(), z)
    torch.testing.assert_close(g_st, g_raw)  # the clamp is the identity backwards
    assert not torch.allclose(g_hard, g_raw)  # the hard clamp drops the clipped pixels' gradient


def test_predict_x0_inverts_the_noising(micro_pipe):
    d = Diffusion(micro_pipe)
    z0 = d.encode_images(_images(2))
    t = 500
    zt = d.noise_latents(z0, [7, 8], torch.full((2,), t, dtype=torch.long))
    noise = initial_latents([7, 8], tuple(z0.shape[1:]), d.device, torch.float32)
    assert torch.allclose(d.predict_x0(zt, noise, t), z0, atol=1e-4)  # the true noise gives back z0


def test_guided_output_is_classifier_free_guidance(micro_pipe):
    d = Diffusion(micro_pipe)
    cond, uncond = _embeddings(d, ["a cat"])
    x = d.initial_latents([1], RES)
    t = torch.tensor([400, 400])
    with torch.no_grad():
        plain = d.guided_output(torch.cat([x, x]), t, torch.cat([uncond, cond]), 1.0)
        only_cond = micro_pipe.unet(x, t[:1], encoder_hidden_states=cond).sample
        unguided = d.guided_output(torch.cat([x, x]), t, torch.cat([uncond, cond]), 0.0)
        only_uncond = micro_pipe.unet(x, t[:1], encoder_hidden_states=uncond).sample
    assert plain.shape == x.shape
    assert torch.allclose(plain, only_cond, atol=1e-5) and torch.allclose(unguided, only_uncond, atol=1e-5)


def test_edit_strength_and_negative_guidance(micro_pipe):
    imgs = _images(2)
    seeds = [1, 2]
    edit = Diffusion(micro_pipe).edit
    weak = edit("a cat", imgs, seeds, strength=0.1, steps=10, guidance_scale=3.0)
    strong = edit("a cat", imgs, seeds, strength=0.9, steps=10, guidance_scale=3.0)
    rev = edit("a cat", imgs, seeds, strength=0.9, steps=10, guidance_scale=-3.0)
    assert weak.shape == imgs.shape and torch.isfinite(strong).all()
    assert not torch.allclose(strong, rev)  # the sign of guidance changes the edit
    again = edit("a cat", imgs, seeds, strength=0.9, steps=10, guidance_scale=3.0)
    assert torch.equal(strong, again)  # seeded: deterministic
