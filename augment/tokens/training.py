"""What the token trainers (DisCo, CASO) share: a frozen backbone, and embedding rows made
trainable without writing to the model.

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
