"""The train/benchmark commands run tiny CNNs: the same one-thread fixture as tests/downstream."""

from tests.downstream.conftest import _one_thread  # noqa: F401  (autouse fixture, re-registered here)
