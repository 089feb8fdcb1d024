"""Work finished inside the workers (generated images), counted on the driver's bar as it happens.

A unit (a shard of a thousand images) can take minutes; counted only when its result arrives, the
bar would move once per shard. So a worker reports how much of its unit is done, ``sink(key,
done)`` with an absolute count (a unit run again after its actor died does not count twice), and
the driver's :class:`LiveBar` adds what is new; when the unit's result arrives it adds the rest of
the unit's size, so the total is exact whatever was reported. Inline the sink updates the bar
directly; on Ray it sends the count to a small named actor (no CPU) that the driver drains twice a
second, so the bar counts images across every actor. A report that cannot be delivered is dropped:
progress never fails a unit.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Hashable, Iterator
from typing import Any

__all__ = ["LiveBar", "Sink"]

#: seconds between two looks at the counts the actors sent
POLL_S = 0.5


class _Counts:
    """The Ray actor holding the latest count per unit until the driver takes them."""

    def __init__(self) -> None:
        self.counts: dict[Hashable, int] = {}

    def add(self, key: Hashable, done: int) -> None:
        self.counts[key] = max(done, self.counts.get(key, 0))

    def take(self) -> dict[Hashable, int]:
        counts, self.counts = self.counts, {}
        return counts


class Sink:
    """What a worker calls with ``(unit key, work done in it so far)``; picklable when it goes to
    Ray actors (it then finds the driver's counting actor by name, in the worker's process)."""

    def __init__(self, live: LiveBar | None = None, actor_name: str | None = None) -> None:
        self.live, self.actor_name = live, actor_name
        self.actor: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {"live": None, "actor_name": self.actor_name, "actor": None}

    def __call__(self, key: Hashable, done: int) -> None:
        if self.live is not None:
            self.live.report(key, done)
            return
        if self.actor_name is None:
            return
        try:
            import ray

            if self.actor is None:
                self.actor = ray.get_actor(self.actor_name)
            self.actor.add.remote(key, done)
        except Exception:  # noqa: BLE001 - not there yet, or gone: the unit's result still counts
            self.actor = None


class LiveBar:
    """A tqdm bar counting work as workers report it (:class:`Sink`) and as units finish."""

    def __init__(self, bar: Any) -> None:
        self.bar = bar
        self.seen: dict[Hashable, int] = {}
        self.lock = threading.Lock()
        self.actor_name = f"augment-progress-{uuid.uuid4().hex[:12]}"

    def sink(self, on_ray: bool) -> Sink:
        """The callable the workers get: this bar itself inline, the counting actor on Ray."""
        return Sink(actor_name=self.actor_name) if on_ray else Sink(live=self)

    def report(self, key: Hashable, done: int, size: int | None = None) -> None:
        """Move the bar by what is new in unit ``key``; ``size``: the unit is finished, all of it counts."""
        with self.lock:
            before = self.seen.get(key, 0)
            now = size if size is not None else max(before, done)
            if now > before or size is not None:
                self.seen[key] = now
                self.bar.update(now - before)

    def finished(self, key: Hashable, size: int) -> None:
        """The unit's result arrived: count the rest of it (or all of it, when nothing was reported)."""
        self.report(key, size, size=size)

    @contextlib.contextmanager
    def collecting(self, on_ray: bool) -> Iterator[None]:
        """While the units run on Ray: the counting actor, drained into the bar by a thread."""
        if not on_ray:
            yield
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._drain, args=(stop,), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=10)

    def _drain(self, stop: threading.Event) -> None:
        actor = None
        try:
            import ray

            while not stop.wait(POLL_S):
                if actor is None:
                    if not ray.is_initialized():  # the pool connects to Ray a moment later
                        continue
                    actor = ray.remote(num_cpus=0)(_Counts).options(name=self.actor_name).remote()
                for key, done in ray.get(actor.take.remote()).items():
                    self.report(key, done)
        except Exception:  # noqa: BLE001 - the bar then moves per finished unit, as before
            return
        finally:
            if actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
