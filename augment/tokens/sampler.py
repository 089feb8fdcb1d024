"""A differentiable classifier-free-guidance sampling loop over diffusers components.

``StableDiffusionPipeline.__call__`` runs under ``torch.no_grad``, so token training drives the
same components (text encoder, UNet, scheduler, VAE) itself. ``grad_steps`` sets how many of the
final denoising steps the gradient flows through: 1 is DisCo's "gradient skipping", ``all`` is
full back-propagation through the sampler; each step with gradient is activation-checkpointed, so
deep settings cost compute rather than memory.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from augment.models.device import autocast


def freeze_for_training(pipe, classifier):
    """Freeze every backbone weight and put the classifier on the backbone's device in float32.

    Backbone and classifier may come from different places; images are cast to float32 before the
    classifier, so it never runs in half precision. Returns the classifier.
    """
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return classifier.to(device=pipe.unet.device, dtype=torch.float32).eval()


def encode_prompts(pipe, prompts: list[str]) -> torch.Tensor:
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


def sample_latents(
    pipe,
    latents: torch.Tensor,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    steps: int,
    guidance_scale: float,
    grad_steps: int | str = 0,
    checkpointing: bool = True,
    start: int = 0,
) -> torch.Tensor:
    """Denoise ``latents`` (already scaled by the scheduler's init sigma) under text embeddings.

    ``grad_steps`` = 0 runs without gradient; otherwise the last ``grad_steps`` steps keep the
    autograd graph (``cond`` must require grad for anything to flow). ``start`` skips the first
    steps of the schedule (editing a real image noised to ``scheduler.timesteps[start]``).
    """
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps, device=latents.device)
    timesteps = scheduler.timesteps[start:]
    n = len(timesteps)
    k = n if grad_steps == "all" else min(int(grad_steps), n)
    device, dtype = latents.device, pipe.unet.dtype

    def denoise(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        with autocast(device, dtype):
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps = pipe.unet(model_in.to(dtype), t, encoder_hidden_states=context.to(dtype)).sample
        eps_u, eps_c = eps.float().chunk(2)
        return eps_u + guidance_scale * (eps_c - eps_u)

    for i, t in enumerate(timesteps):
        with_grad = i >= n - k
        with torch.set_grad_enabled(with_grad):
            context = torch.cat([uncond, cond if with_grad else cond.detach()])
            if with_grad and checkpointing and torch.is_grad_enabled():
                eps = checkpoint(denoise, latents, t, context, use_reentrant=False)
            else:
                eps = denoise(latents, t, context)
            latents = scheduler.step(eps, t, latents).prev_sample
    return latents


def decode(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [0, 1], float32 (differentiable)."""
    vae = pipe.vae
    with autocast(latents.device, vae.dtype):
        images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
    return (images.float() / 2 + 0.5).clamp(0, 1)


def encode_images(pipe, images01: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> scaled latents (the VAE posterior mean: deterministic)."""
    vae = pipe.vae
    with torch.no_grad(), autocast(images01.device, vae.dtype):
        z = vae.encode((images01 * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
    return z.float() * vae.config.scaling_factor


def predict_x0(pipe, latents_t: torch.Tensor, model_out: torch.Tensor, t: int) -> torch.Tensor:
    """One-step estimate of the clean latent from the model output at timestep ``t``."""
    alpha = pipe.scheduler.alphas_cumprod.to(latents_t.device)[t].float()
    a, s = alpha.sqrt(), (1 - alpha).sqrt()
    kind = pipe.scheduler.config.prediction_type
    if kind == "epsilon":
        return (latents_t - s * model_out) / a
    if kind == "v_prediction":
        return a * latents_t - s * model_out
    return model_out  # "sample"
