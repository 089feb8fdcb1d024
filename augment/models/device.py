"""Device and dtype resolution in one place, so every stage makes the same choice.

``auto`` picks CUDA when present, else CPU; half precision is only used where the device runs it
(fp16/bf16 on CUDA; CPU always computes in float32, as half-precision convolutions on CPU are slow
or unsupported).
"""

from __future__ import annotations

import torch

from augment.errors import AugmentError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise AugmentError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AugmentError(f"--device {spec} asked for CUDA but no GPU is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AugmentError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return dev


def check_device(spec: str, inline: bool) -> None:
    """Refuse a ``--device`` no unit can run on, before any model loads: a spec torch cannot
    read, and, when the units run in this process (``--workers 0``), a GPU this machine lacks.
    With Ray workers the GPU is the workers' to have (the pool checks placement)."""
    if inline:
        resolve_device(spec)
    elif spec != "auto":
        try:
            torch.device(spec)
        except RuntimeError:
            raise AugmentError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The compute dtype for the diffusion backbone on ``device``."""
    if spec == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise AugmentError(f"--dtype {spec!r} is not one of auto, float32, float16, bfloat16")
    if device.type == "cpu" and spec != "float32":
        # Half precision on CPU is slow and some kernels are missing; compute in float32.
        return torch.float32
    return DTYPES[spec]


def autocast(device: torch.device, dtype: torch.dtype) -> torch.autocast:
    """Mixed-precision context: active for half dtypes on CUDA, a no-op elsewhere."""
    enabled = device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)
