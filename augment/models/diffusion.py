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
  DisCo's "gradient skipping", ``"all"`` is full back-propagation through the sampler.

Memory (``checkpointing``, ``tokens.checkpointing``): each denoising step with gradient is
activation-checkpointed as a whole (its backward rebuilds it), and inside it diffusers' own
gradient checkpointing of the UNet's blocks runs, so rebuilding a step holds one block's
activations, not the step's; the VAE decode with gradient checkpoints its decoder's layers one by
one (:func:`decoder_checkpointing`). Predicted by :mod:`augment.models.memory` (``augment plan``,
docs/memory.md) for SD 2.1-base, batch 5, 512 px, bf16: what a UNet step keeps for backward falls
from ~7.3 to ~1.1 GB, the decode's backward peak from ~15 to ~5.7 GB, the whole step from ~25 to
~8.8 GB. The images are unchanged: checkpointing recomputes the same operations in eval mode (no
dropout; diffusers 0.42 checkpoints whenever ``torch.is_grad_enabled()``, training mode or not), and the gradients
are the same (tests hold them to the plain ones).

Both samplers take their noise from the samples' seeds: the starting noise from
:func:`augment.seeds.initial_latents`, the noise stochastic schedulers (DDPM) add at each step from
:func:`augment.seeds.step_generators` (one CPU generator per seed each), so a sample depends on
neither its batch, the device nor the global RNG.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from augment.seeds import initial_latents, step_generators

__all__ = ["Diffusion", "block_checkpointing", "decoder_checkpointing"]

#: the VAE decoder's layers checkpointed one by one (diffusers' own VAE checkpointing takes whole
#: up-blocks: rebuilding the last one at 512 px holds ~8 GB at batch 5, one layer ~2-3 GB)
DECODER_LAYERS = ("ResnetBlock2D", "Upsample2D", "Attention")


@contextmanager
def block_checkpointing(model: Any, enabled: bool = True) -> Iterator[None]:
    """diffusers' gradient checkpointing inside ``model``'s blocks (UNet, VAE) for the ``with`` body.

    The flag lives on the shared, cached model (the model cache hands the same UNet to every stage
    of a worker), so it is switched on only for the call and restored after it, whatever it was.
    diffusers only checkpoints where ``torch.is_grad_enabled()``, so a no-grad call is unaffected.
    """
    if not enabled or not getattr(model, "_supports_gradient_checkpointing", False) or model.is_gradient_checkpointing:
        yield
        return
    model.enable_gradient_checkpointing()
    try:
        yield
    finally:
        model.disable_gradient_checkpointing()


@contextmanager
def decoder_checkpointing(vae: Any, enabled: bool = True) -> Iterator[None]:
    """Checkpoint each resnet, upsampler and attention layer of ``vae.decoder`` for the ``with`` body.

    Each layer's ``forward`` is wrapped in :func:`torch.utils.checkpoint.checkpoint` (non-reentrant)
    and restored after, so the decoder's own code (and its diffusers version) runs unchanged; the
    backward keeps each layer's input and rebuilds one layer at a time.
    """
    layers = [m for m in vae.decoder.modules() if type(m).__name__ in DECODER_LAYERS] if enabled else []
    saved = [(m, m.__dict__.get("forward")) for m in layers]
    for m in layers:
        m.forward = partial(checkpoint, m.forward, use_reentrant=False)
    try:
        yield
    finally:
        for m, own in saved:
            if own is None:
                del m.forward
            else:
                m.forward = own


class Diffusion:
    """Encode / sample / decode / edit over a loaded ``StableDiffusionPipeline``.

    Precision is diffusers' own: the weights are held in the compute dtype (half on CUDA) and run in
    it, with no autocast. Latents stay in the UNet's dtype through the sampler, guidance is combined
    in it, the decoder's output is mapped to [0, 1] in it, exactly as ``pipe(...)`` does; only the
    classifier (:func:`augment.tokens.training.freeze_for_training`) and a trained token's vector are
    float32. So the images token training and its validation see are, pixel for pixel, the images
    generation makes from the same seeds (autocast over bf16 weights upcast every norm layer: more
    memory, and images up to 11 levels of 255 away from the generated ones).

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

    def decode(self, latents: torch.Tensor, straight_through: bool = False, checkpointing: bool = True) -> torch.Tensor:
        """Latents -> images in [0, 1], float32 (differentiable: the classifier's loss flows back).

        ``checkpointing``: with gradient, the decoder's layers are checkpointed
        (:func:`decoder_checkpointing`): at 512 px the full-resolution activations of a decode kept
        for backward are most of a token step's memory. ``straight_through``: the forward pass clamps to [0, 1] as always, the backward pass treats
        the clamp as the identity, so pixels the decoder puts outside the range still get gradient
        (a hard clamp gives none to the pixels below 0, exactly where ink would need adding)."""
        vae = self.pipe.vae
        with decoder_checkpointing(vae, checkpointing and torch.is_grad_enabled()):
            images = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype)).sample
        # [-1, 1] -> [0, 1] in the VAE's dtype, as diffusers' image processor does for ``pipe(...)``:
        # in half precision the rounding of this step alone moves a pixel by a level of 255
        images = (images / 2 + 0.5).float()
        if straight_through:
            return images + (images.clamp(0, 1) - images).detach()
        return images.clamp(0, 1)

    def encode_images(self, images01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (the VAE posterior mean: deterministic)."""
        vae = self.pipe.vae
        with torch.no_grad():
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
                      guidance_scale: float, checkpointing: bool = True) -> torch.Tensor:
        """One UNet call on the ``[uncond; cond]`` batch, combined by classifier-free guidance in the
        UNet's dtype, as diffusers' pipeline combines it (no autocast: see :class:`Diffusion`).

        ``model_in`` and ``context`` stack the unconditional half first; the result has half
        their batch size. ``checkpointing``: with gradient, the UNet's blocks are checkpointed
        (:func:`block_checkpointing`; CASO's one-step prediction and every gradient step of
        :meth:`sample_latents`).
        """
        with block_checkpointing(self.pipe.unet, checkpointing and torch.is_grad_enabled()):
            out = self.pipe.unet(model_in.to(self.dtype), t, encoder_hidden_states=context.to(self.dtype)).sample
        out_u, out_c = out.chunk(2)
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

    def _step_kwargs(self, seeds: list[int], scheduler: Any = None) -> dict[str, Any]:
        """``scheduler.step``'s ``generator=`` (per-sample, :func:`augment.seeds.step_generators`)
        where the scheduler takes one, as diffusers' pipeline passes it (it inspects the same
        signature): DDPM and ancestral/SDE samplers add noise at each step, and without a generator
        they draw it from the global RNG, so the seeds would not fix the images."""
        if "generator" not in inspect.signature((scheduler or self.scheduler).step).parameters:
            return {}
        return {"generator": step_generators(seeds)}

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
        guided_step: int | None = None,
        scheduler: Any = None,
        *,
        seeds: list[int],
    ) -> torch.Tensor:
        """Denoise from ``latents`` under text embeddings; ``seeds`` (one per row) seed the step noise.

        With ``start`` = 0, ``latents`` is the unscaled starting noise (:meth:`initial_latents`): it
        is scaled by the scheduler's ``init_noise_sigma`` here, after ``set_timesteps``, because that
        is when the value is right (Euler's depends on the schedule; read before, it is the
        1000-step one), as diffusers' pipeline does. With ``start`` > 0 it is a latent already noised
        to ``scheduler.timesteps[start]`` (:meth:`noise_latents`; editing a real image), used as is.

        ``grad_steps`` = 0 runs without gradient; otherwise the last ``grad_steps`` steps keep the
        autograd graph (``cond`` must require grad for anything to flow). With ``checkpointing``
        each such step's UNet call is checkpointed whole, and its blocks inside it (so the step's
        rebuild in the backward holds one block at a time). Only the UNet call is checkpointed,
        and it reads no scheduler state: ``scale_model_input`` and ``step`` read and
        advance the scheduler's step index (Euler, DPM-Solver), so running them again when backward
        recomputes the step would use the index of the *last* step, not this one.
        ``guided_step`` (an index into the steps that run) applies the guidance at that step only and
        the unconditional prediction at every other: CASO's single-step edit, which after a DDIM
        inversion changes the image at one noise level and reconstructs it everywhere else.
        ``scheduler`` replaces the pipeline's (a DDIM one for inverted latents).
        """
        scheduler = scheduler or self.scheduler
        scheduler.set_timesteps(steps, device=latents.device)
        latents = latents.to(self.dtype)  # the pipeline's latents are in the UNet's dtype from the start
        if start == 0:
            latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps[start:]
        n = len(timesteps)
        k = n if grad_steps == "all" else min(int(grad_steps), n)
        step_kwargs = self._step_kwargs(seeds, scheduler)

        for i, t in enumerate(timesteps):
            with_grad = i >= n - k
            scale = guidance_scale if guided_step is None or i == guided_step else 0.0
            with torch.set_grad_enabled(with_grad):
                context = torch.cat([uncond, cond if with_grad else cond.detach()])
                model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
                if with_grad and checkpointing and torch.is_grad_enabled():
                    eps = checkpoint(self.guided_output, model_in, t, context, scale, True, use_reentrant=False)
                else:
                    eps = self.guided_output(model_in, t, context, scale, checkpointing=False)
                latents = scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        return latents

    # ------------------------------------------------------------------ whole jobs

    @torch.no_grad()
    def generate(self, prompts: list[str], seeds: list[int], steps: int, guidance_scale: float,
                 negative_prompt: str | list[str] | None, resolution: int) -> torch.Tensor:
        """Images in [0, 1] ``(N, 3, H, W)`` from diffusers' own pipeline call, noise from per-sample seeds.

        Synthetic data is what ``pipe(...)`` makes for these latents, byte for byte; the pipeline
        scales them by ``init_noise_sigma`` after ``set_timesteps`` and hands the per-sample step
        generators to ``scheduler.step`` itself, as :meth:`sample_latents` does. An empty
        ``negative_prompt`` means none (diffusers encodes "" for none); a list gives one per prompt.
        """
        latents = self.initial_latents(seeds, resolution)
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
        out = self.pipe(prompt=prompts, negative_prompt=negatives if any(negatives) else None,
                        latents=latents, generator=step_generators(seeds), num_inference_steps=steps,
                        guidance_scale=guidance_scale, height=resolution, width=resolution, output_type="pt")
        return out.images.float().clamp(0, 1)

    @torch.no_grad()
    def invert(self, z0: torch.Tensor, steps: int, start: int) -> torch.Tensor:
        """Deterministic DDIM inversion of clean latents ``z0`` up to ``timesteps[start]`` of a
        ``steps``-step DDIM schedule, under the empty prompt (the paper's Eq. 6; the official code's
        ``ddim_forward_loop`` also inverts unconditionally). Uses diffusers' ``DDIMInverseScheduler``
        built from the model's scheduler config, so inverting then denoising with the matching
        :class:`~diffusers.DDIMScheduler` (:meth:`ddim_scheduler`) retraces the same timesteps.
        """
        from diffusers import DDIMInverseScheduler

        inverse = DDIMInverseScheduler.from_config(self.scheduler.config, clip_sample=False)
        inverse.set_timesteps(steps, device=z0.device)
        uncond = self.encode_prompts([""])
        latents = z0
        for t in inverse.timesteps[: steps - start]:
            eps = self.pipe.unet(latents.to(self.dtype), t,
                                 encoder_hidden_states=uncond.expand(len(latents), -1, -1).to(self.dtype)).sample
            latents = inverse.step(eps.float(), t, latents).prev_sample
        return latents

    def ddim_scheduler(self) -> Any:
        """A DDIM scheduler from the model's config (no clipping): the sampler that undoes :meth:`invert`."""
        from diffusers import DDIMScheduler

        return DDIMScheduler.from_config(self.scheduler.config, clip_sample=False)

    @staticmethod
    def edit_start(steps: int, strength: float) -> int:
        """Index of the first denoising step an edit of ``strength`` runs (at least one step runs)."""
        return steps - max(1, min(steps, int(round(steps * strength))))

    @torch.no_grad()
    def edit(self, prompt: str, images01: torch.Tensor, seeds: list[int], strength: float, steps: int,
             guidance_scale: float, mode: str = "sdedit", guided_step: int | None = None) -> torch.Tensor:
        """Edit real images under ``prompt``; images in [0, 1].

        ``mode="sdedit"``: noise to ``strength`` of the schedule with per-seed noise, then denoise
        (SDEdit; different seeds give different edits). ``mode="ddim"``: the CASO paper's edit,
        deterministic DDIM inversion to the same timestep (:meth:`invert`), then guided DDIM
        denoising (Eq. 6-7); ``seeds`` are then unused and every edit of an image is the same.
        ``guided_step`` guides one denoising step only (see :meth:`sample_latents`). Classifier-free
        guidance is always applied (unlike diffusers' img2img pipeline, which turns it off below 1),
        so a negative ``guidance_scale`` pushes away from the embedding: the reverse edit.
        """
        if mode not in ("sdedit", "ddim"):
            raise ValueError(f"edit mode must be sdedit or ddim, got {mode!r}")
        z0 = self.encode_images(images01.to(self.device))
        start = self.edit_start(steps, strength)
        scheduler = self.ddim_scheduler() if mode == "ddim" else self.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        if mode == "ddim":
            zt = self.invert(z0, steps, start)
        else:
            zt = self.noise_latents(z0, seeds, scheduler.timesteps[start].repeat(len(seeds)))
        cond = self.encode_prompts([prompt] * len(zt))
        uncond = self.encode_prompts([""] * len(zt))
        latents = self.sample_latents(zt, cond, uncond, steps, guidance_scale, start=start,
                                      guided_step=guided_step, scheduler=scheduler, seeds=seeds)
        return self.decode(latents)
