"""How a stage's units run: :class:`PoolSpec`, the settings a pool is built from (``--workers``,
``--address``, ``--device`` ...), shared by the driver's checks and the pool itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class PoolSpec:
    """How to run units: ``workers`` actors (0: inline), where, how often a unit may lose its actor.

    ``gpus_per_worker``: the GPUs each actor asks for when the device wants CUDA (0.5 puts two
    actors on one GPU); ``placement_timeout``: seconds to wait, while no actor is usable, for a
    node that could hold one before giving up with an error naming the missing resource.
    ``deterministic``: torch's deterministic kernels in every process that runs units
    (:func:`augment.models.device.set_deterministic`). ``threads``: torch threads per unit, inline and on every actor alike (None: an actor's share
    of the cores, inline as is). A float reduction split over another number of threads rounds
    differently, and token training amplifies that, so a fixed count is what makes the bytes of
    ``--workers 0`` and ``--workers N`` the same.
    """

    workers: int = 2
    address: str | None = None
    retries: int = 2
    device: str = "auto"
    gpus_per_worker: float = 1.0
    placement_timeout: float = 300.0
    threads: int | None = None
    deterministic: bool = False
