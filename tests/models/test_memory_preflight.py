"""The memory preflight wired into the workers (issue 19): before any model loads on a CUDA worker
(or the driver for --workers 0), a config predicted not to fit the card's free memory is refused
in one line, and a generation batch left on auto is lowered to one that fits. Run on the CPU with
the device type and the free-memory query monkeypatched."""

from __future__ import annotations

import pytest
import torch

from augment.errors import AugmentError
from augment.models import memory
from augment.models.cache import ModelCache
from tests.generate.test_runner import micro_config


@pytest.fixture()
def fake_cuda(monkeypatch):
    """Workers see a CUDA device with ``free[0]`` bytes free (the models still load on the CPU)."""
    free = [0]
    monkeypatch.setattr(memory, "compute_device", lambda cfg: torch.device("cuda", 0))
    monkeypatch.setattr(memory, "free_for_models", lambda device: (free[0], "Fake GPU (cuda:0)"))
    return free


def _no_load(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("a model loaded before the memory preflight refused the config")
    monkeypatch.setattr(ModelCache, "backbone", refuse)


def test_tokens_refused_before_any_model_loads(tmp_path, micro_pipeline_dir, micro_classifier_path, fake_cuda,
                                              monkeypatch):
    from augment.tokens.runner import run_tokens

    _no_load(monkeypatch)
    fake_cuda[0] = int(0.2 * memory.GB)  # less than the CUDA context alone
    cfg = micro_config(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    with pytest.raises(AugmentError) as err:
        run_tokens(cfg, show_progress=False)
    line = str(err.value)
    assert "\n" not in line and "the token step" in line and "Fake GPU (cuda:0) has 0.2 GB free" in line
    assert "lower tokens.batch_size" in line


def test_an_auto_generation_batch_is_lowered_to_one_that_fits(tmp_path, micro_pipeline_dir, micro_classifier_path,
                                                             fake_cuda):
    from augment.generate.runner import GenerateStage

    cfg = micro_config(tmp_path / "run", micro_pipeline_dir, micro_classifier_path, batch_size=None)
    default = memory.plan(cfg, "cuda", ("generation batch",))[0]
    four = memory.plan(cfg, "cuda", ("generation batch",), generation_batch_size=4)[0]
    assert int(default.settings["batch"]) > 8 and memory._need(default) > memory._need(four)
    fake_cuda[0] = memory._need(four) + 1  # 4 fits, 8 does not
    stage = GenerateStage(cfg, baseline=True)
    stage.preflight()
    assert stage.worker_factory()().batch_size == 4
    # the user's own batch is never changed: refused instead, naming it
    cfg.generate.batch_size = int(default.settings["batch"])
    stage = GenerateStage(cfg, baseline=True)
    stage.preflight()
    with pytest.raises(AugmentError, match="generation batch .*lower generate.batch_size"):
        stage.worker_factory()()
    # off CUDA nothing is counted
    assert memory.preflight(cfg, torch.device("cpu"), free=lambda d: pytest.fail("no CUDA query")) is None
