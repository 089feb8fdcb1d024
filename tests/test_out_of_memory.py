"""Out of memory stops the stage with one line naming what to lower and the figure torch asked for,
instead of failing every class or shard one after another (issue 19)."""

from __future__ import annotations

import pytest
import torch

from augment.config import CasoConfig, Config
from augment.errors import AugmentError
from augment.models.memory import is_out_of_memory, out_of_memory_error
from tests.generate.test_runner import micro_config

MESSAGE = ("CUDA out of memory. Tried to allocate 2.50 GiB. GPU 0 has a total capacity of 22.05 GiB "
           "of which 1.20 GiB is free.")


def _raiser(calls: list[int]):
    def oom(*args, **kwargs):
        calls.append(1)
        raise torch.OutOfMemoryError(MESSAGE)
    return oom


def test_the_line_names_the_figure_and_the_settings_with_their_values():
    cfg = Config()
    cfg.tokens.checkpointing = False
    line = str(out_of_memory_error(torch.OutOfMemoryError(MESSAGE), "tokens", cfg))
    assert "\n" not in line and "tried to allocate 2.50 GiB" in line
    assert f"tokens.batch_size (now {cfg.tokens.batch_size})" in line and "tokens.grad_steps" in line
    assert "resolution (now native)" in line and "tokens.checkpointing: true" in line
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def test_tokens_stop_at_the_first_out_of_memory_class(tmp_path, micro_pipeline_dir, micro_classifier_path, monkeypatch):
    from augment.tokens.disco import DiscoTrainer
    from augment.tokens.runner import run_tokens

    calls: list[int] = []
    monkeypatch.setattr(DiscoTrainer, "_forward", _raiser(calls))
    cfg = micro_config(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    with pytest.raises(AugmentError, match=r"out of memory in the tokens stage \(tried to allocate 2.50 GiB\); "
                                           r"lower tokens.batch_size \(now 2\), resolution"):
        run_tokens(cfg, show_progress=False)
    assert len(calls) == 1  # one class ran into it; the others were not tried and marked failed
    assert not list((tmp_path / "run" / "tokens").glob("*.safetensors"))


def test_generate_stops_at_the_first_out_of_memory_shard(tmp_path, micro_pipeline_dir, micro_classifier_path,
                                                        monkeypatch):
    from augment.generate.runner import run_generate
    from augment.generate.worker import GenerateWorker

    calls: list[int] = []
    monkeypatch.setattr(GenerateWorker, "sample", _raiser(calls))
    cfg = micro_config(tmp_path / "run", micro_pipeline_dir, micro_classifier_path)
    with pytest.raises(AugmentError, match=r"generate stage \(tried to allocate 2.50 GiB\); lower generate.batch_size "
                                           r"\(now 4\), resolution"):
        run_generate(cfg, baseline=True, show_progress=False)
    assert len(calls) == 1


def test_caso_stops_at_the_first_out_of_memory_class(tmp_path, fake_cub, micro_pipeline_dir, micro_classifier_path,
                                                     monkeypatch):
    from augment.generate.caso_runner import run_caso
    from augment.tokens.caso import CasoTrainer

    calls: list[int] = []
    monkeypatch.setattr(CasoTrainer, "learn", _raiser(calls))
    cfg = Config(dataset="cub", data_root=str(fake_cub), model=str(micro_pipeline_dir),
                 classifier=f"timm:test_resnet@{micro_classifier_path}", judge=None, out=str(tmp_path / "run"),
                 workers=0, classes="0,1", caso=CasoConfig(k=2, max_steps=1, batch_size=2, edit_steps=4))
    with pytest.raises(AugmentError, match=r"caso stage \(tried to allocate 2.50 GiB\); lower caso.batch_size \(now 2\)"):
        run_caso(cfg, show_progress=False)
    assert len(calls) == 1
