"""Run work units on a pool of Ray actors, or inline with the same code.

A :class:`Pool` may serve several stages (``augment build``: tokens, generate, the baseline arm):
its actors outlive a stage, and each actor's :class:`~augment.distributed.host.WorkerHost` keeps
the models the workers loaded (:mod:`augment.models.cache`), so Ray start-up, actor start-up and
model loading are paid once per build. :func:`run_units` is a pool for one stage. ``workers=0``
runs the same worker in this process, which is what tests and debugging use; results are
identical because units carry their own seeds. An ``OSError`` out of Ray itself
(``ConnectionError``: the cluster went away mid-stage) is one :class:`AugmentError` naming the
cluster; an exception of ``on_result`` / ``on_error`` (the driver's writes) passes unchanged, for
the stage to report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from augment.distributed.actors import _Actors, _StageRun
from augment.distributed.connection import _autoscaler_max_resources, _target, connect, lost_cluster_error
from augment.distributed.host import WorkerFactory, WorkerHost, torch_threads
from augment.distributed.placement import placement_error, plan_actors, unplaceable
from augment.distributed.spec import PoolSpec

if TYPE_CHECKING:
    from augment.models.device import DeviceInfo


class Pool:
    """Workers for one or more stages: ``spec.workers`` Ray actors, or (0) a host in this process.

    ``augment build`` opens one pool for all its stages (tokens, generate, the baseline arm), so
    Ray is joined, the actors are started and the models are loaded once (each actor's
    :class:`WorkerHost` caches them); a stage run on its own opens its own. Ray is joined and the
    actors planned on the first :meth:`run` that needs them: ``spec.workers`` actors' worth of
    resources each, started as stages need them (never more than a stage's units). Use it as a
    context manager: :meth:`close` ends the actors.
    """

    def __init__(self, spec: PoolSpec) -> None:
        self.spec = spec
        self.stage = 0
        self.host: WorkerHost | None = None  # inline
        self.actors: _Actors | None = None
        self.total_cpus = 1  # the cluster's CPUs when the actors were planned (threads per actor)
        self.where: str | None = None  # the Ray session joined (error lines)
        self.max_resources: dict[str, float] | None = None
        #: every distinct device the pool's workers computed on, in the order first seen (its life)
        self.devices: list[DeviceInfo] = []
        #: the devices of the latest :meth:`run` (what that stage records; empty when it ran no unit)
        self.stage_devices: list[DeviceInfo] = []
        #: told once per pool of each new device (the stage prints it: one line per command)
        self.announce: Callable[[DeviceInfo], None] | None = None

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, factory: WorkerFactory, units: Iterable[Any], on_result: Callable[[Any, Any], None],
            on_error: Callable[[Any, BaseException], None]) -> None:
        """Run every unit; ``on_result(unit, result)`` / ``on_error(unit, exc)`` are called on the
        driver, exactly once per unit. An AugmentError (from a callback, or a worker that cannot
        be built) stops the run."""
        units = list(units)
        self.stage_devices = []
        if not units:
            return
        self.stage += 1
        if self.spec.workers <= 0:
            self._run_inline(factory, units, on_result, on_error)
            return
        try:
            actors = self._actors()
            n_actors, _, threads = plan_actors({"CPU": self.total_cpus}, self.spec.workers, len(units),
                                               self.spec.device, self.total_cpus)
            actors.run(_StageRun(self.stage, factory, self.spec.threads or threads, n_actors, self.spec.deterministic),
                       units, _passed(on_result), _passed(on_error))
        except _FromCallback as e:  # the driver's own error (a write, a user mistake): as it was raised
            raise e.error from None
        except OSError as e:  # ConnectionError and the like from Ray itself: the cluster, not a disk
            raise lost_cluster_error(self.where or _target(self.spec.address)[0] or "a private local Ray", e) from None

    def _run_inline(self, factory: WorkerFactory, units: list[Any], on_result: Callable[[Any, Any], None],
                    on_error: Callable[[Any, BaseException], None]) -> None:
        from augment.models.device import deterministic_mode

        host = self.host = self.host or WorkerHost()
        with torch_threads(self.spec.threads), deterministic_mode(self.spec.deterministic):
            error = host.prepare(self.stage, factory)
            if error is not None:
                raise error
            if (info := host.device_info()) is not None:
                self._seen(info)
            for unit in units:
                try:
                    result = host.run(self.stage, factory, unit)
                except Exception as e:  # noqa: BLE001 - one unit failing must not stop the others
                    on_error(unit, e)
                    continue
                on_result(unit, result)

    def _actors(self) -> _Actors:
        """Join Ray and plan the actors (once per pool): what each asks for, checked placeable."""
        if self.actors is not None:
            return self.actors
        import ray

        cpus = os.cpu_count() or 1
        private = connect(self.spec.address, cpus)
        self.where = "a private local Ray" if private else ray.get_runtime_context().gcs_address
        resources = ray.cluster_resources()
        max_resources = None if private else _autoscaler_max_resources()
        n_actors, options, _ = plan_actors(resources, self.spec.workers, self.spec.workers, self.spec.device, cpus,
                                           self.spec.gpus_per_worker, max_resources)
        if unplaceable(options, resources, max_resources, private):
            raise placement_error(options, n_actors, private=private)
        self.total_cpus = int(resources.get("CPU", cpus)) or 1
        self.actors = _Actors(self.spec, options, on_device=self._seen)
        return self.actors

    def _seen(self, info: DeviceInfo) -> None:
        """A worker of this stage computes on ``info``: recorded for the stage, announced once per pool."""
        if info not in self.stage_devices:
            self.stage_devices.append(info)
        if info not in self.devices:
            self.devices.append(info)
            if self.announce is not None:
                self.announce(info)

    def loads(self) -> list[int]:
        """Models loaded by each worker host (one entry inline): what a stage-spanning pool saves."""
        if self.host is not None:
            return [self.host.cache.loads]
        return self.actors.loads() if self.actors is not None else []

    def close(self) -> None:
        """End the actors (their models go with them); the Ray session stays for this process."""
        if self.actors is not None:
            self.actors.close()
            self.actors = None
        self.host = None


class _FromCallback(Exception):  # noqa: N818 - a carrier, never shown
    """Carries an exception raised by ``on_result`` / ``on_error`` past the pool's Ray error mapping."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


def _passed(callback: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
    """``callback``, its exceptions wrapped in :class:`_FromCallback` (an OSError of the driver's
    writes is the stage's to report, not a lost cluster)."""

    def call(unit: Any, value: Any) -> None:
        try:
            callback(unit, value)
        except Exception as e:  # noqa: BLE001 - re-raised as is by Pool.run
            raise _FromCallback(e) from e

    return call


def run_units(
    factory: WorkerFactory,
    units: Iterable[Any],
    spec: PoolSpec,
    on_result: Callable[[Any, Any], None],
    on_error: Callable[[Any, BaseException], None],
) -> None:
    """Run every unit on a pool of its own (see :meth:`Pool.run`), sized for these units only."""
    units = list(units)
    if not units:
        return
    with Pool(replace(spec, workers=min(spec.workers, len(units)))) as pool:
        pool.run(factory, units, on_result, on_error)
