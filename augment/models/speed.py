"""Generation speed-ups diffusers documents, applied to a loaded pipeline: ``channels_last``, fused
QKV projections and ``torch.compile`` (``generate.channels_last``, ``generate.fuse_qkv``,
``generate.compile``).

Generation is most of a build's GPU time, and diffusers' own pipeline at default settings leaves
these on the table. They change which kernels run, not what is computed, so on CUDA (whose kernels
are not bitwise deterministic anyway) they are on by default, except compile, whose first batch of
each shape waits minutes for the compiler. On the CPU they stay off unless forced: a CPU run keeps
the exact bytes it made before (``tests/models/test_speed.py`` holds forced ones within float
tolerance of the plain path).

The pipeline is the worker host's cached one, shared with the other stages (:mod:`augment.models.
cache`), so :func:`tune_pipeline` is idempotent and undoes what a later call asks off, and the
compiled UNet is swapped in only for the calls that generate (:func:`compiled_unet`): token
training's gradient and checkpointing toggles would make the compiler recompile or fall back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

__all__ = ["compiled_unet", "tune_pipeline", "tuning_of"]

_STATE = "_augment_tuning"  #: attribute on the pipeline: what tune_pipeline applied
_COMPILED = "_augment_compiled_unet"  #: attribute on the pipeline: the compiled UNet, built once


def tuning_of(pipe: Any) -> dict[str, bool]:
    """What :func:`tune_pipeline` has applied to ``pipe`` (all False for a fresh load)."""
    return dict(getattr(pipe, _STATE, {"channels_last": False, "fuse_qkv": False}))


def _fuse(pipe: Any, on: bool) -> None:
    if on:
        pipe.fuse_qkv_projections()
        # the fused projections are new nn.Linear layers (requires_grad True): keep the model frozen,
        # or a token step on the same cached pipeline would compute their gradients
        for model in (pipe.unet, pipe.vae):
            for module in model.modules():
                for name in ("to_qkv", "to_kv"):
                    layer = getattr(module, name, None)
                    if isinstance(layer, torch.nn.Module):
                        layer.requires_grad_(False)
    else:
        pipe.unfuse_qkv_projections()


def tune_pipeline(pipe: Any, *, channels_last: bool, fuse_qkv: bool, force: bool = False) -> dict[str, bool]:
    """Put ``pipe``'s UNet and VAE in ``channels_last`` memory format and fuse their attention's QKV
    projections (diffusers' ``fuse_qkv_projections``) when asked and the UNet is on CUDA (or
    ``force``); undo either when asked off. Returns what is applied now.
    """
    cuda = force or pipe.unet.device.type == "cuda"
    want = {"channels_last": channels_last and cuda, "fuse_qkv": fuse_qkv and cuda}
    have = tuning_of(pipe)
    if want["channels_last"] != have["channels_last"]:
        fmt = torch.channels_last if want["channels_last"] else torch.contiguous_format
        pipe.unet.to(memory_format=fmt)
        pipe.vae.to(memory_format=fmt)
    if want["fuse_qkv"] != have["fuse_qkv"]:
        _fuse(pipe, want["fuse_qkv"])
    setattr(pipe, _STATE, want)
    return dict(want)


@contextmanager
def compiled_unet(pipe: Any, enabled: bool = True, backend: str = "inductor") -> Iterator[None]:
    """Inside the ``with`` body ``pipe.unet`` is ``torch.compile(pipe.unet)``, compiled once per
    pipeline (the compiled module is kept on it) and put back after, so other stages sharing the
    cached pipeline run the plain UNet. ``backend``: torch.compile's (tests use ``"eager"``, which
    checks the swap without a compiler)."""
    if not enabled:
        yield
        return
    own = pipe.unet
    compiled = getattr(pipe, _COMPILED, None)
    if compiled is None or getattr(compiled, "_orig_mod", None) is not own or getattr(pipe, _COMPILED + "_backend", None) != backend:
        compiled = torch.compile(own, backend=backend)
        setattr(pipe, _COMPILED, compiled)
        setattr(pipe, _COMPILED + "_backend", backend)
    pipe.unet = compiled
    try:
        yield
    finally:
        pipe.unet = own
