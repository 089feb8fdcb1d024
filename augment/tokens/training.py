"""What the token trainers (DisCo, CASO) share: a frozen backbone, embedding rows made
trainable without writing to the model, and the optimiser step (with loss scaling in float16).

Only the new token's vector is optimised. It is injected by a forward hook on the text encoder's
input-embedding layer, so every other row and every other parameter stays bit-identical by
construction; the trainer writes the chosen vector into the table once, at the end.
"""

from __future__ import annotations

from typing import Any

import torch


def freeze_for_training(pipe: Any, classifier: torch.nn.Module) -> torch.nn.Module:
    """Freeze every backbone weight and put the classifier on the backbone's device in float32.

    Backbone and classifier may come from different places; images are cast to float32 before the
    classifier, so it never runs in half precision. Returns the classifier.
    """
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    return classifier.to(device=pipe.unet.device, dtype=torch.float32).eval()


class EmbeddingOverride:
    """Forward hook that replaces the rows of one token id with a trainable vector."""

    def __init__(self, module: torch.nn.Module, token_id: int, vector: torch.Tensor) -> None:
        self.token_id, self.vector = token_id, vector
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        mask = (inputs[0] == self.token_id).unsqueeze(-1)
        return torch.where(mask, self.vector.to(output.dtype), output)

    def remove(self) -> None:
        self.handle.remove()


def loss_scaler(pipe: Any) -> torch.amp.GradScaler:
    """Loss scaling for float16 backbones, a no-op otherwise.

    The backbone runs in its own dtype (diffusers' way, :class:`augment.models.diffusion.Diffusion`),
    so the backward pass runs through float16 activations when the weights are float16 (``--dtype
    auto`` on a card without native bf16, such as a T4): gradients of a classifier's loss taken back
    through 30 denoising steps and the decoder are small, and below float16's ~6e-8 they become zero,
    so the token would silently not learn. Scaling the loss (``torch.amp.GradScaler``) keeps them in
    range; the token's vector is float32, so the scaler unscales it before clipping and skips a step
    whose gradient overflowed. This is loss scaling rather than refusing float16: a T4 or V100 can
    then train tokens at all. bfloat16 has float32's range and float32 needs none: disabled, the
    scaler passes the loss, the gradient and the step through unchanged (the same bytes)."""
    device = pipe.unet.device
    return torch.amp.GradScaler(device.type, enabled=pipe.unet.dtype == torch.float16)


def optimiser_step(scaler: torch.amp.GradScaler, opt: torch.optim.Optimizer, loss: torch.Tensor,
                   params: list[torch.nn.Parameter], clip: float) -> None:
    """Backward, clip the gradient norm to ``clip`` (after unscaling: the clip acts on the true
    gradient), step (skipped by the scaler when the scaled gradient overflowed), update the scale."""
    scaler.scale(loss).backward()
    scaler.unscale_(opt)
    torch.nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)
    scaler.update()
