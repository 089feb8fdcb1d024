"""Run work units on a pool of Ray actors, or inline with the same code.

A *worker* is any object with ``run(unit) -> result``, built by a picklable factory; each actor
builds one worker (loading the backbone and classifier once) and takes units from a queue. The
driver receives results as they finish and writes them (so a cluster needs no shared disk), while
the actors go on with the next unit. ``workers=0`` runs the same worker in this process, which is
what tests and debugging use; results are identical because units carry their own seeds.

Resources: one actor per GPU (``num_gpus=1``) when the cluster has GPUs; otherwise ``workers`` CPU
actors that split the cores between them (torch threads set to match). A dead actor is restarted
by Ray (``max_restarts``) and its unit retried; a unit that keeps failing is reported through
``on_error`` and the others carry on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

WorkerFactory = Callable[[], Any]


@dataclass
class PoolSpec:
    workers: int = 2
    address: str | None = None
    retries: int = 2
    device: str = "auto"


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, n))


def _ray_init(address: str | None, num_cpus: int | None) -> None:
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        # Connecting: resources belong to the cluster, passing num_cpus would raise.
        ray.init(address=address, include_dashboard=False, log_to_driver=True)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR", configure_logging=True)


def _actor_class():
    import ray

    @ray.remote(max_restarts=2, max_task_retries=0)
    class UnitActor:
        def __init__(self, factory: WorkerFactory, threads: int) -> None:
            _set_threads(threads)
            self.worker = factory()

        def run(self, unit: Any) -> Any:
            return self.worker.run(unit)

        def ping(self) -> bool:
            return True

    return UnitActor


def run_units(
    factory: WorkerFactory,
    units: Iterable[Any],
    spec: PoolSpec,
    on_result: Callable[[Any, Any], None],
    on_error: Callable[[Any, BaseException], None],
) -> None:
    """Run every unit; ``on_result(unit, result)`` / ``on_error(unit, exc)`` are called on the driver."""
    units = list(units)
    if not units:
        return
    if spec.workers <= 0:
        worker = factory()
        for unit in units:
            try:
                result = worker.run(unit)
            except Exception as e:  # noqa: BLE001 - one unit failing must not stop the others
                on_error(unit, e)
                continue
            on_result(unit, result)
        return
    _run_ray(factory, units, spec, on_result, on_error)


def plan_actors(resources: dict[str, float], workers: int, n_units: int, device: str,
                cpus: int) -> tuple[int, dict[str, float], int]:
    """How many actors, with which Ray resource requests, and how many torch threads each.

    GPUs present (and not ``--device cpu``): one actor per GPU, ``num_gpus=1`` each (Ray sets
    CUDA_VISIBLE_DEVICES), never more actors than units. No GPU: ``workers`` CPU actors sharing the
    cores; an actor asking for a GPU on a CPU-only cluster would stay pending forever.
    """
    gpus = int(resources.get("GPU", 0))
    total = int(resources.get("CPU", cpus)) or 1
    if device != "cpu" and gpus > 0:
        n_actors = max(1, min(gpus, n_units))
        return n_actors, {"num_gpus": 1, "num_cpus": 1}, max(1, total // n_actors)
    n_actors = max(1, min(workers, n_units))
    per = max(1, total // n_actors)
    # Ask for a fraction so actors still start when the driver holds part of a core.
    return n_actors, {"num_cpus": min(per, max(0.5, total / n_actors - 0.01))}, per


def _run_ray(factory, units, spec, on_result, on_error) -> None:
    import ray
    from ray.exceptions import RayActorError, RayTaskError

    cpus = os.cpu_count() or 1
    _ray_init(spec.address, None if spec.address or os.environ.get("RAY_ADDRESS") else cpus)
    n_actors, options, threads = plan_actors(ray.cluster_resources(), spec.workers, len(units), spec.device, cpus)
    Actor = _actor_class()
    actors = [Actor.options(**options).remote(factory, threads) for _ in range(n_actors)]
    queue = list(enumerate(units))
    attempts: dict[int, int] = {}
    running: dict[Any, tuple[Any, int, Any]] = {}

    def submit(actor) -> None:
        if queue:
            idx, unit = queue.pop(0)
            running[actor.run.remote(unit)] = (actor, idx, unit)

    for actor in actors:
        submit(actor)
    while running:
        done, _ = ray.wait(list(running), num_returns=1)
        ref = done[0]
        actor, idx, unit = running.pop(ref)
        try:
            result = ray.get(ref)
        except (RayActorError, RayTaskError) as e:
            attempts[idx] = attempts.get(idx, 0) + 1
            dead = isinstance(e, RayActorError)
            if attempts[idx] <= spec.retries and dead:
                queue.insert(0, (idx, unit))  # the actor restarts (its __init__ reloads the models)
            else:
                on_error(unit, e.cause if isinstance(e, RayTaskError) and e.cause else e)
            submit(actor)
            continue
        on_result(unit, result)
        submit(actor)
    for actor in actors:
        ray.kill(actor)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
