"""One object over a loaded diffusers pipeline: encode prompts, sample, decode, edit.

Generation, token training (DisCo, CASO) and CASO's edits all drive the same components (text
encoder, UNet, scheduler, VAE); :class:`Diffusion` is the one place that does, in the spirit of
diffusers' pipeline classes, which own their encode/sample/decode steps.

Two samplers live here, on purpose:

* :meth:`Diffusion.generate` calls diffusers' own ``pipe(...)``, so synthetic images are exactly
  what the pipeline makes for those latents (no re-implementation to drift from it).
* :meth:`Diffusion.sample_latents` is a classifier-free-guidance loop of our own, because
  ``StableDiffusionPipeline.__call__`` runs under ``torch.no_grad`` and token training needs the
  gradient. ``grad_steps`` sets how many of the final denoising steps keep the autograd graph: 1 is
  DisCo's "gradient skipping", ``"all"`` is full back-propagation through the sampler; each step
  with gradient is activation-checkpointed, so deep settings cost compute rather than memory.

Initial noise always comes from :func:`augment.seeds.initial_latents` (one CPU generator per
seed), so a sample does not depend on its batch or device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from augment.models.device import autocast
from augment.seeds import initial_latents

__all__ = ["Diffusion"]


class Diffusion:
    """Encode / sample / decode / edit over a loaded ``StableDiffusionPipeline``.

    It holds no state of its own beyond the pipeline, so wrapping the same pipeline twice is
    harmless and a learned token added to ``pipe``'s tokenizer is seen at once.
    """

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @property
    def device(self) -> torch.device:
        """Where the UNet (and so the sampling) runs."""
        return self.pipe.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's compute dtype (half on CUDA where configured, float32 on CPU)."""
        return self.pipe.unet.dtype

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        """(channels, height, width) of one latent for square images of ``resolution`` pixels."""
        side = resolution // self.pipe.vae_scale_factor
        return (self.pipe.unet.config.in_channels, side, side)

    # ------------------------------------------------------------------ encode / decode

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings ``[N, L, D]`` (gradient flows when enabled: tokens are trained through it)."""
        pipe = self.pipe
        tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
        return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]

    def decode(self, latents: torch.Tensor, straight_through: bool = False) -> torch.Tensor:
        """Latents -> images in [0, 1], float32 (differentiable: the classifier's loss flows back).

        ``straight_through``: the forward pass clamps to [0, 1] as always, the backward pass treats
        the clamp as the identity, so pixels the decoder puts outside the range still get gradient
        (a hard clamp gives none to the pixels below 0, exactly where ink would need adding)."""
        vae = self.pipe.vae
        with autocast(latents.device, vae.dtype):
            images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        images = images.float() / 2 + 0.5
        if straight_through:
            return images + (images.clamp(0, 1) - images).detach()
        return images.clamp(0, 1)

    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (the VAE posterior mean: deterministic)."""
        vae = self.pipe.vae
        with torch.no_grad(), autocast(images01.device, vae.dtype):
            z = vae.encode((images01 * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean
        return z.float() * vae.config.scaling_factor

    # ------------------------------------------------------------------ noise

    def initial_latents(self, seeds: list[int], resolution: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Unscaled starting noise, one latent per seed, on :attr:`device` in ``dtype`` (default :attr:`dtype`)."""
        return initial_latents(seeds, self.latent_shape(resolution), self.device, dtype or self.dtype)

    def noise_latents(self, z0: torch.Tensor, seeds: list[int], timesteps: torch.Tensor) -> torch.Tensor:
        """Clean latents ``z0`` noised to ``timesteps`` (one per row) with per-seed float32 noise."""
        noise = initial_latents(seeds, tuple(z0.shape[1:]), self.device, torch.float32)
        return self.scheduler.add_noise(z0, noise, timesteps)

    # ------------------------------------------------------------------ denoising

    def guided_output(self, model_in: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
                      guidance_scale: float) -> torch.Tensor:
        """One UNet call on the ``[uncond; cond]`` batch, combined by classifier-free guidance (float32).

        ``model_in`` and ``context`` stack the unconditional half first; the result has half
        their batch size.
        """
        with autocast(model_in.device, self.dtype):
            out = self.pipe.unet(model_in.to(self.dtype), t, encoder_hidden_states=context.to(self.dtype)).sample
        out_u, out_c = out.float().chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    def predict_x0(self, latents_t: torch.Tensor, model_out: torch.Tensor, t: int) -> torch.Tensor:
        """One-step estimate of the clean latent from the model output at timestep ``t``."""
        scheduler = self.scheduler
        alpha = scheduler.alphas_cumprod.to(latents_t.device)[t].float()
        a, s = alpha.sqrt(), (1 - alpha).sqrt()
        kind = scheduler.config.prediction_type
        if kind == "epsilon":
            return (latents_t - s * model_out) / a
        if kind == "v_prediction":
            return a * latents_t - s * model_out
        return model_out  # "sample"

    def sample_latents(
        self,
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
        scheduler = self.scheduler
        scheduler.set_timesteps(steps, device=latents.device)
        timesteps = scheduler.timesteps[start:]
        n = len(timesteps)
        k = n if grad_steps == "all" else min(int(grad_steps), n)
        device, dtype = latents.device, self.dtype

        def denoise(x: torch.Tensor, t: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
            with autocast(device, dtype):
                model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            return self.guided_output(model_in, t, context, guidance_scale)

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

    # ------------------------------------------------------------------ whole jobs

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
                 negative_prompt: str | list[str] | None, resolution: int) -> torch.Tensor:
        """Images in [0, 1] ``(N, 3, H, W)`` from diffusers' own pipeline call, noise from per-sample seeds.

        Synthetic data is what ``pipe(...)`` makes for these latents, byte for byte; an empty
        ``negative_prompt`` means none (diffusers encodes "" for none); a list gives one per prompt.
        """
        latents = self.initial_latents(seeds, resolution)
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
        out = self.pipe(prompt=prompts, negative_prompt=negatives if any(negatives) else None,
                        latents=latents, num_inference_steps=steps, guidance_scale=guidance_scale,
                        height=resolution, width=resolution, output_type="pt")
        return out.images.float().clamp(0, 1)

    @torch.no_grad()
    def edit(self, prompt: str, images01: torch.Tensor, seeds: list[int], strength: float, steps: int,
             guidance_scale: float) -> torch.Tensor:
        """Noise real images to ``strength`` of the schedule, denoise under ``prompt``; images in [0, 1].

        Classifier-free guidance is always applied (unlike diffusers' img2img pipeline, which turns it
        off below 1), so a negative ``guidance_scale`` pushes away from the embedding: the reverse edit.
        """
        z0 = self.encode_images(images01.to(self.device))
        scheduler = self.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        n_run = max(1, min(steps, int(round(steps * strength))))
        start = steps - n_run
        zt = self.noise_latents(z0, seeds, scheduler.timesteps[start].repeat(len(seeds)))
        cond = self.encode_prompts([prompt] * len(seeds))
        uncond = self.encode_prompts([""] * len(seeds))
        latents = self.sample_latents(zt, cond, uncond, steps, guidance_scale, start=start)
        return self.decode(latents)
