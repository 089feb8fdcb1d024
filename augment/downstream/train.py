"""Train a timm classifier on a :class:`~augment.downstream.mixing.MixedDataset`, evaluating on a
real split every epoch.

timm builds the model (``create_model``; from scratch, or from ``train.pretrained``: timm weights
in the local Hugging Face cache or ``timm:<arch>@<file>``), the optimizer (``create_optimizer_v2``)
and the schedule (``create_scheduler_v2``, stepped per update); augmentation is a batched random
shift/rotation/scale/flip for small inputs and timm's ImageNet train transform with the
backbone's mean/std above 64 px (:func:`~augment.downstream.transforms.training_recipe`); on
CUDA batches cross as uint8 and are augmented/normalised on the GPU
(:func:`~augment.downstream.transforms.device_batch`) and the forward pass runs under bfloat16
autocast. Synthetic samples carry a
loss weight, so the loss is ``mean(cross_entropy * weight)`` over the batch (a weight of 0.5 halves
a synthetic image's pull, whatever the batch holds). With distillation (a mixed set built with a
``distill_temperature``), synthetic images are trained on the guide's soft labels instead
(:func:`distill_loss`), real ones on their labels.

An "epoch" is ``samples_per_epoch`` draws (default: the mixed set's size, at least
:data:`MIN_SAMPLES_PER_EPOCH`), so 30 real images (k=3) get as many updates as 1030 mixed ones
and arms are compared at equal compute. The best epoch (by real top-1) is saved as
``best.safetensors`` + ``best.json`` (the sidecar :func:`augment.models.classifier.load_classifier`
reads: ``timm:<arch>@OUT/best.safetensors``); ``metrics.json`` reports both the final and the
best epoch, because picking the best epoch on the test split is optimistic.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from augment.config import TrainConfig, omit_defaults
from augment.downstream.metrics import classification_metrics, predict_logits
from augment.downstream.mixing import MixedDataset, mixed_loader
from augment.downstream.train_metrics import TrainMetrics
from augment.downstream.transforms import device_batch, normalize, training_recipe
from augment.errors import AugmentError
from augment.io.atomic import atomic_write_bytes, atomic_write_json
from augment.io.jsonsafe import json_safe
from augment.logs import progress_disabled
from augment.models.classifier import ClassifierSource

__all__ = ["MIN_SAMPLES_PER_EPOCH", "TrainResult", "TrainSettings", "create_classifier", "distill_loss",
           "train_classifier"]

MIN_SAMPLES_PER_EPOCH = 1000


@dataclass
class TrainSettings(TrainConfig):
    """One training run: ``cfg.train`` (:class:`~augment.config.TrainConfig`, where every setting
    is declared) bound to the seed and device of this run; ``from_config`` makes one."""

    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_config(cls, tc: TrainConfig, **overrides: Any) -> TrainSettings:
        """``tc``'s settings with ``overrides`` (``seed``, ``device`` or any TrainConfig field; None
        values are ignored: a flag that was not given), validated."""
        base = {f.name: getattr(tc, f.name) for f in dataclasses.fields(TrainConfig)}
        base.update({k: v for k, v in overrides.items() if v is not None})
        s = cls(**base)
        s.validate()
        return s

    def to_dict(self) -> dict[str, Any]:
        """What metrics.json records under ``config.train`` and benchmark cell keys hash: the trainer's
        fields (:meth:`TrainConfig.trainer_fields`), seed and device; sequences as lists. Keeping this
        exact keeps existing cell caches valid."""
        d = omit_defaults(self, {name: copy.deepcopy(getattr(self, name)) for name in self.trainer_fields()})
        d["scale"] = list(self.scale)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["seed"], d["device"] = self.seed, self.device
        return d


@dataclass
class TrainResult:
    """The trained model, its :class:`TrainMetrics` (what metrics.json holds), the final and best
    top-1, the best epoch and the seconds taken."""

    model: torch.nn.Module
    metrics: TrainMetrics
    final_top1: float
    best_top1: float
    best_epoch: int
    seconds: float


def _check_arch(arch: str) -> None:
    import timm

    if arch not in timm.list_models():
        close = timm.list_models(f"*{arch.split('_')[0]}*")[:5]
        raise AugmentError(f"unknown timm architecture {arch!r}" + (f" (similar: {', '.join(close)})" if close else "")
                           + "; see timm.list_models()")


def read_checkpoint(settings: TrainConfig) -> ClassifierSource | None:
    """The bytes of ``settings.checkpoint``, read on the driver (None without one), so that a
    benchmark actor on a node that does not see the driver's disk starts from the same weights
    (:mod:`augment.shipping`, as the guidance classifier's checkpoint travels)."""
    if not settings.checkpoint:
        return None
    path = Path(settings.checkpoint).expanduser()
    if not path.is_file():
        raise AugmentError(f"checkpoint {path} (train.checkpoint) does not exist; fix the path or drop --checkpoint")
    return ClassifierSource(f"timm:{settings.arch}@{path}", {path.name: path.read_bytes()})


def _checkpoint_state(checkpoint: str, shipped: ClassifierSource | None) -> dict[str, torch.Tensor]:
    """``checkpoint``'s state dict: from the bytes the driver shipped when they are its file's, else from disk."""
    from augment.models.classifier import _decode_state_dict, _load_state_dict

    path = Path(checkpoint).expanduser()
    if shipped is not None and path.name in shipped.files:
        return _decode_state_dict(shipped.files[path.name], path.name, path)
    return _load_state_dict(path)


def _fit_state(model: torch.nn.Module, sd: dict[str, torch.Tensor], where: str, arch: str) -> list[str]:
    """Load ``sd`` into ``model``; weights whose shape does not fit (the head of another class
    count) stay freshly initialised and are returned. AugmentError when other keys do not match."""
    own = model.state_dict()
    reset = [k for k, v in sd.items() if k in own and own[k].shape != v.shape]
    missing, unexpected = model.load_state_dict({k: v for k, v in sd.items() if k not in reset}, strict=False)
    missing = [k for k in missing if k not in set(reset)]
    if missing or unexpected:
        raise AugmentError(
            f"checkpoint {where} does not fit timm:{arch} (missing {len(missing)} keys "
            f"e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}); check --arch"
        )
    return sorted(reset)


def _same_arch(name: str, arch: str) -> None:
    if name.split(".", 1)[0] != arch.split(".", 1)[0]:
        raise AugmentError(f"train.pretrained {name!r} is not a {arch} (train.arch); "
                           f"name weights of {arch}, e.g. {arch.split('.', 1)[0]}.<tag>, or change --arch")


def cached_weights(name: str) -> str:
    """The local Hugging Face cache's file of timm weights ``name`` (``resnet50.a1_in1k``; without a
    tag, timm's default one); nothing is downloaded. AugmentError with the download command when
    the cache lacks them."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    if cfg is None or not cfg.hf_hub_id:
        raise AugmentError(f"timm has no pretrained weights named {name!r} (train.pretrained); "
                           "pick one from timm.list_pretrained(), or pass timm:<arch>@<file>")
    repo = cfg.hf_hub_id.split("@", 1)[0]
    for filename in [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]:
        found = try_to_load_from_cache(repo, filename)
        if isinstance(found, str):
            return found
    raise AugmentError(f"timm weights {name!r} (train.pretrained) are not in the local Hugging Face cache; "
                       f"download them on a connected machine with `hf download {repo}` and copy the cache here")


def _pretrained(settings: TrainConfig, num_classes: int) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model ``settings.pretrained`` names: timm weights from the local cache, or
    ``timm:<arch>@<file>`` (a state dict; the head is re-initialised for ``num_classes``)."""
    import timm

    from augment.models.classifier import _load_state_dict

    name = str(settings.pretrained).strip()
    name = name[len("timm:"):] if name.startswith("timm:") else name
    if "@" in name:
        arch, file = name.split("@", 1)
        _same_arch(arch, settings.arch)
        path = Path(file).expanduser()
        if not path.is_file():
            raise AugmentError(f"pretrained weights {path} (train.pretrained) do not exist; fix the path")
        model = timm.create_model(settings.arch, pretrained=False, num_classes=num_classes, **settings.arch_kwargs)
        reset = _fit_state(model, _load_state_dict(path), str(path), settings.arch)
        return model, {"pretrained": str(settings.pretrained), "weights": str(path), "reinitialised": reset}
    _same_arch(name, settings.arch)
    file = cached_weights(name)
    model = timm.create_model(name, pretrained=True, num_classes=num_classes,
                              pretrained_cfg_overlay={"file": file}, **settings.arch_kwargs)
    return model, {"pretrained": str(settings.pretrained), "weights": file}


def create_classifier(settings: TrainConfig, num_classes: int,
                      shipped: ClassifierSource | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A timm model for ``num_classes``: from scratch, or from ``settings.pretrained`` (timm
    weights in the local cache, or ``timm:<arch>@<file>``), then from ``settings.checkpoint`` when
    given (a state dict; head weights whose shape does not fit are left freshly initialised).
    Returns the model and a note of what was loaded. ``shipped``: that checkpoint's bytes as the
    driver read them (:func:`read_checkpoint`); without them the file is read here."""
    import timm

    _check_arch(settings.arch)
    note: dict[str, Any] = {"checkpoint": None}
    try:
        if settings.pretrained:
            model, loaded = _pretrained(settings, num_classes)
            note.update(loaded)
        else:
            model = timm.create_model(settings.arch, pretrained=False, num_classes=num_classes, **settings.arch_kwargs)
    except TypeError as e:
        raise AugmentError(f"timm:{settings.arch} does not take these arch kwargs {settings.arch_kwargs}: {e}") from None
    if settings.checkpoint:
        sd = _checkpoint_state(settings.checkpoint, shipped)
        reset = _fit_state(model, sd, str(settings.checkpoint), settings.arch)
        note.update({"checkpoint": str(settings.checkpoint), "reinitialised": reset})
    return model, note


def sidecar(settings: TrainConfig, class_names: list[str], mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None) -> dict[str, Any]:
    """The JSON next to a checkpoint, in the format ``augment.models.classifier`` reads (``mean``/
    ``std``: the normalisation trained with, default ``settings``')."""
    return {
        "arch": settings.arch,
        "kwargs": settings.arch_kwargs,
        "class_names": list(class_names),
        "num_classes": len(class_names),
        "input_size": [3, settings.input_size, settings.input_size],
        "mean": list(settings.mean if mean is None else mean),
        "std": list(settings.std if std is None else std),
        "crop_pct": 1.0,
    }


def save_checkpoint(model: torch.nn.Module | dict[str, torch.Tensor], path: Path, side: dict[str, Any]) -> Path:
    """``path`` (.safetensors) + ``path.with_suffix('.json')``, both written atomically, the
    sidecar first: it does not change between epochs, so a kill between the two writes leaves a
    checkpoint whose sidecar agrees with it (never a checkpoint without one). The weights are
    serialised in memory and written by the one atomic writer, so they get the mode of every other
    output (0644 under the usual umask; safetensors' own file writer makes 0600 files)."""
    from safetensors.torch import save

    state = model if isinstance(model, dict) else model.state_dict()
    atomic_write_json(path.with_suffix(".json"), side)
    atomic_write_bytes(path, save({k: v.detach().contiguous().cpu() for k, v in state.items()}))
    return path


def freeze_to_head(model: torch.nn.Module) -> None:
    """A linear probe: every weight frozen but the head's (timm's ``get_classifier()``), so a few
    reals per class fit a linear map on the pretrained features instead of moving them all."""
    model.requires_grad_(False)
    model.get_classifier().requires_grad_(True)


def train_mode(model: torch.nn.Module, linear_probe: bool) -> None:
    """Training mode; with a linear probe only the head trains, so the frozen body stays in eval
    mode (its batch-norm statistics are the pretrained ones, not a few reals' batch)."""
    model.train(not linear_probe)
    model.get_classifier().train()


def mixed_precision(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA (no loss scaling needed, unlike float16); nothing elsewhere, so a
    CPU run computes exactly what it did without it."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def distill_loss(logits: torch.Tensor, hard: torch.Tensor, soft: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample loss with distillation: where a row of ``soft`` holds a target distribution (a
    synthetic image's soft label), the soft cross-entropy of the student at ``temperature`` times
    ``temperature``² (Hinton et al.'s scaling, so gradients keep their size as T grows; equal to the
    KL divergence up to the targets' constant entropy); elsewhere (real images, all-zero rows)
    ``hard``, the usual cross-entropy on the label."""
    soft_ce = -(soft * F.log_softmax(logits / temperature, dim=1)).sum(1) * temperature**2
    return torch.where(soft.sum(1) > 0, soft_ce, hard)


def train_classifier(
    mixed: MixedDataset,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    settings: TrainSettings,
    out: str | Path | None = None,
    progress: bool = True,
    desc: str = "train",
    extra: dict[str, Any] | None = None,
    checkpoint: ClassifierSource | None = None,
    before_write: Callable[[], None] | None = None,
) -> TrainResult:
    """Train on ``mixed`` (uint8 images, transformed here), test on the real ``test_images`` after
    every epoch; with ``out``, write ``metrics.json`` and ``best.safetensors``/``best.json`` there.
    ``extra`` is stored under ``config`` in metrics.json (e.g. the command line's options);
    ``checkpoint``: ``settings.checkpoint``'s bytes as the driver read them (:func:`read_checkpoint`);
    ``before_write``: called before each write into ``out`` (raises to stop: the run folder ``out``
    lies in moved away, :func:`augment.io.lock.check_in_place`)."""
    guard = before_write or (lambda: None)
    settings.validate()
    start = time.perf_counter()
    class_names = list(mixed.class_names)
    device = torch.device(settings.device)
    torch.manual_seed(settings.seed)
    model, note = create_classifier(settings, len(class_names), checkpoint)
    model.to(device)
    if settings.linear_probe:
        freeze_to_head(model)
    recipe = training_recipe(settings, model, uint8_samples=device.type == "cuda")
    mixed.transform = recipe.sample  # small inputs: None, uint8 in, augmented per batch below
    aug_gen = torch.Generator().manual_seed(settings.seed)
    per_epoch = settings.samples_per_epoch or max(len(mixed), MIN_SAMPLES_PER_EPOCH)
    loader = mixed_loader(mixed, settings.batch_size, per_epoch, settings.seed)
    import timm.optim
    import timm.scheduler

    optimizer = timm.optim.create_optimizer_v2(model, opt=settings.opt, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler, _ = timm.scheduler.create_scheduler_v2(
        optimizer, sched=settings.sched, num_epochs=settings.epochs, warmup_epochs=settings.warmup_epochs,
        step_on_epochs=False, updates_per_epoch=len(loader), min_lr=settings.lr * 0.01, warmup_lr=settings.lr * 0.01,
    )

    def norm(x: torch.Tensor) -> torch.Tensor:
        return normalize(x, recipe.mean, recipe.std)

    if test_images.shape[-1] != settings.input_size or test_images.shape[-2] != settings.input_size:
        from torchvision.transforms import v2 as T

        test_images = T.Resize((settings.input_size, settings.input_size), antialias=True)(test_images)
    out = Path(out) if out is not None else None
    side = sidecar(settings, class_names, recipe.mean, recipe.std)
    history: list[dict[str, Any]] = []
    best_top1, best_epoch, best_state = -1.0, -1, None
    updates = 0
    bar = tqdm(range(settings.epochs), desc=desc, unit="epoch", disable=progress_disabled(progress), leave=False)
    for epoch in bar:
        train_mode(model, settings.linear_probe)
        loader.sampler.set_epoch(epoch)
        t0 = time.perf_counter()
        total, count = 0.0, 0
        for images, labels, weights, *soft in loader:
            images = device_batch(images, recipe, device, aug_gen)  # uint8 across, augmented there
            labels, weights = labels.to(device), weights.to(device)
            with mixed_precision(device):
                logits = model(images)
                loss_each = F.cross_entropy(logits, labels, reduction="none", label_smoothing=settings.label_smoothing)
                if soft:
                    loss_each = distill_loss(logits, loss_each, soft[0].to(device), mixed.distill_temperature or 1.0)
                loss = (loss_each * weights).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            scheduler.step_update(num_updates=updates)
            total += float(loss.detach()) * len(labels)
            count += len(labels)
        scheduler.step(epoch + 1)
        last = epoch + 1 == settings.epochs
        if not last and not (settings.eval_every and (epoch + 1) % settings.eval_every == 0):
            history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "test_top1": None,
                            "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
            continue
        with mixed_precision(device):
            logits = predict_logits(model, test_images, settings.eval_batch_size, norm, device).float()
        top1 = float((logits.argmax(1) == test_labels).float().mean())
        history.append({"epoch": epoch + 1, "loss": total / max(count, 1), "test_top1": top1,
                        "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        bar.set_postfix(loss=f"{total / max(count, 1):.3f}", top1=f"{top1:.3f}")
        if top1 > best_top1:
            best_top1, best_epoch = top1, epoch + 1
            best_state = copy.deepcopy(model.state_dict())
            if out is not None:
                guard()
                save_checkpoint(best_state, out / "best.safetensors", side)
    bar.close()
    final = classification_metrics(logits, test_labels, class_names)
    final["epoch"] = settings.epochs
    if best_epoch == settings.epochs:
        best = dict(final)
    else:
        best_model = copy.deepcopy(model)
        best_model.load_state_dict(best_state)
        with mixed_precision(device):
            best_logits = predict_logits(best_model, test_images, settings.eval_batch_size, norm, device).float()
        best = classification_metrics(best_logits, test_labels, class_names)
    best["epoch"] = best_epoch
    seconds = time.perf_counter() - start
    metrics = TrainMetrics.from_json(json_safe({  # JSON-safe values, so the result equals the file
        "class_names": class_names,
        "final": final,
        "best": best,
        "history": history,
        "data": mixed.summary(),
        "test": {"n": int(len(test_labels))},
        "config": {"train": settings.to_dict(), **(extra or {})},
        "init": note,
        "checkpoint": {"path": "best.safetensors", "sidecar": "best.json", "epoch": best_epoch,
                       "load_with": f"timm:{settings.arch}@{(out / 'best.safetensors') if out else 'best.safetensors'}"},
        "seconds": seconds,
    }))
    if out is not None:
        guard()
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "metrics.json", metrics.to_json())
    return TrainResult(model, metrics, float(final["top1"]), best_top1, best_epoch, seconds)

