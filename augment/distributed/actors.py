"""The pool's Ray actors and the driver's loop over them.

Each actor is a :class:`~augment.distributed.host.WorkerHost` on Ray: it builds one worker per
stage and takes units one at a time; the driver receives results as they finish and writes them
(so a cluster needs no shared disk), while the actor already works on its next unit.

Failures: an exception raised by the worker fails its unit only (``on_error``), the others carry
on. A lost actor (process killed, node removed, its result lost with the node) costs the unit an
attempt and the unit goes back to the queue for the next usable actor: Ray restarts the actor
(``max_restarts``), on another node when its own is gone, and a permanently dead actor is
replaced by a new one. A unit that loses its actor more than ``retries`` times is reported through
``on_error``. A worker that cannot be built raises an :class:`AugmentError` (a user mistake) on the
driver, answered by the actor's ping; any other start-up error fails the units no actor is left to
run. Every unit reaches ``on_result`` or ``on_error`` exactly once.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from augment.distributed.host import WorkerFactory, WorkerHost, _portable, _set_threads
from augment.distributed.placement import fits_a_node, partial_placement_warning, placement_error
from augment.distributed.spec import PoolSpec
from augment.errors import AugmentError

if TYPE_CHECKING:
    from augment.models.device import DeviceInfo

#: the pool's one logger (its partial-placement warning), named for the package users know
log = logging.getLogger("augment.distributed")

#: seconds between looks at the pool while nothing finishes (pending actors, the stall clock)
POLL_S = 1.0


def _set_deterministic() -> None:
    """An actor's torch kernels made deterministic for its life (its process is the stage's alone)."""
    from augment.models.device import set_deterministic

    set_deterministic()


def _actor_class():
    import ray

    @ray.remote(max_restarts=2, max_task_retries=0)
    class UnitActor:
        """A :class:`WorkerHost` on Ray. Building a worker never kills the actor: a start-up error
        is kept and handed to the driver by :meth:`ping`, so it is reported once, by its own name.

        The factory comes with every call, not to the constructor: its payloads are object-store
        references, and Ray warns (ray-project/ray#53727) about constructor arguments in the object
        store of a restartable actor. A (re)started actor builds its worker on the first call. So
        does an actor that served the previous stage of the same pool: its models stay loaded.
        The torch thread count comes with every call too, since each stage splits the cores
        between the actors it uses."""

        def __init__(self) -> None:
            self.host = WorkerHost()

        @ray.method(max_task_retries=-1)
        def ping(self, stage: int, factory: WorkerFactory, threads: int,
                 deterministic: bool = False) -> BaseException | Ready:
            """:class:`Ready` once the worker is built, with the device it resolved on this node (Ray
            retries this call through restarts), else why not. ``deterministic`` is set before any
            model loads (cuBLAS reads its workspace setting when its first handle is made)."""
            _set_threads(threads)
            if deterministic:
                _set_deterministic()
            error = self.host.prepare(stage, factory)
            return Ready(self.host.device_info()) if error is None else _portable(error)

        def run(self, stage: int, factory: WorkerFactory, threads: int, unit: Any, deterministic: bool = False) -> Any:
            _set_threads(threads)
            if deterministic:
                _set_deterministic()
            error = self.host.prepare(stage, factory)
            if error is not None:
                raise _portable(error)
            return self.host.run(stage, factory, unit)

        def loads(self) -> int:
            """How many models this actor loaded (tests and measurements: once per model, not per stage)."""
            return self.host.cache.loads

    return UnitActor


@dataclass(frozen=True)
class Ready:
    """An actor's answer to a ping once its worker is built: the device that worker resolved on
    its node (None for a worker that has none), so the driver records what computed, not "auto"."""

    device: DeviceInfo | None = None


@dataclass(eq=False)
class _Member:
    """One actor of the pool and what the driver knows about it."""

    actor: Any
    state: str = "starting"  # starting | idle | busy | dead (starting covers restarts)
    since: float = 0.0  # when it was created (the partial-placement warning)


@dataclass
class _StageRun:
    """What one stage hands the actors: its number, its factory, the torch threads per actor."""

    stage: int
    factory: WorkerFactory
    threads: int
    n_actors: int  # the actors this stage wants (never more than its units)
    deterministic: bool = False  # torch's deterministic kernels in the actors (PoolSpec.deterministic)


class _Actors:
    """The driver's loop over the actors of a :class:`Pool`: hand units to usable actors, collect
    results, survive lost actors. The actors outlive a stage; each stage re-pings them with its
    own factory (an actor that is still starting answers when it is up)."""

    def __init__(self, spec: PoolSpec, options: dict[str, float],
                 on_device: Callable[[DeviceInfo], None] | None = None) -> None:
        self.spec, self.options = spec, options
        self.on_device = on_device  # told what each actor's worker computes on, as pings answer
        self.members: list[_Member] = []
        self.refs: dict[Any, tuple[_Member, int | None]] = {}  # ref -> (actor, unit index; None: a ping)
        self.start_error: BaseException | None = None
        self.stall_since: float | None = None
        self.replacements = 0
        self.warned = False
        self.current: _StageRun | None = None
        self.actor_cls = _actor_class()

    def _ping(self, member: _Member) -> None:
        run = self.current
        assert run is not None
        self.refs[member.actor.ping.remote(run.stage, run.factory, run.threads, run.deterministic)] = (member, None)

    def _add(self) -> None:
        member = _Member(self.actor_cls.options(**self.options).remote(), since=time.monotonic())
        self.members.append(member)
        self._ping(member)

    def _lost(self, member: _Member, exc: BaseException, pinging: bool = False) -> None:
        """The actor is gone: wait for Ray's restart (ping), or replace a permanently dead one.

        A ping that fails other than with "temporarily unavailable" counts as dead (Ray already
        retries pings through restarts), so that a broken actor is never pinged in a loop.
        """
        from ray.exceptions import ActorDiedError, ActorUnavailableError

        if isinstance(exc, ActorDiedError) or (pinging and not isinstance(exc, ActorUnavailableError)):
            member.state = "dead"
            if self.replacements > 0:
                self.replacements -= 1
                self._add()
            return
        member.state, member.since = "starting", time.monotonic()
        self._ping(member)

    def _check_stall(self) -> None:
        """Raise once no actor has been usable, and no alive node could hold one, for
        ``placement_timeout`` seconds (see :func:`fits_a_node`; a busy or slowly starting
        cluster is waited for). Warn once when some actors work and others have not started
        within that time: the run goes on with fewer."""
        import ray

        run = self.current
        assert run is not None
        waiting = [m for m in self.members if m.state == "starting"]
        working = [m for m in self.members if m.state in ("idle", "busy")]
        now = time.monotonic()
        if waiting and working and not self.warned:
            late = [m for m in waiting if now - m.since >= self.spec.placement_timeout]
            if late:
                self.warned = True
                log.warning(partial_placement_warning(self.options, len(working), len(working) + len(waiting),
                                                      self.spec.placement_timeout))
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")] if waiting and not working else []
        if not waiting or working or fits_a_node(self.options, nodes):
            self.stall_since = None
            return
        self.stall_since = self.stall_since or now
        if now - self.stall_since >= self.spec.placement_timeout:
            raise placement_error(self.options, run.n_actors, now - self.stall_since)

    def _start(self, run: _StageRun) -> None:
        """Enough actors for ``run``, each (re)pinged with its factory; nothing of an earlier stage pending."""
        self.current = run
        self.refs = {}  # answers to an earlier stage's calls are no longer awaited
        self.start_error, self.stall_since = None, None
        self.replacements = run.n_actors * max(1, self.spec.retries)  # new actors for permanently dead ones
        alive = [m for m in self.members if m.state != "dead"]
        for m in alive:
            if m.state != "starting":  # one still waiting for a node keeps its clock
                m.state, m.since = "starting", time.monotonic()
            self._ping(m)
        for _ in range(run.n_actors - len(alive)):
            self._add()

    def run(self, run: _StageRun, units: list[Any], on_result: Callable[[Any, Any], None],
            on_error: Callable[[Any, BaseException], None]) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        self._start(run)
        queue: deque[int] = deque(range(len(units)))
        attempts: dict[int, int] = {}
        settled: set[int] = set()  # units that reached on_result or on_error
        last_look = time.monotonic()

        def assign() -> None:
            for m in self.members:
                if m.state == "idle" and queue:
                    idx = queue.popleft()
                    m.state = "busy"
                    self.refs[m.actor.run.remote(run.stage, run.factory, run.threads, units[idx], run.deterministic)] = (m, idx)

        def settle_error(idx: int, exc: BaseException) -> None:
            if idx not in settled:
                settled.add(idx)
                on_error(units[idx], exc)

        while len(settled) < len(units):
            assign()
            if not self.refs:  # no actor left that could run or start: the rest cannot be done
                why = self.start_error or RuntimeError("every augment worker died and could not be replaced")
                for idx in list(queue):
                    settle_error(idx, why)
                break
            done, _ = ray.wait(list(self.refs), num_returns=1, timeout=POLL_S)
            if not done or time.monotonic() - last_look >= POLL_S:
                last_look = time.monotonic()
                self._check_stall()
            if not done:
                continue
            ref = done[0]
            member, idx = self.refs.pop(ref)
            if idx is None:  # a ping: the actor is up (or could not build its worker)
                try:
                    error = ray.get(ref)
                except RayError as e:
                    self._lost(member, e, pinging=True)
                    continue
                if isinstance(error, Ready):
                    member.state = "idle"
                    if error.device is not None and self.on_device is not None:
                        self.on_device(error.device)
                    continue
                if isinstance(error, AugmentError):
                    raise error
                member.state, self.start_error = "dead", error
                ray.kill(member.actor)
                continue
            try:
                result = ray.get(ref)
            except RayTaskError as e:  # the worker raised: the unit failed, the actor is fine
                member.state = "idle"
                assign()
                settle_error(idx, e.cause if e.cause is not None else e)
                continue
            except RayError as e:  # the actor, or the node holding its result, is gone
                attempts[idx] = attempts.get(idx, 0) + 1
                if attempts[idx] <= self.spec.retries:
                    queue.appendleft(idx)
                else:
                    settle_error(idx, e)
                self._lost(member, e)
                continue
            member.state = "idle"
            assign()  # the actor goes on while the driver writes
            if idx not in settled:
                settled.add(idx)
                on_result(units[idx], result)

    def loads(self) -> list[int]:
        """Models loaded by each live actor (see :meth:`UnitActor.loads`)."""
        import ray

        return ray.get([m.actor.loads.remote() for m in self.members if m.state in ("idle", "busy")])

    def close(self) -> None:
        import ray

        for m in self.members:
            try:
                ray.kill(m.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.members, self.refs = [], {}
