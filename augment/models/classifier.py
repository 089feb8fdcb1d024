"""Load an image classifier behind one factory, with differentiable preprocessing and labels.

Token training back-propagates from the classifier's loss into the diffusion model, so the
classifier must take images in [0, 1] as a tensor and do its own resize and normalisation with
torch ops (no PIL, no numpy). ``load_classifier(spec)`` returns such a module for:

``embedded:<name>``          a timm checkpoint shipped in the package (``<name>.safetensors`` + ``.json``)
``timm:<arch>``              timm's pretrained weights, from the local cache only (no network)
``timm:<arch>@<checkpoint>`` a local ``.safetensors`` or ``.pth`` state dict (``weights_only=True``);
                             an optional ``<checkpoint>.json`` sidecar gives class names and kwargs
``hf:<repo-or-folder>``      a transformers ``AutoModelForImageClassification``
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augment.errors import AugmentError
from augment.models.backbone import embedded_dir


@dataclass
class DataConfig:
    """What the classifier expects: the values timm's resolve_data_config or an HF image processor give."""

    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    crop_pct: float = 1.0
    interpolation: str = "bilinear"


class Classifier(nn.Module):
    """images in [0,1] (N,3,H,W) -> logits (N,C); differentiable end to end."""

    def __init__(self, model: nn.Module, data: DataConfig, class_names: list[str] | None, spec: str,
                 hf: bool = False) -> None:
        super().__init__()
        self.model = model
        self.data = data
        self.class_names = class_names
        self.spec = spec
        self._hf = hf
        self.register_buffer("mean", torch.tensor(data.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(data.std).view(1, 3, 1, 1), persistent=False)

    @property
    def num_classes(self) -> int:
        with torch.no_grad():
            return int(self.forward(torch.zeros(1, 3, *self.data.input_size, device=self.mean.device)).shape[1])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Resize (shorter side to size / crop_pct), centre-crop, normalise; all torch ops."""
        h, w = self.data.input_size
        scale = int(math.floor(min(h, w) / self.data.crop_pct))
        ih, iw = images.shape[-2:]
        ratio = scale / min(ih, iw)
        nh, nw = max(h, round(ih * ratio)), max(w, round(iw * ratio))
        if (nh, nw) != (ih, iw):
            mode = "bicubic" if self.data.interpolation == "bicubic" else "bilinear"
            images = F.interpolate(images, size=(nh, nw), mode=mode, align_corners=False,
                                   antialias=nh < ih or nw < iw)
        top, left = (nh - h) // 2, (nw - w) // 2
        images = images[..., top : top + h, left : left + w]
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images.to(self.mean.dtype))
        out = self.model(pixel_values=x) if self._hf else self.model(x)
        return out.logits if hasattr(out, "logits") else out


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise AugmentError(f"checkpoint {path} does not exist; check the path after '@'")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is the same user problem
        raise AugmentError(
            f"cannot load checkpoint {path}: {str(e).splitlines()[0][:200]}; "
            "pass a .safetensors file or a state dict saved with torch.save (no pickled objects)"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise AugmentError(f"checkpoint {path} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _sidecar(path: Path) -> dict[str, Any]:
    for cand in (path.with_suffix(".json"), Path(str(path) + ".json")):
        if cand.exists():
            try:
                return json.loads(cand.read_text())
            except json.JSONDecodeError as e:
                raise AugmentError(f"cannot parse {cand}: {e}; fix or remove the sidecar") from None
    return {}


def _timm_data_config(model: nn.Module, side: dict[str, Any]) -> DataConfig:
    import timm.data

    cfg = timm.data.resolve_data_config({}, model=model)
    size = side.get("input_size", cfg["input_size"])
    return DataConfig(
        input_size=(int(size[-2]), int(size[-1])),
        mean=tuple(side.get("mean", cfg["mean"])),
        std=tuple(side.get("std", cfg["std"])),
        crop_pct=float(side.get("crop_pct", cfg.get("crop_pct", 1.0))),
        interpolation=str(side.get("interpolation", cfg.get("interpolation", "bilinear"))),
    )


def _timm_names(model: nn.Module, num_classes: int) -> list[str] | None:
    """ImageNet-1k label names for timm's ImageNet heads, from timm's bundled class info."""
    if num_classes != 1000:
        return None
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [info.index_to_description(i).split(",")[0].strip().lower() for i in range(1000)]
    except Exception:  # noqa: BLE001 - labels are optional
        return None


def _load_timm(arch: str, ckpt: Path | None, spec: str) -> Classifier:
    import timm

    if not timm.is_model(arch.split(".", 1)[0]):
        raise AugmentError(f"unknown timm architecture {arch!r} in {spec!r}; see timm.list_models()")
    side = _sidecar(ckpt) if ckpt else {}
    kwargs = dict(side.get("kwargs", {}))
    if ckpt is None:
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as e:  # noqa: BLE001
            raise AugmentError(
                f"timm weights for {arch!r} are not in the local cache ({str(e).splitlines()[0][:120]}); "
                f"download them on a connected machine or pass timm:{arch}@/path/to/checkpoint.safetensors"
            ) from None
    else:
        sd = _load_state_dict(ckpt)
        probe = timm.create_model(arch, pretrained=False, num_classes=1, **kwargs)
        head = probe.pretrained_cfg.get("classifier", "fc")
        head = head[0] if isinstance(head, (list, tuple)) else head
        num = side.get("num_classes")
        if num is None and f"{head}.weight" in sd:
            num = int(sd[f"{head}.weight"].shape[0])
        if num is None:
            num = len(side["class_names"]) if "class_names" in side else 1000
        model = timm.create_model(arch, pretrained=False, num_classes=int(num), **kwargs)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise AugmentError(
                f"checkpoint {ckpt} does not fit timm:{arch} (missing {len(missing)} keys e.g. {missing[:2]}, "
                f"unexpected {len(unexpected)} e.g. {unexpected[:2]}); check the architecture name and kwargs"
            )
    model.eval()
    names = side.get("class_names") or _timm_names(model, model.num_classes)
    return Classifier(model, _timm_data_config(model, side), names, spec)


def _load_hf(where: str, spec: str) -> Classifier:
    from transformers import AutoConfig, AutoModelForImageClassification

    try:
        config = AutoConfig.from_pretrained(where, local_files_only=True)
        model = AutoModelForImageClassification.from_pretrained(where, local_files_only=True)
    except (OSError, ValueError) as e:
        raise AugmentError(
            f"cannot load transformers classifier {where!r} offline ({str(e).splitlines()[0][:120]}); "
            "pass a local folder saved with save_pretrained, or download the model first"
        ) from None
    data = DataConfig()
    proc_file = Path(where) / "preprocessor_config.json"
    if proc_file.exists():
        proc = json.loads(proc_file.read_text())
        size = proc.get("crop_size") or proc.get("size") or {}
        if isinstance(size, int):
            h = w = size
        else:
            h = size.get("height") or size.get("shortest_edge") or 224
            w = size.get("width") or size.get("shortest_edge") or h
        data = DataConfig(
            input_size=(int(h), int(w)),
            mean=tuple(proc.get("image_mean", data.mean)),
            std=tuple(proc.get("image_std", data.std)),
            crop_pct=float(proc.get("crop_pct") or 1.0),
            interpolation="bicubic" if proc.get("resample") == 3 else "bilinear",
        )
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"class {i}"))).split(",")[0].strip() for i in range(len(id2label))] or None
    model.eval()
    return Classifier(model, data, names, spec, hf=True)


def load_classifier(spec: str, device: str | torch.device = "cpu") -> Classifier:
    """The classifier for ``spec``, frozen (no grads on its weights), in float32 on ``device``."""
    if not spec:
        raise AugmentError(
            "no classifier given: pass --classifier timm:<arch>@<checkpoint>, hf:<folder> or embedded:<name> "
            "(a classifier trained on this dataset's classes)"
        )
    if spec.startswith("embedded:"):
        name = spec.split(":", 1)[1]
        ckpt = embedded_dir() / f"{name}.safetensors"
        if not ckpt.exists():
            known = sorted(p.stem for p in embedded_dir().glob("*.safetensors"))
            raise AugmentError(f"unknown embedded classifier {spec!r}; known: {', '.join('embedded:' + k for k in known) or 'none shipped'}")
        side = _sidecar(ckpt)
        clf = _load_timm(side.get("arch", ""), ckpt, spec)
    elif spec.startswith("timm:"):
        body = spec[5:]
        arch, _, ckpt = body.partition("@")
        clf = _load_timm(arch, Path(ckpt).expanduser() if ckpt else None, spec)
    elif spec.startswith("hf:"):
        clf = _load_hf(spec[3:], spec)
    else:
        raise AugmentError(
            f"cannot read classifier spec {spec!r}: use embedded:<name>, timm:<arch>[@checkpoint], or hf:<repo-or-folder>"
        )
    clf.requires_grad_(False)
    return clf.to(device)


def check_classes(clf: Classifier, class_names: list[str]) -> None:
    """Refuse a classifier whose number of outputs differs from the class list (names both numbers)."""
    n = clf.num_classes
    if n != len(class_names):
        raise AugmentError(
            f"classifier {clf.spec} has {n} outputs but the dataset has {len(class_names)} classes; "
            "pass a classifier trained on this class list (--classifier) or the matching --dataset"
        )


def list_embedded_classifiers() -> list[str]:
    return sorted(p.stem for p in embedded_dir().glob("*.safetensors"))
