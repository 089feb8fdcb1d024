"""What travels from the driver to the workers, so that no worker opens a file by the driver's path.

A cluster's GPU nodes need not share the driver's disk: everything a worker needs (token vectors,
classifier checkpoints, real images) is read by the driver and sent with the work. Large things go
through Ray's object store *by reference*: a :class:`Payload` holds a value on the driver, and when
it is pickled for Ray (an actor's factory, a work unit) it puts the value in the object store once
and pickles as that reference; the worker fetches it on :meth:`Payload.get`. The driver owns the
reference for as long as it holds the payload, so the object stays pinned in the driver's object
store: an actor restarted on another node (after a node loss) fetches it again. That is not true of
a large value passed directly as a constructor argument, which Ray puts in the object store itself
and may lose before the restart (ray-project/ray#53727). Inline runs (``--workers 0``) never pickle
the payload and use the value itself: the same code either way.

A payload may be *lazy* (built on first use on the driver, from a loader) and *released* when its
unit is done, so the driver does not hold every unit's images at once.

:func:`node_label` names the node a worker runs on, so that a user problem a node has (a model
missing from its cache) is one line naming it (:class:`augment.distributed.WorkerHost` reports a
worker that cannot be built).
"""

from __future__ import annotations

import socket
import sys
import uuid
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_MISSING: Any = object()


def _ray_session() -> tuple[str, str] | None:
    """(session, job) of the Ray driver this process is, or None (no Ray, or a Ray worker)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    ctx = ray.get_runtime_context()
    if ctx.worker.mode == ray.WORKER_MODE:
        return None  # inside a task or actor: never the owner of the shipped objects
    return ctx.get_session_name(), ctx.get_job_id()


class Payload(Generic[T]):
    """A value sent to the workers by reference (see the module doc).

    ``key`` identifies the value across processes (a worker caches what it derives from a payload
    under this key, e.g. the test split it decoded once).
    """

    def __init__(self, value: T = _MISSING, *, load: Callable[[], T] | None = None, key: str | None = None) -> None:
        if (value is _MISSING) == (load is None):
            raise TypeError("Payload takes a value or a loader, not both")
        self.key = key or uuid.uuid4().hex
        self._value = value
        self._load = load
        self._ref: Any = None  # the object-store reference (on the driver: the one it owns)
        self._session: tuple[str, str] | None = None

    @classmethod
    def lazy(cls, load: Callable[[], T], key: str | None = None) -> Payload[T]:
        """A payload built by ``load()`` on the driver the first time it is used or shipped."""
        return cls(load=load, key=key)

    def get(self) -> T:
        """The value: the driver's own (a lazy one built now), or on a worker fetched once from the store."""
        if self._value is not _MISSING:
            return self._value
        if self._load is None:  # received by reference
            import ray

            self._value = ray.get(self._ref)
            return self._value
        value = self._load()
        if self._ref is None:
            self._value = value  # kept until shipped; afterwards the object store holds it
        return value

    def release(self) -> None:
        """Forget the value and the stored copy (the unit is done); a lazy payload reloads if used again."""
        if self._load is not None:
            self._value = _MISSING
        self._ref = self._session = None

    def __reduce__(self) -> tuple[Any, ...]:
        session = _ray_session()
        if session is None:
            if self._ref is not None and self._load is None and self._value is _MISSING:
                return (_from_ref, (self.key, self._ref))  # a worker passing on what it received
            return (_from_value, (self.key, self.get()))
        if self._ref is None or self._session != session:
            import ray

            self._ref, self._session = ray.put(self.get()), session
            if self._load is not None:
                self._value = _MISSING  # the object store holds it now; reload only if released
        return (_from_ref, (self.key, self._ref))

    def __repr__(self) -> str:
        state = "ref" if self._ref is not None else ("value" if self._value is not _MISSING else "lazy")
        return f"Payload({self.key[:8]}, {state})"


def _from_ref(key: str, ref: Any) -> Payload[Any]:
    p: Payload[Any] = Payload.__new__(Payload)
    p.key, p._value, p._load, p._ref, p._session = key, _MISSING, None, ref, None
    return p


def _from_value(key: str, value: Any) -> Payload[Any]:
    return Payload(value, key=key)


def node_label() -> str | None:
    """``"node <hostname> (<Ray node IP>)"`` inside a Ray task or actor, else None (the driver)."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().worker.mode != ray.WORKER_MODE:
        return None
    try:
        ip = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - the hostname alone still names the node
        ip = "unknown IP"
    return f"node {socket.gethostname()} ({ip})"
