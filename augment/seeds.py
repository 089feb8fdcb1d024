"""Seeds derived from names, not from counters.

A sample's seed depends only on (run seed, stage, class index, sample index), so the same config
gives the same images whatever the number of workers or the order work units run in, and raising
``--per-class`` only adds new samples. Token training and generation use different stage names so
evaluation images never reuse the seeds a token was trained on.
"""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values (stable across processes and Python versions)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def initial_latents(seeds: list[int], shape: tuple[int, int, int], device: torch.device,
                    dtype: torch.dtype) -> torch.Tensor:
    """One latent per seed, each drawn on the CPU from its own generator: a sample's noise does not
    depend on the batch it lands in or on the device (CUDA and CPU RNGs differ)."""
    out = [torch.randn((1, *shape), generator=torch.Generator().manual_seed(int(s))) for s in seeds]
    return torch.cat(out).to(device=device, dtype=dtype)


def step_generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per sample for the noise a stochastic sampler adds at each step (DDPM,
    ancestral and SDE solvers), seeded from the sample's seed under its own name.

    diffusers' ``scheduler.step(..., generator=[...])`` draws each row from its own generator, so a
    sample's step noise, like its starting noise, depends on neither its batch nor the global RNG.
    The seed is derived rather than the sample's own so the step noise is not a copy of the starting
    noise (a fresh ``manual_seed(s)`` would draw exactly the same numbers first).
    """
    return [torch.Generator().manual_seed(derive_seed(int(s), "step-noise")) for s in seeds]
