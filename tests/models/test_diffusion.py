"""The Diffusion object on the micro pipeline: generation is diffusers' own call, the training
sampler's gradient depth, noise, encode/decode and edits."""

from __future__ import annotations

import pytest
import torch

from augment.models.diffusion import Diffusion, block_checkpointing
from augment.seeds import initial_latents, step_generators

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
    """The unscaled starting noise (sample_latents scales it once the schedule is set)."""
    return diffusion.initial_latents(seeds, RES, torch.float32)


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
                          latents=latents, generator=step_generators(seeds), num_inference_steps=3,
                          guidance_scale=4.0, height=RES, width=RES, output_type="pt").images.float().clamp(0, 1)
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
    out0 = d.sample_latents(start, cond0, uncond, steps=3, guidance_scale=3.0, grad_steps=0, seeds=[1, 2])
    assert not out0.requires_grad and out0.grad_fn is None

    cond1 = cond.clone().requires_grad_(True)
    out1 = d.sample_latents(start, cond1, uncond, steps=3, guidance_scale=3.0, grad_steps=1, seeds=[1, 2])
    assert out1.requires_grad
    out1.square().mean().backward()
    assert cond1.grad is not None and float(cond1.grad.norm()) > 0


def test_gradient_depth_does_not_change_the_samples(micro_pipe):
    """How many steps keep the graph (and checkpointing) changes what the gradient sees, never the images."""
    d = Diffusion(micro_pipe)
    d.pipe.unet.requires_grad_(False)
    cond, uncond = _embeddings(d, ["a photo of a dog"] * 2)
    start = _start(d, [5, 6])
    ref = d.sample_latents(start, cond, uncond, steps=3, guidance_scale=3.0, seeds=[5, 6])
    grads = {}
    for grad_steps, ckpt in ((1, True), ("all", True), ("all", False)):
        c = cond.clone().requires_grad_(True)
        out = d.sample_latents(start, c, uncond, steps=3, guidance_scale=3.0, grad_steps=grad_steps,
                               checkpointing=ckpt, seeds=[5, 6])
        assert torch.equal(out, ref)
        out.square().mean().backward()
        grads[grad_steps, ckpt] = c.grad
    assert torch.allclose(grads["all", True], grads["all", False], atol=1e-6)  # checkpointing: same gradient
    assert not torch.allclose(grads[1, True], grads["all", True])  # deeper: another gradient


def test_block_checkpointing_is_on_only_inside_and_only_where_asked(micro_pipe):
    """The flag lives on a cached, shared model: switched on for the call, restored after it."""
    unet = micro_pipe.unet
    assert not unet.is_gradient_checkpointing
    with block_checkpointing(unet):
        assert unet.is_gradient_checkpointing
    assert not unet.is_gradient_checkpointing
    with block_checkpointing(unet, enabled=False):
        assert not unet.is_gradient_checkpointing
    unet.enable_gradient_checkpointing()  # a user's own setting is left as it was
    try:
        with block_checkpointing(unet):
            pass
        assert unet.is_gradient_checkpointing
    finally:
        unet.disable_gradient_checkpointing()


def _watch_checkpoints(monkeypatch) -> list[object]:
    """Record what is checkpointed: the module (or object) whose method each checkpoint call runs,
    through diffusers' default function and through augment's own calls."""
    import augment.models.diffusion as diffusion_module

    calls: list[object] = []
    real = torch.utils.checkpoint.checkpoint

    def spy(fn, *args, **kwargs):
        calls.append(getattr(fn, "__self__", fn))
        return real(fn, *args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    monkeypatch.setattr(diffusion_module, "checkpoint", spy)
    return calls


def test_checkpointing_runs_inside_the_unet_blocks_and_the_decoder(micro_pipe, monkeypatch):
    """``checkpointing`` checkpoints inside the UNet's blocks and the VAE decoder's, with gradient
    only, and leaves the images and the gradient through sampler + decode as they are without it."""
    d = Diffusion(micro_pipe)
    d.pipe.unet.requires_grad_(False)
    d.pipe.vae.requires_grad_(False)
    cond, uncond = _embeddings(d, ["a photo of a bird"] * 2)
    start = _start(d, [3, 4])
    weight = torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(1))
    calls = _watch_checkpoints(monkeypatch)
    out = {}
    for ckpt in (False, True):
        c = cond.clone().requires_grad_(True)
        calls.clear()
        images = d.decode(d.sample_latents(start, c, uncond, steps=3, guidance_scale=3.0, grad_steps="all",
                                           checkpointing=ckpt, seeds=[3, 4]), straight_through=True, checkpointing=ckpt)
        (images * weight).sum().backward()
        out[ckpt] = images.detach(), c.grad, list(calls)
    assert torch.equal(out[True][0], out[False][0])  # same images
    torch.testing.assert_close(out[True][1], out[False][1], rtol=1e-5, atol=1e-7)  # same gradient
    assert out[False][2] == []
    seen = out[True][2]
    unet_parts = {id(m) for m in d.pipe.unet.modules()}
    decoder_parts = {id(m) for m in d.pipe.vae.decoder.modules()}
    assert {type(m).__name__ for m in seen if id(m) in unet_parts} >= {"ResnetBlock2D", "BasicTransformerBlock"}
    assert {type(m).__name__ for m in seen if id(m) in decoder_parts} >= {"ResnetBlock2D", "Upsample2D"}
    assert any(isinstance(m, Diffusion) for m in seen)  # and each gradient step whole
    assert not d.pipe.unet.is_gradient_checkpointing
    assert not any("forward" in vars(m) for m in d.pipe.vae.decoder.modules())  # the layers' own forward again
    calls.clear()
    with torch.no_grad():  # generation and validation: nothing is checkpointed
        d.decode(d.sample_latents(start, cond, uncond, steps=2, guidance_scale=3.0, seeds=[3, 4]))
    assert calls == []


def test_one_step_prediction_checkpointed_has_the_plain_gradient(micro_pipe):
    """CASO's step (one guided UNet call, x0, decode) checkpoints by default: same loss, same gradient."""
    d = Diffusion(micro_pipe)
    d.pipe.unet.requires_grad_(False)
    d.pipe.vae.requires_grad_(False)
    cond, uncond = _embeddings(d, ["a cat", "a cat"])
    zt = d.noise_latents(d.encode_images(_images(2)), [1, 2], torch.full((2,), 400, dtype=torch.long))
    tt = torch.full((4,), 400, dtype=torch.long)
    grads, losses = [], []
    for ckpt in (False, True):
        c = cond.clone().requires_grad_(True)
        x0 = d.predict_x0(zt, d.guided_output(torch.cat([zt, zt]), tt, torch.cat([uncond, c]), 5.0, ckpt), 400)
        loss = d.decode(x0, checkpointing=ckpt).square().mean()
        loss.backward()
        grads.append(c.grad)
        losses.append(loss.detach())
    assert torch.equal(losses[0], losses[1])
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)


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


def test_ddim_inversion_then_unguided_denoising_reconstructs_the_latent():
    """The paper's edit starts from a DDIM-inverted latent: denoising it with no guidance (the empty
    prompt it was inverted under) must give the real image's latent back, which SDEdit's fresh
    noise at the same strength does not. On the shipped tiny model (7 MB): DDIM inversion is exact
    only when the noise prediction varies smoothly along the path, true of a trained UNet and not
    of the randomly initialised micro one (whose round trip is off by more than the latent's norm)."""
    from augment.models.backbone import load_backbone

    pipe = load_backbone("embedded:tiny-digits", device="cpu")
    d = Diffusion(pipe)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    z0 = d.encode_images(torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)))
    steps = 50
    start = d.edit_start(steps, 0.5)
    zt = d.invert(z0, steps, start)
    uncond = d.encode_prompts(["", ""])
    with torch.no_grad():
        back = d.sample_latents(zt, uncond, uncond, steps, 0.0, start=start, scheduler=d.ddim_scheduler(), seeds=[1, 2])
        d.scheduler.set_timesteps(steps)
        noised = d.noise_latents(z0, [1, 2], d.scheduler.timesteps[start].repeat(2))
        sdedit = d.sample_latents(noised, uncond, uncond, steps, 0.0, start=start, seeds=[1, 2])
    err = (back - z0).norm() / z0.norm()
    assert err < 0.08
    assert err < 0.2 * (sdedit - z0).norm() / z0.norm()
    assert not torch.allclose(zt, z0, atol=1e-3)  # it did move to the noise level


def test_ddim_edit_modes(micro_pipe):
    imgs = _images(2)
    d = Diffusion(micro_pipe)
    a = d.edit("a cat", imgs, [1, 2], strength=0.6, steps=10, guidance_scale=5.0, mode="ddim")
    b = d.edit("a cat", imgs, [7, 8], strength=0.6, steps=10, guidance_scale=5.0, mode="ddim")
    assert torch.equal(a, b)  # deterministic: the seeds play no part
    one = d.edit("a cat", imgs, [1, 2], strength=0.6, steps=10, guidance_scale=5.0, mode="ddim", guided_step=0)
    assert not torch.allclose(one, a)  # guidance at one step only is another edit
    rev = d.edit("a cat", imgs, [1, 2], strength=0.6, steps=10, guidance_scale=-5.0, mode="ddim")
    assert not torch.allclose(rev, a)
    with pytest.raises(ValueError, match="sdedit or ddim"):
        d.edit("a cat", imgs, [1, 2], strength=0.6, steps=10, guidance_scale=5.0, mode="pnp")
