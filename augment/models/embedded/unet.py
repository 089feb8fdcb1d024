"""The tiny-digits UNet, trained jointly with the text encoder on the VAE's latents, and the pipeline.

Latents of every +-1 px shift are encoded once up front; each step draws a shift, a latent sample
and a caption per image (see :mod:`augment.models.embedded.captions`). What ships is the EMA copy.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from augment.models.embedded.captions import caption_table, sample_caption_indices
from augment.models.embedded.data import all_shifts
from augment.models.embedded.text import make_text_encoder

__all__ = ["SCHEDULER_CONFIG", "UNET_CONFIG", "assemble_pipeline", "encode_all_shifts", "train_unet"]

UNET_CONFIG = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=4,
    norm_num_groups=8,
)
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
)


class _EMA:
    """Exponential moving average of the UNet and text encoder weights (the copy that ships)."""

    def __init__(self, modules: list[torch.nn.Module], decay: float) -> None:
        self.decay = decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]

    @torch.no_grad()
    def update(self, modules: list[torch.nn.Module], step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for s, m in zip(self.shadow, modules, strict=True):
            for ps, pm in zip(s.parameters(), m.parameters(), strict=True):
                ps.lerp_(pm.detach(), 1 - d)
            for bs, bm in zip(s.buffers(), m.buffers(), strict=True):
                bs.copy_(bm)


def encode_all_shifts(vae, x01: torch.Tensor, batch: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean/std (scaled by the VAE's scaling factor) of every +-1 px shift of every image."""
    shifted = all_shifts(x01 * 2 - 1, 1, fill=-1.0)  # [S,N,3,32,32]
    s, n = shifted.shape[:2]
    flat = shifted.reshape(s * n, *shifted.shape[2:])
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(flat), batch):
            post = vae.encode(flat[i : i + batch]).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    sf = vae.config.scaling_factor
    mean = torch.cat(means).reshape(s, n, *means[0].shape[1:]) * sf
    std = torch.cat(stds).reshape(s, n, *stds[0].shape[1:]) * sf
    return mean, std


def train_unet(vae, tokenizer, x01: torch.Tensor, y: torch.Tensor, cfg: dict, seed: int):
    """(EMA UNet, EMA text encoder, stats): epsilon prediction on the DDPM schedule, captions per step."""
    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    text_encoder = make_text_encoder(tokenizer)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    noise_sched = DDPMScheduler(**SCHEDULER_CONFIG)
    lat_mean, lat_std = encode_all_shifts(vae, x01)  # [S,N,4,8,8]
    n_shift, n = lat_mean.shape[:2]

    captions, _ = caption_table()
    cap_ids = tokenizer(
        captions,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids

    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=1e-2)
    steps, bs, warm = cfg["steps"], cfg["batch_size"], cfg["warmup"]

    def lr_lambda(s: int) -> float:
        if s < warm:
            return (s + 1) / warm
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s - warm, steps - warm) / max(1, steps - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
    ema = _EMA([unet, text_encoder], cfg["ema"])
    alphas_cumprod = noise_sched.alphas_cumprod
    # Min-SNR-gamma weighting (epsilon objective: min(SNR, gamma) / SNR): the many nearly clean
    # timesteps, where the caption barely matters, stop dominating the loss, so the budget goes to
    # the noisy steps that decide which digit is drawn. gamma None = the plain epsilon loss.
    snr = alphas_cumprod / (1 - alphas_cumprod)
    gamma = cfg.get("min_snr_gamma")
    snr_weight = torch.clamp(snr, max=gamma) / snr if gamma else torch.ones_like(snr)
    order = np.concatenate([rng.permutation(n) for _ in range(steps * bs // n + 2)])
    y_np = y.numpy()
    unet.train()
    text_encoder.train()
    losses = []
    bar = tqdm(range(steps), desc="unet+text", mininterval=5)
    for step in bar:
        idx = order[step * bs : (step + 1) * bs]
        sh = rng.integers(0, n_shift, len(idx))
        m, sd = lat_mean[sh, idx], lat_std[sh, idx]
        z0 = m + sd * torch.randn(m.shape, generator=gen)
        cap = torch.from_numpy(sample_caption_indices(y_np[idx], rng))
        uniq, inverse = torch.unique(cap, return_inverse=True)  # encode each distinct caption once
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        enc = text_encoder(cap_ids[uniq])[0][inverse]
        pred = unet(zt, t, encoder_hidden_states=enc).sample
        per_sample = F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_sample * snr_weight[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update([unet, text_encoder], step)
        losses.append(loss.item())
        if step % 25 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    ema_unet, ema_text = ema.shadow
    stats = {"final_loss": float(np.mean(losses[-100:])) if losses else None}
    return ema_unet.eval(), ema_text.eval(), stats


def assemble_pipeline(vae, unet, text_encoder, tokenizer):
    """The parts as a `StableDiffusionPipeline` with a DDIM scheduler, so it loads like any SD model."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    scheduler = DDIMScheduler(**SCHEDULER_CONFIG, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
