"""Joining Ray, and the checks of a pool that need no Ray session.

Connection (:func:`connect`), first match wins: ``--address`` (``PoolSpec.address``), then
``$RAY_ADDRESS``, then a Ray head running on this machine (the address ``ray start`` records, the
one ``ray.init()`` itself would join, used only while its GCS process is alive), else a private
local Ray sized to this machine. An address that cannot be reached is one :class:`AugmentError`,
and so is a cluster that goes away under a running stage (:func:`lost_cluster_error`).
"""

from __future__ import annotations

import os
import resource
import signal
import socket
import threading

from augment.distributed.placement import placement_error
from augment.distributed.spec import PoolSpec
from augment.errors import AugmentError, Terminated

#: seconds a TCP probe of ``--address`` waits before calling the address unreachable
PROBE_TIMEOUT_S = 10.0


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


def _raise_terminated(signum: int, frame: object) -> None:
    # remembered too: when the signal lands inside a blocking Ray call, Ray's C++ side reports the
    # interruption and its Cython layer raises a plain KeyboardInterrupt in place of this one
    Terminated.received = signum
    raise Terminated(signum)


def take_back_sigterm() -> None:
    """SIGTERM raises :class:`~augment.errors.Terminated` in the main thread again: ``ray.init``
    installs Ray's native handler (a C++ stack dump, then abort: exit -6, the lock file and empty
    folders left), which Python's ``signal.signal`` replaces."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _raise_terminated)


def object_store_bytes() -> int | None:
    """The object store a private Ray gets under an address-space limit (``ulimit -v``, ``prlimit
    --as``): an eighth of it (at least 100 MiB), or None (Ray's default, 30% of the memory) without
    one. Every Ray process maps the whole store; at Ray's default a limited driver aborts with a
    native ``plasma mmap failed`` dump, leaving the lock and an empty arm folder."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    return max(100 * 2**20, soft // 8)


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
        take_back_sigterm()
        return False
    # "local" forces a new instance even when ray.init() would find a head recorded on this machine.
    try:
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False, logging_level="ERROR", configure_logging=True,
                 object_store_memory=object_store_bytes())
    except SystemExit as e:  # SIGTERM while Ray starts: its Python handler exits with the signal's number
        if e.code == signal.SIGTERM:
            raise Terminated(signal.SIGTERM) from None
        raise
    take_back_sigterm()
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


def lost_cluster_error(where: str, exc: BaseException) -> AugmentError:
    """The one line for a Ray session that fails under a running stage (``ConnectionError`` and
    other ``OSError`` from Ray): which cluster, what Ray said, and how to resume."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    where = where if where.startswith("a private") else f"the Ray cluster at {where}"
    return AugmentError(f"lost {where} during the stage ({type(exc).__name__}: {text}); the finished units "
                        "are kept: check the cluster (`ray status`) and re-run the same command to resume")


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
