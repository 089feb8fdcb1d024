"""Payloads travel by reference and survive an actor restart; a node's user problem is one line naming it."""

from __future__ import annotations

import os
import pickle
import time
from functools import partial

import pytest

from augment.errors import AugmentError
from augment.shipping import Payload, node_label


def test_inline_payload_is_the_value_and_lazy_ones_load_once_until_released():
    calls = []

    def load():
        calls.append(1)
        return [len(calls)]

    assert Payload({"a": 1}).get() == {"a": 1}
    lazy = Payload.lazy(load)
    assert calls == [] and lazy.get() == [1] and lazy.get() == [1] and calls == [1]
    lazy.release()
    assert lazy.get() == [2]
    with pytest.raises(TypeError):
        Payload(1, load=load)


def test_without_ray_a_payload_pickles_as_its_value():
    lazy = Payload.lazy(lambda: "images", key="k1")  # the loader (a lambda) is never pickled
    back = pickle.loads(pickle.dumps(lazy))
    assert back.get() == "images" and back.key == "k1"


def _touch(payload: Payload) -> tuple[str, int]:
    return payload.key, len(payload.get())


def test_on_ray_a_payload_is_put_once_and_fetched_by_reference():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        big = Payload(b"x" * (2 << 20))
        remote = ray.remote(_touch)
        assert ray.get([remote.remote(big), remote.remote(big)]) == [(big.key, 2 << 20)] * 2
        ref = big._ref
        assert ref is not None
        pickle.dumps(big)  # shipping it again reuses the stored copy
        assert big._ref is ref
        lazy = Payload.lazy(partial(bytes, 10))
        assert ray.get(remote.remote(lazy)) == (lazy.key, 10)
        assert lazy._value is not None and lazy._ref is not None  # the object store holds it now
        lazy.release()
        assert lazy._ref is None and ray.get(remote.remote(lazy)) == (lazy.key, 10)
    finally:
        ray.shutdown()
    assert big.get() == b"x" * (2 << 20)  # the driver keeps its value after Ray is gone


class _Holder:
    def __init__(self, payload: Payload) -> None:
        self.size = len(payload.get())

    def run(self, unit: int) -> int:
        return self.size + unit


def _holder_factory(payload: Payload) -> _Holder:
    return _Holder(payload)


@pytest.mark.slow
def test_actor_restarted_on_another_node_gets_its_payload_again():
    """ray-project/ray#53727: a >100 KB constructor argument is lost when the actor restarts on
    another node; a payload inside the factory is owned (pinned) by the driver and is fetched again."""
    import numpy as np
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, logging_level="ERROR")
        first = cluster.add_node(num_cpus=1)

        @ray.remote(num_cpus=1, max_restarts=1, max_task_retries=0)
        class Actor:
            def __init__(self, factory) -> None:
                self.worker = factory()

            def run(self, unit: int) -> tuple[int, str]:
                return self.worker.run(unit), ray.get_runtime_context().get_node_id()

        actor = Actor.remote(partial(_holder_factory, Payload(np.zeros(4 << 20, dtype=np.uint8))))
        size, node = ray.get(actor.run.remote(1))
        cluster.add_node(num_cpus=1)
        cluster.remove_node(first, allow_graceful=True)
        for _ in range(120):  # calls fail while the actor restarts (max_task_retries=0, as in augment's pool)
            try:
                size2, node2 = ray.get(actor.run.remote(2), timeout=120)
                break
            except ray.exceptions.ActorUnavailableError:
                time.sleep(1)
        else:
            pytest.fail("the actor did not come back on the second node")
        assert (size, size2) == ((4 << 20) + 1, (4 << 20) + 2) and node2 != node
    finally:
        ray.shutdown()
        cluster.shutdown()


def _broken_factory(*, cache):
    raise AugmentError("timm weights for 'resnet50' are not in the local cache")


def test_a_worker_that_cannot_be_built_is_one_line_as_it_was_raised_on_the_driver():
    from augment.distributed import PoolSpec, run_units

    assert node_label() is None  # the driver is no worker node
    with pytest.raises(AugmentError, match=r"^timm weights for 'resnet50' are not in the local cache$"):
        run_units(_broken_factory, [0, 1], PoolSpec(workers=0), lambda u, r: None, lambda u, e: None)


def test_on_a_ray_actor_the_error_names_the_node_and_reaches_the_driver_as_itself():
    import ray

    from augment.distributed import PoolSpec, run_units

    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level="ERROR")
    errors: list[BaseException] = []
    try:
        with pytest.raises(AugmentError) as raised:
            run_units(_broken_factory, [0, 1], PoolSpec(workers=1), lambda u, r: None, lambda u, e: errors.append(e))
    finally:
        ray.shutdown()
    assert errors == []  # the stage stops on the one line, no unit is reported failed
    message = str(raised.value)
    assert message.startswith("on node ") and "timm weights for 'resnet50'" in message
    assert os.uname().nodename in message and "\n" not in message
