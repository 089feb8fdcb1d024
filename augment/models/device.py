"""Device and dtype resolution in one place, so every stage makes the same choice.

``auto`` picks CUDA when present, else CPU; half precision is only used where the device runs it
(fp16/bf16 on CUDA; CPU always computes in float32, as half-precision convolutions on CPU are slow
or unsupported). bf16 is chosen only where the card runs it natively: torch's default
``is_bf16_supported()`` also counts emulation (a T4 says yes and then runs bf16 slowly).

A machine with an NVIDIA driver whose GPU the installed torch cannot use (a CPU-only wheel, a CUDA
line newer than the driver) is an error naming the mismatch, never a silent CPU run: a user who
asked for ``auto`` on a GPU box expects the GPU, and a 100x slower run that "works" hides the fault.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from augment.errors import AugmentError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

#: the manifests' file-level metadata key holding the :class:`DeviceInfo` that made the shard
DEVICE_METADATA_KEY = "augment.device"

#: where the NVIDIA kernel module says which driver is loaded (present only when one is)
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def nvidia_driver() -> str | None:
    """The loaded NVIDIA driver's version (``"550.54.14"``), or None when no NVIDIA driver is loaded."""
    try:
        text = NVIDIA_DRIVER_FILE.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return "unknown"


def _gpus_hidden() -> bool:
    """The user hid every GPU on purpose (``CUDA_VISIBLE_DEVICES=""`` or ``-1``)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible is not None and visible.strip() in ("", "-1")


def unusable_gpu_error(spec: str) -> AugmentError | None:
    """The one-line error for an NVIDIA GPU that is present but that torch cannot use, or None
    (no driver, GPUs hidden on purpose, or CUDA works)."""
    if torch.cuda.is_available() or _gpus_hidden():
        return None
    driver = nvidia_driver()
    if driver is None:
        return None
    if torch.version.cuda is None:
        why = f"torch {torch.__version__} is a CPU-only build"
    else:
        try:
            torch.cuda.init()
            why = "torch sees no device"
        except Exception as e:  # noqa: BLE001 - torch raises RuntimeError or AssertionError here
            why = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(".")
    return AugmentError(
        f"--device {spec}: an NVIDIA driver ({driver}) is loaded but torch {torch.__version__} "
        f"(CUDA {torch.version.cuda or 'none'}) cannot use the GPU ({why}); install a torch build for this "
        "driver's CUDA version, or pass --device cpu to run on the CPU on purpose")


def resolve_device(spec: str = "auto") -> torch.device:
    if spec == "auto":
        if (err := unusable_gpu_error(spec)) is not None:
            raise err
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise AugmentError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if (err := unusable_gpu_error(spec)) is not None:
                raise err
            raise AugmentError(f"--device {spec} asked for CUDA but no GPU is visible; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AugmentError(
                f"--device {spec}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
    return dev


def check_device(spec: str, inline: bool) -> None:
    """Refuse a ``--device`` no unit can run on, before any model loads: a spec torch cannot
    read, and, when the units run in this process (``--workers 0``), a GPU this machine lacks.
    With Ray workers the GPU is the workers' to have (the pool checks placement)."""
    if inline:
        resolve_device(spec)
    elif spec != "auto":
        try:
            torch.device(spec)
        except RuntimeError:
            raise AugmentError(f"--device {spec!r} is not a device; use auto, cpu, cuda or cuda:N") from None


def resolve_dtype(spec: str, device: torch.device) -> torch.dtype:
    """The compute dtype for the diffusion backbone on ``device``."""
    if spec == "auto":
        if device.type == "cuda":
            native = torch.cuda.is_bf16_supported(including_emulation=False)
            return torch.bfloat16 if native else torch.float16
        return torch.float32
    if spec not in DTYPES:
        raise AugmentError(f"--dtype {spec!r} is not one of auto, float32, float16, bfloat16")
    if device.type == "cpu" and spec != "float32":
        # Half precision on CPU is slow and some kernels are missing; compute in float32.
        return torch.float32
    return DTYPES[spec]


#: what cuBLAS needs for deterministic matrix products (a fixed workspace per stream), read when
#: its handle is created: set before the process's first CUDA matmul
CUBLAS_WORKSPACE_CONFIG = ":4096:8"


def set_deterministic() -> None:
    """Make this process's torch kernels deterministic, for the rest of its life (a Ray actor's).

    Seeds fix the starting and step noise, but on CUDA several kernels are not bitwise
    deterministic (cuBLAS split reductions, cuDNN's autotuned convolution algorithms, atomics in
    some backward passes), so two runs of one seed can differ in the last bits and, after 30
    denoising steps, by a level of 255 here and there. This sets what torch documents for
    reproducibility: ``CUBLAS_WORKSPACE_CONFIG``, ``torch.use_deterministic_algorithms`` and
    cuDNN's ``deterministic`` on, ``benchmark`` off. ``warn_only``: an op with no deterministic
    kernel (on CUDA: bilinear resizing's and adaptive pooling's backward, inside the classifier
    during token training) warns instead of failing the run; generation has no backward and is
    fully deterministic. See docs/determinism.md."""
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE_CONFIG
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


@contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """:func:`set_deterministic` for the ``with`` body, everything it set restored after (units
    run inline in the driver, which outlives the stage); nothing touched when not ``enabled``."""
    if not enabled:
        yield
        return
    saved = (os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    set_deterministic()
    try:
        yield
    finally:
        env, algorithms, warn_only, cudnn_deterministic, cudnn_benchmark = saved
        if env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = env
        torch.use_deterministic_algorithms(algorithms, warn_only=warn_only)
        torch.backends.cudnn.deterministic = cudnn_deterministic
        torch.backends.cudnn.benchmark = cudnn_benchmark


@dataclass(frozen=True)
class DeviceInfo:
    """What a unit actually computed on: printed once per stage and recorded in run.json, so a run
    says "cuda, NVIDIA A10G, bfloat16" rather than the "auto" the user typed."""

    device: str
    dtype: str
    torch: str
    gpu: str | None = None
    gpu_memory_gb: float | None = None
    driver: str | None = None
    cuda: str | None = None

    def to_json(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> DeviceInfo:
        """The record :meth:`to_json` wrote (entries it does not know are ignored: a newer writer)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})  # type: ignore[arg-type]

    def metadata(self) -> dict[str, str]:
        """The Parquet key-value entry of a manifest whose images this device made (sorted JSON:
        byte-stable), file-level metadata so that the rows keep their bytes."""
        return {DEVICE_METADATA_KEY: json.dumps(self.to_json(), sort_keys=True)}

    @classmethod
    def from_metadata(cls, metadata: Mapping[bytes, bytes] | None) -> DeviceInfo | None:
        """The entry :meth:`metadata` wrote, or None (a manifest written before devices were recorded)."""
        raw = (metadata or {}).get(DEVICE_METADATA_KEY.encode())
        return cls.from_json(json.loads(raw)) if raw else None

    def line(self) -> str:
        """``cuda:0 (NVIDIA A10G, 22.5 GB, driver 550.54, CUDA 12.4), bfloat16, torch 2.14.1``."""
        where = self.device
        if self.gpu:
            where += f" ({self.gpu}, {self.gpu_memory_gb:.1f} GB, driver {self.driver}, CUDA {self.cuda})"
        return f"{where}, {self.dtype}, torch {self.torch}"


def describe_device(device: torch.device, dtype: torch.dtype) -> DeviceInfo:
    """The :class:`DeviceInfo` of ``device`` computing in ``dtype``."""
    name = str(dtype).removeprefix("torch.")
    if device.type != "cuda":
        return DeviceInfo(device=str(device), dtype=name, torch=torch.__version__)
    props = torch.cuda.get_device_properties(device)
    return DeviceInfo(device=str(device), dtype=name, torch=torch.__version__, gpu=props.name,
                      gpu_memory_gb=round(props.total_memory / 2**30, 2), driver=nvidia_driver(),
                      cuda=torch.version.cuda)


def default_batch_size(device: torch.device, resolution: int) -> int:
    """Images per sampler call when generate.batch_size is unset: enough to fill the device at this
    resolution (the generation worker and the memory estimate both use it)."""
    scale = (512 / max(resolution, 8)) ** 2
    if device.type == "cuda":
        return int(max(1, min(256, 8 * scale)))
    return int(max(1, min(64, 0.5 * scale)))
