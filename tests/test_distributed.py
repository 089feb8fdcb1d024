"""The same work units inline and on Ray actors: same results; failures reported, others carry on."""

from __future__ import annotations

import os

import pytest
import torch

from augment.config import Config, GenerateConfig, TokenConfig
from augment.distributed import PoolSpec, run_units
from augment.tokens.runner import run_tokens


class _Squarer:
    def run(self, unit: int) -> int:
        if unit == 3:
            raise ValueError("unit three is broken")
        return unit * unit


def _collect(spec: PoolSpec):
    results, errors = {}, {}
    run_units(_Squarer, range(6), spec, lambda u, r: results.__setitem__(u, r),
              lambda u, e: errors.__setitem__(u, str(e)))
    return results, errors


def test_inline_reports_failure_and_carries_on():
    results, errors = _collect(PoolSpec(workers=0))
    assert results == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25}
    assert list(errors) == [3] and "broken" in errors[3]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_pool_matches_inline(ray_local):
    assert _collect(PoolSpec(workers=2)) == _collect(PoolSpec(workers=0))


def test_ray_and_inline_tokens_are_the_same(ray_local, tmp_path, micro_pipeline_dir, micro_classifier_path):
    def cfg(out, workers):
        return Config(dataset="cub", model=str(micro_pipeline_dir), classifier=f"timm:test_resnet@{micro_classifier_path}",
                      judge=None, out=str(out), workers=workers,
                      tokens=TokenConfig(batch_size=2, steps=2, max_steps=2, grad_steps=1, lr=0.05, acc_threshold=1.1),
                      generate=GenerateConfig())

    from augment.tokens.textual_inversion import read_token

    # Each of the 2 actors gets 1 of the 2 cores (1 torch thread); run inline with 1 thread too, so that the
    # reductions are the same: the results are then identical, not merely close (AdamW's first steps are
    # +-lr per element, so thread-order rounding on a near-zero gradient would flip whole steps).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        inline = run_tokens(cfg(tmp_path / "inline", 0), show_progress=False)
    finally:
        torch.set_num_threads(threads)
    on_ray = run_tokens(cfg(tmp_path / "ray", 2), show_progress=False)
    assert inline.trained == on_ray.trained == 3
    for a, b in zip(sorted((tmp_path / "inline" / "tokens").glob("*.safetensors")),
                    sorted((tmp_path / "ray" / "tokens").glob("*.safetensors")), strict=True):
        assert a.name == b.name
        ta, va = read_token(a)
        tb, vb = read_token(b)
        assert ta == tb
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)
