"""Where stage workers live, in a Ray actor or (inline) in the driver, and what a worker is built from.

A *worker* is any object with ``run(unit) -> result``, built by a picklable :class:`WorkerFactory`
that takes the host's :class:`~augment.models.cache.ModelCache`: the host passes its cache to every
factory it calls, so the stages of one ``augment build`` load the backbone and the classifier once
per host. A factory called by hand with no cache loads its models afresh.

A worker that cannot be built is the host's to report, and only the host's: :meth:`WorkerHost.prepare`
keeps the error (an :class:`AugmentError` raised on a Ray node names the node) and the pool raises
it on the driver, once, by its own name, instead of letting every unit fail with "actor died".
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from augment.errors import AugmentError
from augment.shipping import node_label

if TYPE_CHECKING:
    from augment.models.cache import ModelCache
    from augment.models.device import DeviceInfo

class WorkerFactory(Protocol):
    """Builds one stage's worker from the models of its host, called as ``factory(cache=...)`` (by
    keyword: a ``partial`` of a worker class may leave optional arguments before it). Picklable:
    it travels to the actors with every call."""

    def __call__(self, *, cache: ModelCache) -> Any: ...


def ignoring_cache(factory: Callable[[], Any]) -> WorkerFactory:
    """A :class:`WorkerFactory` for a worker that loads no shared model (it ignores the host's cache)."""
    return _Uncached(factory)


class _Uncached:
    """``factory()`` called as a :class:`WorkerFactory` (a class, not a lambda: it is pickled for Ray)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory

    def __call__(self, *, cache: ModelCache) -> Any:
        return self.factory()


def _set_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != max(1, n):
        torch.set_num_threads(max(1, n))


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


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives a pickle round trip (so the driver gets its type), else a
    RuntimeError with its type and message (some exception classes cannot be rebuilt)."""
    try:
        pickle.loads(pickle.dumps(exc))  # our own bytes, made a line above
        return exc
    except Exception:  # noqa: BLE001
        return RuntimeError(f"{type(exc).__name__}: {exc}")




def _on_this_node(error: AugmentError) -> AugmentError:
    """``error`` named with the Ray node it happened on (a model missing from that node's cache is
    that node's problem); as it is on the driver or when the message names the node already."""
    node = node_label()
    return AugmentError(f"on {node}: {error}") if node and node not in str(error) else error


class WorkerHost:
    """One worker per stage, built from that stage's factory with this host's
    :class:`~augment.models.cache.ModelCache`, which outlives the stages.

    ``stage`` numbers the runs of a :class:`~augment.distributed.pool.Pool`; a new number drops the
    previous stage's worker (its models stay in the cache). A worker that cannot be built is
    remembered, not raised, so an actor reports it once (:meth:`prepare`, the pool's ping) instead
    of dying."""

    def __init__(self) -> None:
        from augment.models.cache import ModelCache

        self.cache = ModelCache()
        self.stage: int | None = None
        self.worker: Any = None
        self.error: BaseException | None = None

    def prepare(self, stage: int, factory: WorkerFactory) -> BaseException | None:
        """Build the stage's worker unless it is built; the error that prevented it, else None."""
        if stage != self.stage:
            self.stage, self.worker, self.error = stage, None, None
        if self.worker is None and self.error is None:
            try:
                self.worker = factory(cache=self.cache)
            except AugmentError as e:  # a user problem: one line, raised on the driver
                self.error = _on_this_node(e)
            except Exception as e:  # noqa: BLE001 - reported by the caller (ping, or raised inline)
                self.error = e
        return self.error

    def device_info(self) -> DeviceInfo | None:
        """What the built worker computes on (its ``device_info``, resolved on this host: the
        driver's ``auto`` says nothing of a Ray node's GPU); None for a worker without a device."""
        return getattr(self.worker, "device_info", None)

    def run(self, stage: int, factory: WorkerFactory, unit: Any) -> Any:
        error = self.prepare(stage, factory)
        if error is not None:
            raise error
        return self.worker.run(unit)
