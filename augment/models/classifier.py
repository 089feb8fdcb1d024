"""Load an image classifier behind one factory, with differentiable preprocessing and labels.

Token training back-propagates from the classifier's loss into the diffusion model, so the
classifier must take images in [0, 1] as a tensor and do its own resize and normalisation with
torch ops (no PIL, no numpy). ``load_classifier(spec)`` returns such a module for:

``embedded:<name>``          a timm checkpoint shipped in the package (``<name>.safetensors`` + ``.json``)
``timm:<arch>``              timm's pretrained weights, from the local cache only (no network)
``timm:<arch>@<checkpoint>`` a local ``.safetensors`` or ``.pth`` state dict (``weights_only=True``);
                             an optional ``<checkpoint>.json`` sidecar gives class names and kwargs
``hf:<repo-or-folder>``      a transformers ``AutoModelForImageClassification``
``clip:<folder-or-hub-id>``  a zero-shot guide from a transformers ``CLIPModel``: the dataset's classes
                             scored by "a photo of a <name>" text embeddings (:class:`ClipZeroShot`)

Specs are read by :func:`augment.models.spec.parse_spec`, the one parser of model specs.

On a cluster the workers may not see the driver's disk, so the driver reads the files a spec names
into a :class:`ClassifierSource` (:func:`read_classifier_source`) that travels with the work, and
``load_classifier(source)`` builds the same classifier from those bytes on any node. ``embedded:``
classifiers ship inside the package and hub ids resolve from each node's local cache: their
sources carry no files.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from augment.errors import AugmentError
from augment.models.backbone import embedded_dir
from augment.models.spec import ModelSpec, parse_spec, require_supported


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


@dataclass(frozen=True)
class ClassifierSource:
    """A classifier spec with the bytes of the local files it names, read by the driver.

    ``files`` maps file names to contents: a ``timm:<arch>@<checkpoint>`` checkpoint and its JSON
    sidecar, or the files of an ``hf:<folder>``. It is empty for specs that every node resolves by
    itself: ``embedded:`` (inside the package) and hub ids (the node's local cache)."""

    spec: str
    files: dict[str, bytes] = field(default_factory=dict)
    #: the class names a ``clip:`` classifier scores (the dataset's, in its order); None for the others
    class_names: tuple[str, ...] | None = None

    @property
    def nbytes(self) -> int:
        return sum(len(b) for b in self.files.values())


def _sidecar_names(name: str) -> tuple[str, str]:
    """Where a checkpoint's sidecar may be: ``x.json`` next to ``x.safetensors``, or ``x.safetensors.json``."""
    return Path(name).with_suffix(".json").name, name + ".json"


def _checkpoint_files(path: Path) -> dict[str, bytes]:
    """A checkpoint and its sidecar (if any), read into memory by name."""
    if not path.is_file():
        raise AugmentError(f"checkpoint {path} does not exist; check the path after '@'")
    files = {path.name: path.read_bytes()}
    for name in _sidecar_names(path.name):
        if (path.parent / name).is_file():
            files[name] = (path.parent / name).read_bytes()
            break
    return files


def read_classifier_source(spec: str | None, class_names: list[str] | None = None) -> ClassifierSource:
    """What a worker needs to build the classifier of ``spec`` without the driver's disk;
    ``class_names``: the dataset's, which a ``clip:`` classifier scores (ignored by the others)."""
    parsed = _parse(spec)
    if parsed.scheme == "timm" and parsed.checkpoint:
        return ClassifierSource(parsed.text, _checkpoint_files(Path(parsed.checkpoint).expanduser()))
    names = _clip_names(parsed, class_names) if parsed.scheme == "clip" else None
    if parsed.scheme in ("hf", "clip"):
        folder = Path(parsed.name).expanduser()
        if folder.is_dir():
            files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                     if p.is_file() and not p.name.startswith(".")}
            return ClassifierSource(parsed.text, files, names)
    return ClassifierSource(parsed.text, class_names=names)


def _clip_names(parsed: ModelSpec, class_names: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The class names a ``clip:`` classifier scores, or one line saying where they come from."""
    if not class_names:
        raise AugmentError(f"classifier {parsed.text!r} scores the dataset's class names, and none were given: "
                           "pass --dataset (with --data-root for a folder of images) so the names are known")
    return tuple(class_names)


def _decode_state_dict(data: bytes, name: str, where: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors from its bytes: safetensors, or a torch state dict (``weights_only``)."""
    try:
        if name.endswith(".safetensors"):
            from safetensors.torch import load

            sd = load(data)
        else:
            sd = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any decode failure is the same user problem
        raise AugmentError(
            f"cannot load checkpoint {where}: {str(e).splitlines()[0][:200]}; "
            "pass a .safetensors file or a state dict saved with torch.save (no pickled objects)"
        ) from None
    for key in ("state_dict", "model", "state_dict_ema", "model_ema"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict):
        raise AugmentError(f"checkpoint {where} does not hold a state dict")
    return {k.removeprefix("module."): v for k, v in sd.items() if isinstance(v, torch.Tensor)}


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise AugmentError(f"checkpoint {path} does not exist; check the path after '@'")
    return _decode_state_dict(path.read_bytes(), path.name, path)


def _sidecar(name: str, files: dict[str, bytes], where: Path) -> dict[str, Any]:
    """The checkpoint's JSON sidecar from ``files`` ({} without one); ``where`` names it in errors."""
    for cand in _sidecar_names(name):
        if cand in files:
            try:
                return json.loads(files[cand])
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise AugmentError(f"cannot parse {where.with_name(cand)}: {e}; fix or remove the sidecar") from None
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


def _load_timm(arch: str, ckpt: Path | None, files: dict[str, bytes], spec: str) -> Classifier:
    """A timm classifier: pretrained weights from the local cache, or checkpoint ``ckpt`` read from ``files``."""
    import timm

    if not timm.is_model(arch.split(".", 1)[0]):
        raise AugmentError(f"unknown timm architecture {arch!r} in {spec!r}; see timm.list_models()")
    side = _sidecar(ckpt.name, files, ckpt) if ckpt else {}
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
        if ckpt.name not in files:
            raise AugmentError(f"the classifier source of {spec!r} holds no {ckpt.name}; "
                               "build it with read_classifier_source on the machine that has the file")
        sd = _decode_state_dict(files[ckpt.name], ckpt.name, ckpt)
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
    except pickle.UnpicklingError:  # transformers loads .bin weights with weights_only=True
        raise AugmentError(
            f"classifier {where!r}: its .bin weights hold pickled objects, not plain tensors (refused: unpickling "
            "them could run code); save the model with save_pretrained() as model.safetensors"
        ) from None
    except (OSError, ValueError) as e:
        raise AugmentError(
            f"cannot load transformers classifier {where!r} offline ({str(e).splitlines()[0][:120]}); "
            "pass a local folder saved with save_pretrained, or download the model first"
        ) from None
    data = DataConfig()
    proc_file = Path(where) / "preprocessor_config.json"
    if proc_file.exists():
        data = _processor_data_config(json.loads(proc_file.read_text()))
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label.get(i, id2label.get(str(i), f"class {i}"))).split(",")[0].strip() for i in range(len(id2label))] or None
    model.eval()
    return Classifier(model, data, names, spec, hf=True)


def _processor_data_config(proc: dict[str, Any]) -> DataConfig:
    """What a transformers image processor's config (``preprocessor_config.json``) says the model
    expects: the crop's size, mean/std, and the resize before the crop (``size.shortest_edge``
    over the crop, as ``crop_pct``: CLIP resizes to 224 and crops 224; others resize larger)."""
    data = DataConfig()
    size = proc.get("crop_size") or proc.get("size") or {}
    if isinstance(size, int):
        h = w = size
    else:
        h = size.get("height") or size.get("shortest_edge") or 224
        w = size.get("width") or size.get("shortest_edge") or h
    crop_pct = proc.get("crop_pct")
    resize = proc.get("size")
    if crop_pct is None and proc.get("crop_size") and isinstance(resize, dict) and resize.get("shortest_edge"):
        crop_pct = min(int(h), int(w)) / int(resize["shortest_edge"])
    return DataConfig(
        input_size=(int(h), int(w)),
        mean=tuple(proc.get("image_mean", data.mean)),
        std=tuple(proc.get("image_std", data.std)),
        crop_pct=float(crop_pct or 1.0),
        interpolation="bicubic" if proc.get("resample") == 3 else "bilinear",
    )


def _in_temp_folder(files: dict[str, bytes], load: Any) -> Any:
    """``load(folder)`` on ``files`` written to a private temporary folder (a worker that cannot see
    the driver's folder), loaded into memory, the folder removed."""
    with tempfile.TemporaryDirectory(prefix="augment-hf-") as tmp:
        for name, data in files.items():
            (Path(tmp) / Path(name).name).write_bytes(data)
        return load(tmp)


def _load_hf_files(files: dict[str, bytes], spec: str) -> Classifier:
    """An ``hf:<folder>`` classifier from its files' bytes."""
    return _in_temp_folder(files, lambda tmp: _load_hf(tmp, spec))


#: the prompt each class is scored by (CLIP's zero-shot template)
CLIP_TEMPLATE = "a photo of a {name}"


class ClipZeroShot(nn.Module):
    """CLIP's image tower against fixed class text embeddings: logits = scale * cos(image, text).

    The text embeddings of ``CLIP_TEMPLATE`` per class are computed once, at load, and kept as a
    buffer (the text tower is dropped), so a guidance step costs one image-tower pass. It offers
    timm's ``forward_features`` / ``forward_head(pre_logits=True)`` so FID/KID read the
    normalised image embedding as the penultimate feature."""

    def __init__(self, model: nn.Module, text_embeds: torch.Tensor) -> None:
        super().__init__()
        self.vision_model = model.vision_model
        self.visual_projection = model.visual_projection
        self.register_buffer("text_embeds", F.normalize(text_embeds.detach().float(), dim=-1))
        self.register_buffer("logit_scale", model.logit_scale.detach().exp().float().reshape(()))

    def forward_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pooled = self.vision_model(pixel_values=pixel_values).pooler_output
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return features if pre_logits else self.logit_scale * features @ self.text_embeds.T

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixel_values))


def _load_clip(where: str, names: tuple[str, ...], spec: str) -> Classifier:
    """A zero-shot classifier over ``names`` from the CLIP model and processor in ``where`` (a
    folder, or a hub id in the local cache), offline."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(where, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(where, local_files_only=True)
    except pickle.UnpicklingError:
        raise AugmentError(f"classifier {spec!r}: its .bin weights hold pickled objects; save the model with "
                           "save_pretrained() as model.safetensors") from None
    except (OSError, ValueError) as e:
        raise AugmentError(
            f"cannot load CLIP model {where!r} offline ({str(e).splitlines()[0][:120]}); pass a local folder holding "
            "CLIPModel and CLIPProcessor saved with save_pretrained, or download the model first"
        ) from None
    model.eval()
    prompts = [CLIP_TEMPLATE.format(name=n) for n in names]
    tokens = processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        text = model.get_text_features(**tokens)
    text = text if isinstance(text, torch.Tensor) else text.pooler_output
    data = _processor_data_config(processor.image_processor.to_dict())
    return Classifier(ClipZeroShot(model, text), data, list(names), spec)


def _parse(spec: str | None) -> ModelSpec:
    """``spec`` read as a classifier spec that augment can load, else its one-line error (None: none configured)."""
    return require_supported(parse_spec(spec, "classifier"))


def load_classifier(spec: str | ClassifierSource | None, device: str | torch.device = "cpu",
                    class_names: list[str] | None = None) -> Classifier:
    """The classifier for ``spec`` (read from this machine's disk) or for a :class:`ClassifierSource`
    (from the bytes it carries), frozen (no grads on its weights), in float32 on ``device``.
    ``class_names``: the dataset's, which a ``clip:`` classifier scores (a source carries its own)."""
    source = spec if isinstance(spec, ClassifierSource) else None
    parsed = _parse(source.spec if source is not None else spec)  # None: no classifier configured
    text = parsed.text
    if parsed.scheme == "clip":
        names = _clip_names(parsed, source.class_names if source is not None and source.class_names else class_names)
        if source is not None and source.files:
            clf = _in_temp_folder(source.files, lambda tmp: _load_clip(tmp, names, text))
        else:
            clf = _load_clip(str(Path(parsed.name).expanduser()) if Path(parsed.name).expanduser().is_dir()
                             else parsed.name, names, text)
    elif parsed.scheme == "embedded":
        ckpt = embedded_dir() / f"{parsed.name}.safetensors"
        if not ckpt.exists():
            known = sorted(p.stem for p in embedded_dir().glob("*.safetensors"))
            raise AugmentError(f"unknown embedded classifier {text!r}; known: {', '.join('embedded:' + k for k in known) or 'none shipped'}")
        files = _checkpoint_files(ckpt)
        clf = _load_timm(_sidecar(ckpt.name, files, ckpt).get("arch", ""), ckpt, files, text)
    elif parsed.scheme == "timm":
        path = Path(parsed.checkpoint).expanduser() if parsed.checkpoint else None
        files = source.files if source is not None else (_checkpoint_files(path) if path else {})
        clf = _load_timm(parsed.name, path, files, text)
    elif source is not None and source.files:
        clf = _load_hf_files(source.files, text)
    else:
        clf = _load_hf(parsed.name, text)
    clf.requires_grad_(False)
    return clf.to(device)


def check_classes(clf: Classifier, class_names: list[str]) -> None:
    """Refuse a classifier whose number of outputs differs from the class list (names both numbers)."""
    check_class_count(clf.spec, clf.num_classes, class_names)


def check_class_count(spec: str, n: int, class_names: list[str]) -> None:
    """:func:`check_classes` for an output count known without loading the model (:func:`declared_outputs`)."""
    if n != len(class_names):
        raise AugmentError(
            f"classifier {spec} has {n} outputs but the dataset has {len(class_names)} classes; "
            "pass a classifier trained on this class list (--classifier) or the matching --dataset"
        )


def declared_outputs(source: ClassifierSource) -> int | None:
    """The classifier's number of outputs as its files declare it, without building the model: a
    sidecar's ``num_classes`` / ``class_names``, the head's shape in a safetensors header, timm's
    pretrained config, a transformers ``config.json``. None when only loading the model would tell
    (a ``.pth`` state dict, an unreadable config): then the load checks it.

    This lets a command report a classifier of the wrong size together with its other input
    problems, before any model loads (:meth:`augment.inputs.RunInputs.check`)."""
    parsed = _parse(source.spec)
    try:
        if parsed.scheme == "embedded":
            side = embedded_dir() / f"{parsed.name}.json"
            names = json.loads(side.read_text(encoding="utf-8")).get("class_names") if side.is_file() else None
            return len(names) if names else None
        if parsed.scheme == "timm":
            return _timm_declared_outputs(parsed.name, parsed.checkpoint, source.files)
        return _hf_declared_outputs(parsed.name, source.files)
    except (OSError, ValueError, KeyError, TypeError, AugmentError):
        return None


def _timm_declared_outputs(arch: str, checkpoint: str | None, files: dict[str, bytes]) -> int | None:
    import timm.models

    cfg = timm.models.get_pretrained_cfg(arch) if timm.is_model(arch.split(".", 1)[0]) else None
    if not checkpoint:
        return cfg.num_classes if cfg is not None else None
    ckpt = Path(checkpoint).expanduser()
    side = _sidecar(ckpt.name, files, ckpt)
    if "num_classes" in side or "class_names" in side:
        return int(side.get("num_classes") or len(side["class_names"]))
    if cfg is None or not ckpt.name.endswith(".safetensors") or not ckpt.is_file() or side.get("kwargs"):
        return None  # kwargs may rename or drop the head: the load tells
    from safetensors import safe_open

    head = cfg.classifier[0] if isinstance(cfg.classifier, (list, tuple)) else cfg.classifier
    with safe_open(str(ckpt), framework="pt") as f:  # the header only: no tensor is read
        keys = [k for k in (f"{head}.weight", f"module.{head}.weight") if k in f.keys()]
        return int(f.get_slice(keys[0]).get_shape()[0]) if keys else None


def _hf_declared_outputs(where: str, files: dict[str, bytes]) -> int | None:
    from transformers import AutoConfig

    with tempfile.TemporaryDirectory(prefix="augment-hf-") as tmp:
        if "config.json" in files:  # a folder read on this machine: the bytes are what workers get
            (Path(tmp) / "config.json").write_bytes(files["config.json"])
            where = tmp
        config = AutoConfig.from_pretrained(where, local_files_only=True)
    if not {"id2label", "num_labels"} & set(config.to_diff_dict()):
        return None  # transformers' default of 2 labels says nothing about this model
    return int(config.num_labels)


def list_embedded_classifiers() -> list[str]:
    return sorted(p.stem for p in embedded_dir().glob("*.safetensors"))
