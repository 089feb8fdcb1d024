"""The sampler on every scheduler the CLI accepts (``augment.models.backbone.SCHEDULERS``).

Three ways a non-default scheduler went wrong, each checked here on the micro pipeline:

* per-step activation checkpointing must not change the gradient (Euler's ``scale_model_input``
  once ran again at recompute time, with the step index of the last step);
* the starting noise is scaled by ``init_noise_sigma`` *after* ``set_timesteps`` (Euler's value
  depends on the schedule);
* the noise stochastic schedulers (DDPM) add at each step comes from the samples' seeds, not the
  global RNG, in generation and in training alike.
"""

from __future__ import annotations

import copy

import pytest
import torch

from augment.models.backbone import SCHEDULERS, set_scheduler
from augment.models.diffusion import Diffusion
from augment.seeds import initial_latents

RES = 32  # the micro pipeline's native resolution (8x8 latents)
STEPS = 4
GUIDANCE = 3.0
ALL_SCHEDULERS = sorted(SCHEDULERS)


def _diffusion(pipe, scheduler: str) -> Diffusion:
    pipe.unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    return Diffusion(set_scheduler(pipe, scheduler))


def _uncond(d: Diffusion, n: int) -> torch.Tensor:
    with torch.no_grad():
        return d.encode_prompts([""] * n)


def _token_gradient(d: Diffusion, seeds: list[int], grad_steps: int | str, checkpointing: bool) -> torch.Tensor:
    """Gradient of a fixed projection of the sampled latents w.r.t. the input embedding of the word
    "cat" (swapped in by a forward hook, as token training does)."""
    emb = d.pipe.text_encoder.get_input_embeddings()
    token_id = d.pipe.tokenizer.convert_tokens_to_ids("cat</w>")
    vector = emb.weight[token_id].detach().clone().requires_grad_(True)

    def hook(module, inputs, output):
        return torch.where((inputs[0] == token_id).unsqueeze(-1), vector.to(output.dtype), output)

    handle = emb.register_forward_hook(hook)
    try:
        cond = d.encode_prompts(["a photo of a cat"] * len(seeds))
        noise = d.initial_latents(seeds, RES, torch.float32)
        out = d.sample_latents(noise, cond, _uncond(d, len(seeds)), STEPS, GUIDANCE, grad_steps=grad_steps,
                               checkpointing=checkpointing, seeds=seeds)
        weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
        (out * weight).sum().backward()
    finally:
        handle.remove()
    return vector.grad


@pytest.mark.parametrize("grad_steps", [1, 2, "all"])
@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_checkpointing_does_not_change_the_gradient(micro_pipe, scheduler, grad_steps):
    d = _diffusion(micro_pipe, scheduler)
    plain = _token_gradient(d, [1, 2], grad_steps, checkpointing=False)
    checkpointed = _token_gradient(d, [1, 2], grad_steps, checkpointing=True)
    assert float(plain.norm()) > 0
    cosine = float(torch.nn.functional.cosine_similarity(plain, checkpointed, dim=0))
    assert cosine > 0.9999, f"{scheduler}, grad_steps {grad_steps}: cosine {cosine}"
    assert torch.allclose(checkpointed, plain, rtol=1e-4, atol=1e-6 * float(plain.abs().max()))


@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_starting_noise_is_scaled_by_the_sigma_of_the_schedule(micro_pipe, scheduler):
    d = _diffusion(micro_pipe, scheduler)
    fresh = copy.deepcopy(d.scheduler)
    sigma_before = float(fresh.init_noise_sigma)
    fresh.set_timesteps(STEPS)
    sigma = float(fresh.init_noise_sigma)
    if scheduler == "euler":  # the case that makes this test bite: the 1000-step sigma is much larger
        assert sigma_before > 1.5 * sigma
    seen = []
    scale = d.scheduler.scale_model_input

    def spy(sample, timestep):
        seen.append(sample.detach().clone())
        return scale(sample, timestep)

    d.scheduler.scale_model_input = spy
    noise = d.initial_latents([3, 4], RES, torch.float32)
    with torch.no_grad():
        d.sample_latents(noise, d.encode_prompts(["a dog"] * 2), _uncond(d, 2), STEPS, GUIDANCE, seeds=[3, 4])
    assert len(seen) == len(fresh.timesteps)  # PNDM's Runge-Kutta warm-up calls the model more than STEPS times
    assert torch.allclose(seen[0], torch.cat([noise, noise]) * sigma, rtol=1e-6, atol=1e-6)


def _generate(d: Diffusion, seeds: list[int], prompts: list[str] | None = None) -> torch.Tensor:
    prompts = prompts or ["a photo of a cat"] * len(seeds)
    return d.generate(prompts, seeds, steps=STEPS, guidance_scale=GUIDANCE, negative_prompt=None, resolution=RES)


def _train_sample(d: Diffusion, seeds: list[int]) -> torch.Tensor:
    """The training sampler's images (no gradient needed to see its noise)."""
    with torch.no_grad():
        cond = d.encode_prompts(["a photo of a cat"] * len(seeds))
        latents = d.sample_latents(d.initial_latents(seeds, RES, torch.float32), cond, _uncond(d, len(seeds)),
                                   STEPS, GUIDANCE, seeds=seeds)
        return d.decode(latents)


@pytest.mark.parametrize("sample", [_generate, _train_sample], ids=["generate", "training"])
@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_seeds_fix_the_images_whatever_the_global_rng(micro_pipe, scheduler, sample):
    d = _diffusion(micro_pipe, scheduler)
    torch.manual_seed(1)
    first = sample(d, [7, 8])
    torch.manual_seed(2)
    torch.rand(1000)  # other use of the global RNG in between
    second = sample(d, [7, 8])
    assert torch.equal(first, second)
    assert not torch.equal(first[0], first[1])


@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_a_sample_does_not_depend_on_its_batch(micro_pipe, scheduler):
    """The seeds promise (augment/seeds.py): a sample is the same alone or in a batch, step noise included."""
    d = _diffusion(micro_pipe, scheduler)
    batch = _generate(d, [21, 22], ["a photo of a dog", "a photo of a cat"])
    alone = _generate(d, [22])
    assert torch.allclose(batch[1:], alone, atol=1e-5)


@pytest.mark.parametrize("scheduler", ALL_SCHEDULERS)
def test_training_sampler_matches_generation(micro_pipe, scheduler):
    """The two loops (diffusers' pipeline for generation, ours for training) make the same images:
    same starting scale, same step noise, same guidance."""
    d = _diffusion(micro_pipe, scheduler)
    seeds = [31, 32]
    assert torch.allclose(_train_sample(d, seeds), _generate(d, seeds), atol=1e-5)


def test_step_noise_is_not_the_starting_noise(micro_pipe):
    """The step generators are seeded apart from the starting noise, so DDPM's first added noise
    is no copy of the latent it starts from."""
    d = _diffusion(micro_pipe, "ddpm")
    drawn = []
    step = d.scheduler.step

    def spy(*args, generator=None, **kwargs):
        drawn.append(torch.randn(d.latent_shape(RES), generator=copy.deepcopy(generator[0])))
        return step(*args, generator=generator, **kwargs)

    d.scheduler.step = spy
    _train_sample(d, [5])
    start = initial_latents([5], d.latent_shape(RES), d.device, torch.float32)[0]
    assert drawn and not torch.allclose(drawn[0], start)
