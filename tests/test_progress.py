"""The generate bar counts work as workers report it, inline and across Ray actors (issue 13)."""

from __future__ import annotations

import time
from functools import partial

import pytest

from augment.distributed import PoolSpec, ignoring_cache, run_units
from augment.progress import LiveBar, Sink


class _Bar:
    def __init__(self) -> None:
        self.updates: list[int] = []

    def update(self, n: int) -> None:
        self.updates.append(n)


def test_counts_are_absolute_so_nothing_counts_twice():
    bar = _Bar()
    live = LiveBar(bar)
    live.report("a", 2)
    live.report("a", 1)  # late or repeated: nothing new
    live.report("a", 2)  # the unit ran again after its actor died: counts from 0 again
    live.finished("a", 5)
    live.report("a", 4)  # drained after the result: nothing new
    live.finished("b", 3)  # never reported: all of it at once
    assert bar.updates == [2, 3, 3]


class _Reporting:
    """Reports 1..size for its unit, pausing so that the driver drains the reports before the result."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def run(self, unit: int) -> int:
        for done in range(1, 4):
            self.sink(unit, done)
            time.sleep(0.7)
        return unit


@pytest.mark.parametrize("workers", [0, 2])
def test_the_bar_moves_while_units_run(workers, request):
    if workers:
        request.getfixturevalue("ray_local")
    bar = _Bar()
    live = LiveBar(bar)
    finished: list[int] = []

    def on_result(unit: int, _result: int) -> None:
        finished.append(sum(bar.updates))
        live.finished(unit, 3)

    with live.collecting(on_ray=workers > 0):
        run_units(ignoring_cache(partial(_Reporting, live.sink(workers > 0))), range(4), PoolSpec(workers=workers), on_result,
                  lambda u, e: pytest.fail(str(e)))
    assert sum(bar.updates) == 12
    assert finished[0] > 0  # images of the first unit were counted before its result arrived
