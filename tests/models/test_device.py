"""Device/dtype choices and the actor plan for GPU and CPU clusters (checked without a GPU)."""

from __future__ import annotations

import pytest
import torch

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
