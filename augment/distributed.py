"""Run work units on a pool of Ray actors, or inline with the same code.

A *worker* is any object with ``run(unit) -> result``, built by a picklable factory; each actor
builds one worker per stage and takes units one at a time. The driver receives results as they
finish and writes them (so a cluster needs no shared disk), while the actor already works on its
next unit. ``workers=0`` runs the same worker in this process, which is what tests and debugging
use; results are identical because units carry their own seeds.

A :class:`Pool` may serve several stages (``augment build``: tokens, generate, the baseline arm):
its actors outlive a stage, and each actor's :class:`WorkerHost` keeps the models the workers
loaded (:mod:`augment.models.cache`), so Ray start-up, actor start-up and model loading are paid
once per build. :func:`run_units` is a pool for one stage.

Connection (:func:`connect`), first match wins: ``--address`` (``PoolSpec.address``), then
``$RAY_ADDRESS``, then a Ray head running on this machine (the address ``ray start`` records, the
one ``ray.init()`` itself would join, used only while its GCS process is alive), else a private
local Ray sized to this machine. An address that cannot be reached is one :class:`AugmentError`.

Placement is by request, not by what happens to be up: ``workers`` is the number of actors (never
more than units), whatever the cluster holds when the job starts, so an autoscaler sees the whole
demand. Each actor asks for ``gpus_per_worker`` GPUs (fractions share a GPU) when the device
wants CUDA: ``cuda``/``cuda:N`` always; ``auto`` when the connected cluster has GPUs now or its
autoscaler config lists GPU node types; ``cpu`` never. CPU actors split the cluster's cores
between them; every unit runs with ``PoolSpec.threads`` torch threads, inline or on an actor, so
that the worker count does not change a result's bytes (without it, an actor's share of cores).
When no actor is usable and no node of the cluster could hold one for ``placement_timeout``
seconds (an autoscaler did not add one), the run stops with one error naming the missing
resource; at once on a private local Ray, which no node will ever join. A cluster that could
hold the actors but is busy, or slow to start them, is waited for. When some actors work and
others have not started within ``placement_timeout``, one warning line says so and the run goes
on with fewer (the others join when they start).

Failures: an exception raised by the worker fails its unit only (``on_error``), the others carry
on. A lost actor (process killed, node removed, its result lost with the node) costs the unit an
attempt and the unit goes back to the queue for the next usable actor: Ray restarts the actor
(``max_restarts``), on another node when its own is gone, and a permanently dead actor is
replaced by a new one. A unit that loses its actor more than ``retries`` times is reported through
``on_error``. A worker that cannot be built raises an :class:`AugmentError` (a user mistake) on the
driver; any other start-up error fails the units no actor is left to run. Every unit reaches
``on_result`` or ``on_error`` exactly once. An ``OSError`` out of Ray itself (``ConnectionError``:
the cluster went away mid-stage) is one :class:`AugmentError` naming the cluster
(:func:`lost_cluster_error`); an exception of ``on_result`` / ``on_error`` (the driver's writes)
passes unchanged, for the stage to report.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from augment.errors import AugmentError

WorkerFactory = Callable[[], Any]

log = logging.getLogger(__name__)

#: seconds between looks at the pool while nothing finishes (pending actors, the stall clock)
POLL_S = 1.0
#: seconds a TCP probe of ``--address`` waits before calling the address unreachable
PROBE_TIMEOUT_S = 10.0


@dataclass
class PoolSpec:
    """How to run units: ``workers`` actors (0: inline), where, how often a unit may lose its actor.

    ``gpus_per_worker``: the GPUs each actor asks for when the device wants CUDA (0.5 puts two
    actors on one GPU); ``placement_timeout``: seconds to wait, while no actor is usable, for a
    node that could hold one before giving up with an error naming the missing resource.
    ``threads``: torch threads per unit, inline and on every actor alike (None: an actor's share
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


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != max(1, n):
        torch.set_num_threads(max(1, n))


# --------------------------------------------------------------------------- connection


def _local_head() -> str | None:
    """The GCS address of a Ray head running on this machine, or None.

    Ray's own lookup (``ray.init()`` without an address does the same): the address ``ray start``
    (and ``ray.cluster_utils.Cluster``) records in the Ray temp folder, kept only while a raylet
    of this machine still serves it, so a file left by a killed head starts a private Ray instead.
    """
    try:
        from ray._private import services

        recorded = services.find_bootstrap_address(None)
        if not recorded:
            return None
        return recorded if recorded in services.find_gcs_addresses() else None
    except Exception:  # noqa: BLE001 - a private Ray API; without it we start a private Ray
        return None


def _probe(address: str) -> str | None:
    """Why ``host:port`` (or ``ray://host:port``) cannot be reached, or None when a TCP connection opens.

    ``ray.init`` retries an unreachable GCS for minutes; a plain connect answers in seconds.
    """
    target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return f"{address!r} is not host:port"
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return e.strerror or type(e).__name__


def _unreachable(address: str, source: str, reason: str, verb: str = "reach") -> AugmentError:
    """One line for a cluster that cannot be reached (or joined): where the address came from and the fixes."""
    port = address.rpartition(":")[2]
    start = f"`ray start --head --port {port}` there" if port.isdigit() else "`ray start --head`"
    return AugmentError(f"cannot {verb} a Ray cluster at {address} (from {source}): {reason}; start one with "
                        f"{start}, fix {source}, or unset --address and RAY_ADDRESS to run on a private local Ray")


def _target(address: str | None) -> tuple[str | None, str]:
    """Where :func:`connect` goes and why: (address, where it came from); None: a private Ray."""
    if address:
        return address, "--address"
    if os.environ.get("RAY_ADDRESS"):
        return os.environ["RAY_ADDRESS"], "RAY_ADDRESS"
    return _local_head(), "the Ray head running on this machine"


def _local_gpus() -> float | None:
    """The GPUs a private local Ray would offer (Ray's own detection: the node's count, capped by
    CUDA_VISIBLE_DEVICES), or None when it cannot tell."""
    try:
        from ray._private import accelerators

        manager = accelerators.get_accelerator_manager_for_resource("GPU")
        n = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        return float(min(n, len(visible)) if visible is not None else n)
    except Exception:  # noqa: BLE001 - a private Ray API; run_units checks again once Ray is up
        return None


def check_pool(spec: PoolSpec) -> None:
    """The checks of ``spec`` that need no Ray session, for a stage's preflight (before any file is
    written): an ``--address`` / ``$RAY_ADDRESS`` that cannot be reached, and CUDA workers asked
    of a private local Ray on a machine without a GPU. :func:`run_units` repeats them."""
    if spec.workers <= 0:
        return
    import ray

    if ray.is_initialized():
        return
    address, source = _target(spec.address)
    if address and address not in ("auto", "local"):
        reason = _probe(address)
        if reason:
            raise _unreachable(address, source, reason)
    if (not address or address == "local") and spec.device.startswith("cuda"):
        gpus = _local_gpus()
        if gpus is not None and gpus < spec.gpus_per_worker:
            raise placement_error({"num_gpus": spec.gpus_per_worker, "num_cpus": 1}, spec.workers, private=True)


def connect(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join or start Ray once per process (see the module doc for the order); True when this call
    started a private local Ray that no other node can join.

    A session this process already has is kept (and counted as joinable: it may be a cluster).
    """
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if ray.is_initialized():
        return False
    address, source = _target(address)
    if address and address != "local":
        reason = _probe(address) if address != "auto" else None
        if reason:
            raise _unreachable(address, source, reason)
        try:
            # Joining: the resources belong to the cluster, passing num_cpus would raise.
            ray.init(address=address, include_dashboard=False, log_to_driver=True, logging_level="ERROR")
        except (ConnectionError, RuntimeError) as e:  # nothing there; another Ray or Python version
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise _unreachable(address, source, first, verb="join") from None
        return False
    # "local" forces a new instance even when ray.init() would find a head recorded on this machine.
    ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR", configure_logging=True)
    return True


def _autoscaler_max_resources() -> dict[str, float] | None:
    """The most of each resource the autoscaler may add (its node types x max counts), or None.

    Ray Data and Ray Train read the same thing; it exists only where the autoscaler reports its
    config (autoscaler v2), so None means "unknown", not "nothing".
    """
    try:
        from ray._private import state

        found = state.state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - a private Ray API; unknown is a valid answer
        return None
    return {k: float(v) for k, v in found.items()} if found else None


# --------------------------------------------------------------------------- planning (pure)


def wants_gpu(device: str, resources: dict[str, float], max_resources: dict[str, float] | None = None) -> bool:
    """Whether the actors ask for GPUs: ``cuda[:N]`` always, ``cpu`` never, ``auto`` when the
    cluster has GPUs now or its autoscaler can add GPU nodes (``max_resources``)."""
    if device.startswith("cuda"):
        return True
    if device != "auto":
        return False
    return resources.get("GPU", 0) > 0 or (max_resources or {}).get("GPU", 0) > 0


def plan_actors(resources: dict[str, float], workers: int, n_units: int, device: str, cpus: int,
                gpus_per_worker: float = 1.0,
                max_resources: dict[str, float] | None = None) -> tuple[int, dict[str, float], int]:
    """How many actors, with which Ray resource requests, and how many torch threads each.

    ``workers`` actors (never more than units): the request, not what happens to be up, so an
    autoscaling cluster whose head alone is up still gets GPU actors and starts GPU nodes for them.
    GPU actors (:func:`wants_gpu`) ask for ``gpus_per_worker`` GPUs and one CPU each (Ray sets
    CUDA_VISIBLE_DEVICES). CPU actors share the cluster's current cores (``resources``, else
    ``cpus``) and ask for a little less than their share so that they still start while the
    driver holds part of a core.
    """
    total = int(resources.get("CPU", cpus)) or 1
    n_actors = max(1, min(workers, n_units))
    per = max(1, total // n_actors)
    if wants_gpu(device, resources, max_resources):
        return n_actors, {"num_gpus": gpus_per_worker, "num_cpus": 1}, per
    return n_actors, {"num_cpus": min(per, max(0.5, total / n_actors - 0.01))}, per


def _request(options: dict[str, float]) -> str:
    """``GPU: 1, CPU: 1`` for an actor's resource options (what ``ray status`` calls them)."""
    names = {"num_gpus": "GPU", "num_cpus": "CPU"}
    return ", ".join(f"{names.get(k, k)}: {v:g}" for k, v in options.items())


def unplaceable(options: dict[str, float], resources: dict[str, float],
                max_resources: dict[str, float] | None, private: bool) -> str | None:
    """The resource no actor can ever get (``"GPU"``), or None while one may still come.

    A private local Ray is this machine and nothing else; a cluster whose autoscaler config is
    known cannot grow past it. Any other cluster may add nodes, so only the timeout decides.
    """
    for key, name in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        need = options.get(key, 0)
        if not need or resources.get(name, 0) >= need:
            continue
        if private or (max_resources is not None and max_resources.get(name, 0) < need):
            return name
    return None


def fits_a_node(options: dict[str, float], nodes: list[dict[str, float]]) -> bool:
    """Whether one of ``nodes`` (each node's total resources) could ever hold an actor asking for
    ``options``. While none can, the actors wait for a node that is not there (the autoscaler's
    to add); while one can, they only wait for their turn or for a worker process to start."""
    need = {"GPU": options.get("num_gpus", 0), "CPU": options.get("num_cpus", 0)}
    return any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes)


def placement_error(options: dict[str, float], n_actors: int, waited: float | None = None,
                    private: bool = False) -> AugmentError:
    """The one error for actors that cannot be placed: what they asked for, why, and the fix.

    ``waited``: the seconds the pool waited in vain; None when it is known at once that nothing
    will ever offer it (``private``: a private local Ray, else the autoscaler's node types).
    """
    gpu = "num_gpus" in options
    what = f"{_request(options)} for the {n_actors} augment worker{'s' if n_actors != 1 else ''}"
    if waited is not None:
        why = f"after {waited:.0f} s"
    elif private:
        why = f"(this machine has {'no GPU' if gpu else 'too few CPUs'} and no Ray cluster is connected)"
    else:
        why = "(neither the cluster's nodes nor its autoscaler's node types have it)"
    if gpu:
        fix = ("pass --device cpu, or --address of a Ray cluster with GPU nodes" if private else
               "add GPU nodes (cluster.yaml gpu_worker), lower --gpus-per-worker, or pass --device cpu")
    else:
        fix = "lower --workers" if private else "add worker nodes or lower --workers"
    tail = " (--placement-timeout sets the wait)" if waited is not None else ""
    return AugmentError(f"no Ray node offers {what} {why}; {fix}{tail}")


def partial_placement_warning(options: dict[str, float], working: int, wanted: int, waited: float) -> str:
    """The one line for a pool that got only some of its actors: how many, what the others wait for."""
    return (f"only {working} of {wanted} augment workers started within {waited:.0f} s (the others wait for a "
            f"Ray node with {_request(options)}); going on with {working}, the rest join when they start")


# --------------------------------------------------------------------------- the actors


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip (so the driver gets its type), else a
    RuntimeError with its type and message (some exception classes cannot be rebuilt)."""
    try:
        pickle.loads(pickle.dumps(exc))  # our own bytes, made a line above
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


class WorkerHost:
    """Where stage workers live, in a Ray actor or (inline) in the driver: one worker per stage,
    built from that stage's factory, and one :class:`~augment.models.cache.ModelCache` for all of
    them, so the stages of one ``augment build`` load the backbone and the classifier once.

    ``stage`` numbers the runs of a :class:`Pool`; a new number drops the previous stage's worker
    (its models stay in the cache). A worker that cannot be built is remembered, not raised, so
    an actor reports it once by its own name (:meth:`UnitActor.ping`) instead of dying."""

    def __init__(self) -> None:
        from augment.models.cache import ModelCache

        self.cache = ModelCache()
        self.stage: int | None = None
        self.worker: Any = None
        self.error: BaseException | None = None

    def prepare(self, stage: int, factory: WorkerFactory) -> BaseException | None:
        """Build the stage's worker unless it is built; the error that prevented it, else None."""
        from augment.models.cache import use

        if stage != self.stage:
            self.stage, self.worker, self.error = stage, None, None
        if self.worker is None and self.error is None:
            try:
                with use(self.cache):
                    self.worker = factory()
            except Exception as e:  # noqa: BLE001 - reported by the caller (ping, or raised inline)
                self.error = e
        return self.error

    def run(self, stage: int, factory: WorkerFactory, unit: Any) -> Any:
        from augment.models.cache import use

        error = self.prepare(stage, factory)
        if error is not None:
            raise error
        with use(self.cache):
            return self.worker.run(unit)


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
        def ping(self, stage: int, factory: WorkerFactory, threads: int) -> BaseException | None:
            """None once the worker is built (Ray retries this call through restarts), else why not."""
            _set_threads(threads)
            error = self.host.prepare(stage, factory)
            return None if error is None else _portable(error)

        def run(self, stage: int, factory: WorkerFactory, threads: int, unit: Any) -> Any:
            _set_threads(threads)
            error = self.host.prepare(stage, factory)
            if error is not None:
                raise _portable(error)
            return self.host.run(stage, factory, unit)

        def loads(self) -> int:
            """How many models this actor loaded (tests and measurements: once per model, not per stage)."""
            return self.host.cache.loads

    return UnitActor


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


class _Actors:
    """The driver's loop over the actors of a :class:`Pool`: hand units to usable actors, collect
    results, survive lost actors. The actors outlive a stage; each stage re-pings them with its
    own factory (an actor that is still starting answers when it is up)."""

    def __init__(self, spec: PoolSpec, options: dict[str, float]) -> None:
        self.spec, self.options = spec, options
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
        self.refs[member.actor.ping.remote(run.stage, run.factory, run.threads)] = (member, None)

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
                    self.refs[m.actor.run.remote(run.stage, run.factory, run.threads, units[idx])] = (m, idx)

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
                if error is None:
                    member.state = "idle"
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


# --------------------------------------------------------------------------- entry points


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
            actors.run(_StageRun(self.stage, factory, self.spec.threads or threads, n_actors), units, _passed(on_result),
                       _passed(on_error))
        except _FromCallback as e:  # the driver's own error (a write, a user mistake): as it was raised
            raise e.error from None
        except OSError as e:  # ConnectionError and the like from Ray itself: the cluster, not a disk
            raise lost_cluster_error(self.where or _target(self.spec.address)[0] or "a private local Ray", e) from None

    def _run_inline(self, factory: WorkerFactory, units: list[Any], on_result: Callable[[Any, Any], None],
                    on_error: Callable[[Any, BaseException], None]) -> None:
        host = self.host = self.host or WorkerHost()
        with torch_threads(self.spec.threads):
            error = host.prepare(self.stage, factory)
            if error is not None:
                raise error
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
        self.actors = _Actors(self.spec, options)
        return self.actors

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


def lost_cluster_error(where: str, exc: BaseException) -> AugmentError:
    """The one line for a Ray session that fails under a running stage (``ConnectionError`` and
    other ``OSError`` from Ray): which cluster, what Ray said, and how to resume."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    where = where if where.startswith("a private") else f"the Ray cluster at {where}"
    return AugmentError(f"lost {where} during the stage ({type(exc).__name__}: {text}); the finished units "
                        "are kept: check the cluster (`ray status`) and re-run the same command to resume")


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


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """This process runs torch with ``n`` threads inside the block (None: as it is), the caller's
    count restored after: what a unit gets inline, and on an actor (tests that run a worker by
    hand use it to get the stage's bytes)."""
    import torch

    before = torch.get_num_threads()
    if n:
        _set_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
