"""fp16 token training scales the loss (issue 19): a gradient float16 would flush to zero reaches
the float32 token; bf16 and float32 steps are untouched by the scaler."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from augment.tokens.training import loss_scaler, optimiser_step


def _pipe(dtype: torch.dtype) -> SimpleNamespace:
    """What loss_scaler reads of a pipeline: its UNet's device and dtype."""
    return SimpleNamespace(unet=SimpleNamespace(device=torch.device("cpu"), dtype=dtype))


def _step(dtype: torch.dtype, scaler: torch.amp.GradScaler) -> torch.Tensor:
    """One step on a float32 vector whose loss goes through ``dtype`` activations with a gradient
    of 5e-9 per element (below float16's smallest subnormal, ~6e-8)."""
    v = torch.nn.Parameter(torch.ones(4))
    opt = torch.optim.SGD([v], lr=1.0)
    loss = ((v.to(dtype) * 1e-4) * 1e-4).float().sum() * 0.5
    optimiser_step(scaler, opt, loss, [v], clip=1.0)
    return v.grad


def test_float16_gradient_survives_with_loss_scaling():
    scaler = loss_scaler(_pipe(torch.float16))
    assert scaler.is_enabled()
    grad = _step(torch.float16, scaler)
    assert torch.allclose(grad, torch.full((4,), 5e-9), rtol=0.05)  # unscaled back to the true gradient
    plain = _step(torch.float16, torch.amp.GradScaler("cpu", enabled=False))
    assert torch.count_nonzero(plain) == 0  # what fp16 training without scaling learnt: nothing


def test_scaler_is_off_for_bf16_and_float32():
    for dtype in (torch.bfloat16, torch.float32):
        scaler = loss_scaler(_pipe(dtype))
        assert not scaler.is_enabled()
        assert _step(dtype, scaler).abs().min() > 0
