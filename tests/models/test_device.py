"""Device/dtype choices and the actor plan for GPU and CPU clusters (checked without a GPU)."""

from __future__ import annotations

import pytest
import torch

from augment.distributed import plan_actors
from augment.errors import AugmentError
from augment.models import device as dev


def test_cpu_always_computes_in_float32():
    cpu = torch.device("cpu")
    for spec in ("auto", "float32", "float16", "bfloat16"):
        assert dev.resolve_dtype(spec, cpu) == torch.float32


def test_cuda_dtypes(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.resolve_dtype("auto", cuda) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.resolve_dtype("auto", cuda) == torch.float16
    assert dev.resolve_dtype("float16", cuda) == torch.float16
    with pytest.raises(AugmentError, match="not one of"):
        dev.resolve_dtype("int8", cuda)



def test_cuda_requested_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(AugmentError, match="no GPU is visible; use --device cpu"):
        dev.resolve_device("cuda")
    assert dev.resolve_device("auto").type == "cpu"
    with pytest.raises(AugmentError, match="is not a device"):
        dev.resolve_device("tpu9")


def test_plan_one_actor_per_gpu():
    n, opts, threads = plan_actors({"CPU": 32, "GPU": 4}, workers=2, n_units=200, device="auto", cpus=2)
    assert (n, opts["num_gpus"], threads) == (4, 1, 8)
    n, opts, _ = plan_actors({"CPU": 32, "GPU": 4}, workers=2, n_units=3, device="auto", cpus=2)
    assert n == 3  # never more actors than work units


def test_plan_cpu_workers_split_cores_and_never_ask_for_gpus():
    n, opts, threads = plan_actors({"CPU": 2}, workers=2, n_units=10, device="auto", cpus=2)
    assert n == 2 and "num_gpus" not in opts and threads == 1 and opts["num_cpus"] <= 1
    n, opts, _ = plan_actors({"CPU": 16, "GPU": 2}, workers=4, n_units=10, device="cpu", cpus=16)
    assert n == 4 and "num_gpus" not in opts
