"""Shared fixtures: micro models (tests/fixtures/models.py) and fake datasets (tests/fixtures/datasets.py)."""

import os
import tempfile

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# augment joins a Ray head running on this machine when it finds one; the suite gets a Ray temp
# folder of its own so that it never joins (or is joined by) a developer's cluster. Short path:
# Ray's socket names must stay under the unix-socket length limit.
os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="aug-ray-", dir="/tmp"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.datasets"]


@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU Ray for one test module ("local": our own even while a head, another
    test's or a developer's, runs on this machine), shut down after it."""
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()
