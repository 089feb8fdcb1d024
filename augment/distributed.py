"""Run work units on a pool of Ray actors, or inline with the same code.

A *worker* is any object with ``run(unit) -> result``, built by a picklable factory; each actor
builds one worker (loading the backbone and classifier once) and takes units one at a time. The
driver receives results as they finish and writes them (so a cluster needs no shared disk), while
the actor already works on its next unit. ``workers=0`` runs the same worker in this process,
which is what tests and debugging use; results are identical because units carry their own seeds.

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
hold the actors but is busy, or slow to start them, is waited for.

Failures: an exception raised by the worker fails its unit only (``on_error``), the others carry
on. A lost actor (process killed, node removed, its result lost with the node) costs the unit an
attempt and the unit goes back to the queue for the next usable actor: Ray restarts the actor
(``max_restarts``), on another node when its own is gone, and a permanently dead actor is
replaced by a new one. A unit that loses its actor more than ``retries`` times is reported through
``on_error``. A worker that cannot be built raises an :class:`AugmentError` (a user mistake) on the
driver; any other start-up error fails the units no actor is left to run. Every unit reaches
``on_result`` or ``on_error`` exactly once.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from augment.errors import AugmentError

WorkerFactory = Callable[[], Any]

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


# --------------------------------------------------------------------------- the actors


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip (so the driver gets its type), else a
    RuntimeError with its type and message (some exception classes cannot be rebuilt)."""
    try:
        pickle.loads(pickle.dumps(exc))  # our own bytes, made a line above
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _actor_class():
    import ray

    @ray.remote(max_restarts=2, max_task_retries=0)
    class UnitActor:
        """One worker on one actor. Building it never kills the actor: a start-up error is kept
        and handed to the driver by :meth:`ping`, so it is reported once, by its own name.

        The factory comes with every call, not to the constructor: its payloads are object-store
        references, and Ray warns (ray-project/ray#53727) about constructor arguments in the object
        store of a restartable actor. A (re)started actor builds its worker on the first call."""

        def __init__(self, threads: int) -> None:
            _set_threads(threads)
            self.worker: Any = None
            self.error: BaseException | None = None

        def _build(self, factory: WorkerFactory) -> None:
            if self.worker is None and self.error is None:
                try:
                    self.worker = factory()
                except Exception as e:  # noqa: BLE001 - reported by ping
                    self.error = _portable(e)

        @ray.method(max_task_retries=-1)
        def ping(self, factory: WorkerFactory) -> BaseException | None:
            """None once the worker is built (Ray retries this call through restarts), else why not."""
            self._build(factory)
            return self.error

        def run(self, factory: WorkerFactory, unit: Any) -> Any:
            self._build(factory)
            if self.worker is None:
                raise self.error or RuntimeError("the worker was not built")
            return self.worker.run(unit)

    return UnitActor


@dataclass(eq=False)
class _Member:
    """One actor of the pool and what the driver knows about it."""

    actor: Any
    state: str = "starting"  # starting | idle | busy | dead (starting covers restarts)


class _Pool:
    """The driver's loop: hand units to usable actors, collect results, survive lost actors."""

    def __init__(self, factory: WorkerFactory, spec: PoolSpec, n_actors: int, options: dict[str, float],
                 threads: int) -> None:
        self.factory, self.spec, self.options, self.threads = factory, spec, options, threads
        self.n_actors = n_actors
        self.replacements = n_actors * max(1, spec.retries)  # new actors for permanently dead ones
        self.members: list[_Member] = []
        self.refs: dict[Any, tuple[_Member, int | None]] = {}  # ref -> (actor, unit index; None: a ping)
        self.start_error: BaseException | None = None
        self.stall_since: float | None = None
        self.actor_cls = _actor_class()
        for _ in range(n_actors):
            self._add()

    def _add(self) -> None:
        member = _Member(self.actor_cls.options(**self.options).remote(self.threads))
        self.members.append(member)
        self.refs[member.actor.ping.remote(self.factory)] = (member, None)

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
        member.state = "starting"
        self.refs[member.actor.ping.remote(self.factory)] = (member, None)

    def _check_stall(self) -> None:
        """Raise once no actor has been usable, and no alive node could hold one, for
        ``placement_timeout`` seconds (see :func:`fits_a_node`; a busy or slowly starting
        cluster is waited for)."""
        import ray

        waiting = any(m.state == "starting" for m in self.members)
        working = any(m.state in ("idle", "busy") for m in self.members)
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")] if waiting and not working else []
        if not waiting or working or fits_a_node(self.options, nodes):
            self.stall_since = None
            return
        now = time.monotonic()
        self.stall_since = self.stall_since or now
        if now - self.stall_since >= self.spec.placement_timeout:
            raise placement_error(self.options, self.n_actors, now - self.stall_since)

    def run(self, units: list[Any], on_result: Callable[[Any, Any], None],
            on_error: Callable[[Any, BaseException], None]) -> None:
        import ray
        from ray.exceptions import RayError, RayTaskError

        queue: deque[int] = deque(range(len(units)))
        attempts: dict[int, int] = {}
        settled: set[int] = set()  # units that reached on_result or on_error
        last_look = time.monotonic()

        def assign() -> None:
            for m in self.members:
                if m.state == "idle" and queue:
                    idx = queue.popleft()
                    m.state = "busy"
                    self.refs[m.actor.run.remote(self.factory, units[idx])] = (m, idx)

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

    def close(self) -> None:
        import ray

        for m in self.members:
            try:
                ray.kill(m.actor)
            except Exception:  # noqa: BLE001 - already gone
                pass


# --------------------------------------------------------------------------- entry points


def run_units(
    factory: WorkerFactory,
    units: Iterable[Any],
    spec: PoolSpec,
    on_result: Callable[[Any, Any], None],
    on_error: Callable[[Any, BaseException], None],
) -> None:
    """Run every unit; ``on_result(unit, result)`` / ``on_error(unit, exc)`` are called on the
    driver, exactly once per unit. An AugmentError (from a callback, or a worker that cannot be
    built) stops the run."""
    units = list(units)
    if not units:
        return
    if spec.workers <= 0:
        _run_inline(factory, units, spec, on_result, on_error)
        return
    _run_ray(factory, units, spec, on_result, on_error)


def _run_inline(factory: WorkerFactory, units: list[Any], spec: PoolSpec, on_result: Callable[[Any, Any], None],
                on_error: Callable[[Any, BaseException], None]) -> None:
    """The units one after the other in this process, with ``spec.threads`` torch threads."""
    with torch_threads(spec.threads):
        worker = factory()
        for unit in units:
            try:
                result = worker.run(unit)
            except Exception as e:  # noqa: BLE001 - one unit failing must not stop the others
                on_error(unit, e)
                continue
            on_result(unit, result)


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


def _run_ray(factory: WorkerFactory, units: list[Any], spec: PoolSpec, on_result: Callable[[Any, Any], None],
             on_error: Callable[[Any, BaseException], None]) -> None:
    import ray

    cpus = os.cpu_count() or 1
    private = connect(spec.address, cpus)
    resources = ray.cluster_resources()
    max_resources = None if private else _autoscaler_max_resources()
    n_actors, options, threads = plan_actors(resources, spec.workers, len(units), spec.device, cpus,
                                             spec.gpus_per_worker, max_resources)
    if unplaceable(options, resources, max_resources, private):
        raise placement_error(options, n_actors, private=private)
    pool = _Pool(factory, spec, n_actors, options, spec.threads or threads)
    try:
        pool.run(units, on_result, on_error)
    finally:
        pool.close()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
