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


def test_auto_bf16_only_where_native(monkeypatch):
    """A T4 emulates bf16 (``is_bf16_supported()`` says yes): auto must pick fp16 there."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: including_emulation)
    assert dev.resolve_dtype("auto", cuda) == torch.float16


def _driver(monkeypatch, tmp_path, text: str | None) -> None:
    path = tmp_path / "version"
    path.unlink(missing_ok=True)
    if text is not None:
        path.write_text(text)
    monkeypatch.setattr(dev, "NVIDIA_DRIVER_FILE", path)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_driver_version_parsed(monkeypatch, tmp_path):
    _driver(monkeypatch, tmp_path, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n")
    assert dev.nvidia_driver() == "550.54.14"
    _driver(monkeypatch, tmp_path, None)
    assert dev.nvidia_driver() is None


def test_gpu_torch_cannot_use_is_an_error_not_a_cpu_run(monkeypatch, tmp_path):
    """With an NVIDIA driver loaded and CUDA unusable, auto and cuda both name the mismatch."""
    _driver(monkeypatch, tmp_path, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.57.02\n")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("auto", "cuda", "cuda:1"):
        with pytest.raises(AugmentError, match=r"NVIDIA driver \(470\.57\.02\) is loaded but torch .* cannot use the GPU .*--device cpu"):
            dev.resolve_device(spec)
    assert dev.resolve_device("cpu").type == "cpu"  # the way out the message names
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # GPUs hidden on purpose: a CPU run is what was asked
    assert dev.resolve_device("auto").type == "cpu"


def test_no_driver_auto_is_cpu(monkeypatch, tmp_path):
    _driver(monkeypatch, tmp_path, None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto").type == "cpu"
    with pytest.raises(AugmentError, match="no GPU is visible; use --device cpu"):
        dev.resolve_device("cuda")


def test_describe_device_on_cpu():
    info = dev.describe_device(torch.device("cpu"), torch.float32)
    assert (info.device, info.dtype, info.gpu) == ("cpu", "float32", None)
    assert info.line() == f"cpu, float32, torch {torch.__version__}"
    assert info.to_json()["torch"] == torch.__version__


def test_describe_device_on_cuda(monkeypatch, tmp_path):
    _driver(monkeypatch, tmp_path, "NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14\n")

    class Props:
        name, total_memory = "NVIDIA A10G", 24 * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props)
    info = dev.describe_device(torch.device("cuda:0"), torch.bfloat16)
    assert info.line().startswith("cuda:0 (NVIDIA A10G, 24.0 GB, driver 550.54.14, CUDA ")
    assert info.dtype == "bfloat16"
