"""Few-shot real images + synthetic shard sets -> one labelled training set.

The public entry points::

    from augment.datasets import get_dataset
    from augment.downstream.mixing import make_mixed_dataset, mixed_loader

    ds = get_dataset("digits")
    mixed = make_mixed_dataset(
        ds, k=3, seed=0,                       # 3 real train images per class (Dataset.kshot)
        synthetic=["runs/digits"],             # run folders (token arm; "runs/digits/baseline" = baseline)
        synthetic_prob=0.5,                    # P(a drawn sample is synthetic); None = the natural share
        synthetic_weight=1.0,                  # loss weight of a synthetic sample (real = 1)
        min_confidence=0.9,                    # keep synthetic rows with guide_confidence >= 0.9
    )
    loader = mixed_loader(mixed, batch_size=64, samples_per_epoch=1000, seed=0)
    augment = BatchAugment(pad=2, degrees=10, hflip=0.0)   # augment.downstream.transforms
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        for images, labels, weights in loader:  # uint8 images (N,3,H,W), int64 labels, float weights
            logits = model(augment(images))
            loss = (F.cross_entropy(logits, labels, reduction="none") * weights).mean()

Labels are mapped through CLASS NAMES, not indices: a synthetic set generated for classes
``[three, eight]`` (indices 0 and 1 in its manifests) lands on the dataset's ``three`` and
``eight``; a set whose names are not the dataset's is refused (:class:`AugmentError` naming the
first mismatches). The confidence filter reads the manifests (``guide_confidence``, the guidance
classifier's probability of the target class), so no image is decoded to decide what to keep.

``make_mixed_dataset`` decodes everything into memory (uint8 tensors): right for few-shot reals
plus a few thousand synthetic images, and much faster than streaming tars every epoch. For
synthetic sets too large for memory, :func:`stream_mixed` gives the same samples as a streaming
WebDataset pipeline (shards read in turn, shuffle buffer, ``wds.RandomMix`` between real and
synthetic); the labels, filter and weights follow the same rules.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, Sampler

from augment.config import check_value
from augment.datasets.base import Dataset, Sample
from augment.errors import AugmentError
from augment.io.images import image_tensor
from augment.io.manifest import read_manifests
from augment.io.rundir import ArmDir, parse_shard_name
from augment.io.shards import shard_urls

__all__ = [
    "MixSampler",
    "MixedDataset",
    "SyntheticSet",
    "load_real",
    "load_synthetic",
    "make_mixed_dataset",
    "mixed_loader",
    "stream_mixed",
]

IMAGE_EXTS = ("jpg", "png", "webp")
DEFAULT_MEAN = (0.5, 0.5, 0.5)
DEFAULT_STD = (0.5, 0.5, 0.5)


def norm_name(name: str) -> str:
    """Class names compare case- and whitespace-insensitively ("Red  fox" == "red fox")."""
    return " ".join(str(name).split()).lower()


# -------------------------------------------------------------------------------- synthetic sets


@dataclass
class SyntheticSet:
    """One arm's shards after the confidence filter, with labels already in the dataset's indices.

    ``keys``/``labels``/``confidence`` are the kept rows in manifest order (``shards``: each one's
    shard file, to name it when it cannot be read); ``dropped`` counts the removed rows per reason
    (shown to the user, and written to metrics.json). ``soft`` holds each kept row's soft label (the
    guide's top-k: dataset class indices and probabilities) or None where the manifest has none
    (generated before soft labels, or with ``soft_labels: 0``).
    """

    root: Path
    urls: list[str]
    keys: list[str]
    labels: list[int]
    confidence: list[float | None]
    total: int
    dropped: dict[str, int] = field(default_factory=dict)
    min_confidence: float = 0.0
    soft: list[tuple[list[int], list[float]] | None] = field(default_factory=list)
    shards: list[str] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.keys)

    def soft_targets(self, num_classes: int, temperature: float) -> torch.Tensor:
        """The distillation targets (kept rows x classes): each soft label's probabilities raised to
        ``1 / temperature`` and renormalised over its top-k (the classes outside it get 0).
        AugmentError when a row has no soft label."""
        missing = sum(s is None for s in self.soft) + max(0, self.kept - len(self.soft))
        if missing:
            raise AugmentError(
                f"synthetic set {self.root}: {missing} of {self.kept} images have no soft label (generated "
                "before soft labels, or with generate.soft_labels: 0); regenerate it, or train without distillation"
            )
        out = torch.zeros(self.kept, num_classes)
        for row, (classes, probs) in enumerate(self.soft):  # type: ignore[misc]
            p = torch.tensor(probs, dtype=torch.float64).clamp_min(1e-12) ** (1.0 / temperature)
            out[row, torch.tensor(classes, dtype=torch.int64)] = (p / p.sum()).float()
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "dir": str(self.root),
            "shards": len(self.urls),
            "total": self.total,
            "kept": self.kept,
            "dropped": dict(self.dropped),
            "min_confidence": self.min_confidence,
        }


def _class_map(table: pa.Table, class_names: Sequence[str], where: Path) -> dict[int, int]:
    """Synthetic class_index -> dataset class index, by name; AugmentError naming the first mismatches."""
    wanted = {norm_name(n): i for i, n in enumerate(class_names)}
    pairs = sorted(set(zip(table.column("class_index").to_pylist(), table.column("class_name").to_pylist(),
                           strict=True)))
    by_index: dict[int, str] = {}
    for idx, name in pairs:
        if idx in by_index and norm_name(by_index[idx]) != norm_name(name):
            raise AugmentError(
                f"synthetic set {where} gives class {idx} two names ({by_index[idx]!r}, {name!r}); "
                "its manifests come from different runs: regenerate it into a fresh --out"
            )
        by_index[idx] = name
    missing = [(idx, name) for idx, name in sorted(by_index.items()) if norm_name(name) not in wanted]
    if missing:
        shown = ", ".join(f"{name!r} (class {idx})" for idx, name in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        expected = ", ".join(repr(n) for n in list(class_names)[:5]) + (", ..." if len(class_names) > 5 else "")
        raise AugmentError(
            f"synthetic set {where} has class names that the dataset does not: {shown}{more} "
            f"(dataset classes: {expected}); generate it with the same --dataset / class list"
        )
    return {idx: wanted[norm_name(name)] for idx, name in by_index.items()}


def _soft_labels(table: pa.Table, root: Path, class_names: Sequence[str]) -> list[tuple[list[int], list[float]] | None]:
    """Each row's soft label in the dataset's class indices. The manifest's ``soft_classes`` index
    the guide's classes, which are the run's ``class_names`` (run.json); classes the dataset lacks
    are left out. Rows without one (older manifests) give None."""
    if "soft_classes" not in table.column_names:
        return [None] * table.num_rows
    from augment.io.rundir import ArmDir, recorded_class_names

    wanted = {norm_name(n): i for i, n in enumerate(class_names)}
    run_names = recorded_class_names(ArmDir(root)) or list(class_names)
    to_dataset = {i: wanted[norm_name(n)] for i, n in enumerate(run_names) if norm_name(n) in wanted}
    out: list[tuple[list[int], list[float]] | None] = []
    for classes, probs in zip(table.column("soft_classes").to_pylist(), table.column("soft_probs").to_pylist(),
                              strict=True):
        if classes is None or probs is None:
            out.append(None)
            continue
        pairs = [(to_dataset[c], p) for c, p in zip(classes, probs, strict=True) if c in to_dataset]
        out.append(([c for c, _ in pairs], [p for _, p in pairs]) if pairs else None)
    return out


def load_synthetic(
    arm: str | os.PathLike[str], class_names: Sequence[str], min_confidence: float = 0.0
) -> SyntheticSet:
    """Read one arm's manifests (``<arm>/manifests/*.parquet``), map its labels onto ``class_names``
    and drop rows whose ``guide_confidence`` is below ``min_confidence`` (or missing, when a filter
    is asked for). Decodes no image. Refuses a folder without complete shards and a set that the
    filter empties (saying how many rows were dropped and why).
    """
    root = Path(arm)
    check_value("train.min_confidence", float(min_confidence))
    if not root.is_dir():
        raise AugmentError(f"synthetic set {root} does not exist; pass a run folder made by `augment generate`")
    urls = shard_urls(root)
    if not urls:
        raise AugmentError(
            f"synthetic set {root} has no complete shards (shards/*.tar with manifests/*.parquet); "
            "run `augment generate --out ...` (add --baseline for the baseline arm) first"
        )
    done = {Path(u).stem for u in urls}
    table = read_manifests(root)
    table = table.filter(pc.is_in(table.column("shard"), pa.array(sorted(done))))
    if table.num_rows == 0:
        raise AugmentError(f"synthetic set {root} has shards but its manifests list no samples; re-run generate")
    cmap = _class_map(table, class_names, root)
    total = table.num_rows
    conf = table.column("guide_confidence").to_pylist()
    keep = np.ones(total, dtype=bool)
    dropped: dict[str, int] = {}
    if min_confidence > 0:
        none = np.array([c is None for c in conf])
        # guide_confidence is float32: 0.9 is stored as 0.8999999762, which must pass a 0.9 filter
        low = np.array([c is not None and c < min_confidence - 1e-6 for c in conf])
        if none.any():
            dropped["no guide_confidence"] = int(none.sum())
        if low.any():
            dropped[f"guide_confidence < {min_confidence:g}"] = int(low.sum())
        keep &= ~(none | low)
    if not keep.any():
        why = "; ".join(f"{n} with {r}" for r, n in dropped.items())
        raise AugmentError(
            f"synthetic set {root}: no image left after filtering ({total} of {total} dropped: {why}); "
            "lower --min-confidence"
        )
    idx = np.flatnonzero(keep)
    keys = table.column("key").to_pylist()
    cls = table.column("class_index").to_pylist()
    soft = _soft_labels(table, root, class_names)
    arm_dir, shard_of = ArmDir(root), table.column("shard").to_pylist()
    return SyntheticSet(
        root=root,
        urls=urls,
        keys=[keys[i] for i in idx],
        labels=[cmap[cls[i]] for i in idx],
        confidence=[conf[i] for i in idx],
        total=total,
        dropped=dropped,
        min_confidence=float(min_confidence),
        soft=[soft[i] for i in idx],
        shards=[str(arm_dir.shard_path(parse_shard_name(shard_of[i]) or 0)) for i in idx],
    )


def _image_of(sample: dict[str, Any]) -> bytes:
    for ext in IMAGE_EXTS:
        if ext in sample:
            return sample[ext]
    raise AugmentError(f"shard sample {sample.get('__key__')!r} has no image (.jpg/.png/.webp); re-run generate")


def read_synthetic_images(syn: SyntheticSet, size: int | None = None) -> torch.Tensor:
    """Decode the kept images of ``syn`` into a uint8 tensor (N,3,H,W), in ``syn.keys`` order.

    Reads the tars once with ``webdataset`` (no decoding of dropped rows)."""
    import webdataset as wds

    wanted = {k: i for i, k in enumerate(syn.keys)}
    out: list[torch.Tensor | None] = [None] * len(wanted)
    for url in syn.urls:  # one shard at a time, so that a broken one is named
        pipe = wds.WebDataset([url], shardshuffle=False, empty_check=False).select(lambda s: s["__key__"] in wanted)
        try:
            for sample in pipe:
                with Image.open(io.BytesIO(_image_of(sample))) as im:
                    out[wanted[sample["__key__"]]] = image_tensor(im, size)
        except Exception as e:  # noqa: BLE001 - truncated tar, corrupt image: one user problem whatever raised it
            reason = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            raise AugmentError(f"shard {url} cannot be read ({reason}); `augment verify {syn.root}` lists what is "
                               "broken, and re-running `augment generate` with the same --out redoes that shard") from None
    missing = [i for i, t in enumerate(out) if t is None]
    if missing:
        where = f"shard {syn.shards[missing[0]]}" if syn.shards else f"synthetic set {syn.root}"
        raise AugmentError(
            f"{where}: {len(missing)} manifest rows have no image in the shards (e.g. {syn.keys[missing[0]]!r}: "
            f"truncated?); `augment verify {syn.root}` lists what is broken, and re-running `augment generate` with "
            "the same --out redoes that shard"
        )
    if len({tuple(t.shape) for t in out}) > 1 and size is None:
        raise AugmentError(f"synthetic set {syn.root} mixes image sizes; pass an input size to resize them")
    return torch.stack(out)  # type: ignore[arg-type]


def load_real(dataset: Dataset, samples: Sequence[Sample], size: int | tuple[int, int] | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Real samples as (uint8 images (N,3,H,W), int64 labels); (empty, empty) for no samples.

    Images of any size and mode are brought to ``size`` (the consumer's: a classifier's input
    size, ``train.input_size``) by :func:`augment.io.images.fit`. Without ``size`` they keep their
    own when they share one, else all are fitted to the smallest one's shorter side (no image is
    enlarged), so a dataset never has to be made uniform first."""
    if not samples:
        s = size if isinstance(size, int) else (size[0] if size else 1)
        return torch.zeros(0, 3, s, s, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    pictures = [dataset.load_image(s) for s in samples]
    if size is None and len({p.size for p in pictures}) > 1:
        size = min(min(p.size) for p in pictures)
    images = [image_tensor(p, size) for p in pictures]
    return torch.stack(images), torch.tensor([int(s.label) for s in samples], dtype=torch.int64)


def load_split(dataset: Dataset, split: str, size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole real split (e.g. the test split), checking that it exists."""
    if split not in dataset.splits():
        raise AugmentError(
            f"dataset {dataset.name!r} has no real split {split!r} (available: {', '.join(dataset.splits()) or 'none'}); "
            "pass --data-root pointing at the dataset folder, or another --split"
        )
    return load_real(dataset, dataset.samples(split), size)


# -------------------------------------------------------------------------------- in-memory mix


class MixedDataset(torch.utils.data.Dataset):
    """Real images first (indices ``[0, n_real)``), then every synthetic set's images.

    ``__getitem__`` returns ``(image, label, weight)``: the transformed image (the raw uint8 tensor
    when no transform is set), the label in the dataset's class indices, and the loss weight
    (1 for real, ``synthetic_weight`` for synthetic). Draw from it with :meth:`sampler` so the
    synthetic share follows ``synthetic_prob``.

    With ``distill_temperature`` set (distillation), synthetic images learn the guide's soft labels
    instead of their class: items gain a fourth element, the target distribution
    (:meth:`SyntheticSet.soft_targets`; all zeros for a real image, which keeps its hard label).
    """

    def __init__(
        self,
        real_images: torch.Tensor,
        real_labels: torch.Tensor,
        synthetic: Sequence[tuple[SyntheticSet, torch.Tensor]] = (),
        class_names: Sequence[str] = (),
        synthetic_prob: float | None = None,
        synthetic_weight: float = 1.0,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        distill_temperature: float | None = None,
    ) -> None:
        # the config's checks of these settings (one declaration each), for callers that pass them directly
        check_value("train.distill_temperature", distill_temperature)
        check_value("train.synthetic_prob", synthetic_prob)
        check_value("train.synthetic_weight", synthetic_weight)
        self.class_names = list(class_names)
        self.sets = [s for s, _ in synthetic]
        parts = [real_images] + [imgs for _, imgs in synthetic]
        shapes = {tuple(p.shape[1:]) for p in parts if len(p)}
        if len(shapes) > 1:
            raise AugmentError(f"real and synthetic images differ in size ({sorted(shapes)}); pass an input size")
        self.images = torch.cat([p for p in parts if len(p)]) if any(len(p) for p in parts) else real_images
        syn_labels = [torch.tensor(s.labels, dtype=torch.int64) for s in self.sets]
        self.labels = torch.cat([real_labels, *syn_labels])
        self.n_real = int(len(real_labels))
        self.n_synthetic = int(sum(len(s) for s in syn_labels))
        if self.n_real + self.n_synthetic == 0:
            raise AugmentError("nothing to train on: k=0 real images per class and no synthetic set; "
                               "pass --real-k > 0 or --synthetic DIR")
        self.synthetic_prob = synthetic_prob
        self.synthetic_weight = float(synthetic_weight)
        self.weights = torch.ones(len(self.labels))
        self.weights[self.n_real:] = self.synthetic_weight
        self.transform = transform
        self.distill_temperature = distill_temperature
        self.soft: torch.Tensor | None = None
        if distill_temperature is not None:
            n = len(self.class_names)
            self.soft = torch.cat([torch.zeros(self.n_real, n),
                                   *(s.soft_targets(n, distill_temperature) for s in self.sets)])

    def __len__(self) -> int:
        return len(self.labels)

    def is_synthetic(self, index: int) -> bool:
        return index >= self.n_real

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        img = self.images[index]
        if self.transform is not None:
            img = self.transform(img)
        item = (img, int(self.labels[index]), float(self.weights[index]))
        return item if self.soft is None else (*item, self.soft[index])

    @property
    def effective_prob(self) -> float:
        """The synthetic share actually drawn: ``synthetic_prob``, or the natural share when None;
        1 without reals, 0 without synthetic images."""
        if self.n_synthetic == 0:
            return 0.0
        if self.n_real == 0:
            return 1.0
        if self.synthetic_prob is None:
            return self.n_synthetic / (self.n_real + self.n_synthetic)
        return float(self.synthetic_prob)

    def sampler(self, num_samples: int | None = None, seed: int = 0) -> MixSampler:
        return MixSampler(self.n_real, self.n_synthetic, self.effective_prob, num_samples or len(self), seed)

    def summary(self) -> dict[str, Any]:
        per_class = torch.bincount(self.labels, minlength=len(self.class_names)).tolist()
        return {
            "real": self.n_real,
            "synthetic": self.n_synthetic,
            "synthetic_prob": self.synthetic_prob,
            "effective_synthetic_prob": self.effective_prob,
            "synthetic_weight": self.synthetic_weight,
            "distill_temperature": self.distill_temperature,
            "per_class": per_class,
            "synthetic_sets": [s.summary() for s in self.sets],
        }


class MixSampler(Sampler[int]):
    """Indices into a :class:`MixedDataset`: each draw is synthetic with probability ``prob``,
    else real; within each pool the images are visited in a fresh random order (every image once
    before any repeats). ``num_samples`` draws per epoch; call :meth:`set_epoch` for a new order."""

    def __init__(self, n_real: int, n_synthetic: int, prob: float, num_samples: int, seed: int = 0) -> None:
        if n_real + n_synthetic == 0:
            raise ValueError("MixSampler: both pools are empty")
        self.n_real, self.n_synthetic = n_real, n_synthetic
        self.prob = 1.0 if n_real == 0 else 0.0 if n_synthetic == 0 else float(prob)
        self.num_samples = int(num_samples)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    def _cycle(n: int, count: int, g: torch.Generator) -> torch.Tensor:
        if count == 0 or n == 0:
            return torch.zeros(0, dtype=torch.int64)
        reps = -(-count // n)
        return torch.cat([torch.randperm(n, generator=g) for _ in range(reps)])[:count]

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        synth = torch.rand(self.num_samples, generator=g) < self.prob
        n_syn = int(synth.sum())
        order = torch.empty(self.num_samples, dtype=torch.int64)
        order[~synth] = self._cycle(self.n_real, self.num_samples - n_syn, g)
        order[synth] = self.n_real + self._cycle(self.n_synthetic, n_syn, g)
        return iter(order.tolist())


def make_mixed_dataset(
    dataset: Dataset,
    k: int,
    seed: int = 0,
    synthetic: Sequence[str | os.PathLike[str]] = (),
    synthetic_prob: float | None = 0.5,
    synthetic_weight: float = 1.0,
    min_confidence: float = 0.0,
    input_size: int | None = None,
    split: str = "train",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    synthetic_sets: Sequence[tuple[SyntheticSet, torch.Tensor]] | None = None,
    distill_temperature: float | None = None,
) -> MixedDataset:
    """k real images per class from ``dataset``'s ``split`` (``Dataset.kshot(k, seed)``) plus the
    synthetic run folders ``synthetic`` (each an arm folder holding ``shards/`` and ``manifests/``),
    decoded into memory and resized to ``input_size`` (default: the images' own size).

    ``synthetic_prob``: probability that a drawn sample is synthetic (None: the natural share of the
    union); ``synthetic_weight``: loss weight of synthetic samples; ``min_confidence``: drop synthetic
    rows whose ``guide_confidence`` is lower. Labels are aligned through class names. Several
    synthetic sets form one synthetic pool (drawn uniformly); a set emptied by the filter, or whose
    class names are not the dataset's, is an :class:`AugmentError`.
    ``synthetic_sets`` passes already-decoded sets (from :func:`load_synthetic` +
    :func:`read_synthetic_images`) instead of folders, to reuse them across many runs.
    ``distill_temperature``: train the synthetic images on the guide's soft labels at this
    temperature (see :class:`MixedDataset`); None: on their class.
    """
    if k < 0:
        raise AugmentError(f"--real-k must be >= 0, got {k}")
    if k > 0 and split not in dataset.splits():
        raise AugmentError(
            f"dataset {dataset.name!r} has no real split {split!r} (available: {', '.join(dataset.splits()) or 'none'}); "
            "pass --data-root pointing at the dataset folder"
        )
    real_images, real_labels = load_real(dataset, dataset.kshot(k, seed, split) if k > 0 else [], input_size)
    sets = list(synthetic_sets or [])
    for arm in synthetic:
        syn = load_synthetic(arm, dataset.class_names, min_confidence)
        sets.append((syn, read_synthetic_images(syn, input_size)))
    if len(real_labels) == 0 and sets:
        real_images = real_images[:0].new_zeros((0, *sets[0][1].shape[1:]))
    return MixedDataset(real_images, real_labels, sets, dataset.class_names, synthetic_prob, synthetic_weight, transform,
                        distill_temperature)


def mixed_loader(
    mixed: MixedDataset,
    batch_size: int = 64,
    samples_per_epoch: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """A DataLoader over ``mixed`` drawing ``samples_per_epoch`` samples (default: its size) per
    epoch with :class:`MixSampler`; batches are ``(images, labels, weights)``. Call
    ``loader.sampler.set_epoch(e)`` each epoch for a new draw."""
    return DataLoader(mixed, batch_size=batch_size, sampler=mixed.sampler(samples_per_epoch, seed),
                      num_workers=num_workers, drop_last=False)


# -------------------------------------------------------------------------------- streaming mix


class _RealCycle(IterableDataset):
    """Few-shot reals (always small) as an endless shuffled stream of (image, label, 1.0)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None, seed: int) -> None:
        self.images, self.labels, self.transform, self.seed = images, labels, transform, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int, float]]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            for i in torch.randperm(len(self.labels), generator=g).tolist():
                img = self.images[i]
                yield (self.transform(img) if self.transform else img), int(self.labels[i]), 1.0


def _synthetic_stream(syn: SyntheticSet, size: int | None, transform: Callable | None, weight: float,
                      shuffle: int, seed: int):
    import webdataset as wds

    label_of = dict(zip(syn.keys, syn.labels, strict=True))

    def convert(sample: dict[str, Any]) -> tuple[torch.Tensor, int, float]:
        with Image.open(io.BytesIO(_image_of(sample))) as im:
            img = image_tensor(im, size)
        return (transform(img) if transform else img), label_of[sample["__key__"]], weight

    pipe = wds.WebDataset(syn.urls, resampled=True, shardshuffle=False, seed=seed, empty_check=False)
    pipe = pipe.select(lambda s: s["__key__"] in label_of)
    if shuffle > 1:
        pipe = pipe.shuffle(shuffle)
    return pipe.map(convert)


def stream_mixed(
    dataset: Dataset,
    k: int,
    seed: int = 0,
    synthetic: Sequence[str | os.PathLike[str]] = (),
    synthetic_prob: float = 0.5,
    synthetic_weight: float = 1.0,
    min_confidence: float = 0.0,
    input_size: int | None = None,
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    shuffle: int = 1000,
    split: str = "train",
) -> IterableDataset:
    """The streaming counterpart of :func:`make_mixed_dataset` for synthetic sets too large for
    memory: an endless ``IterableDataset`` of ``(image, label, weight)`` that reads the shards with
    ``wds.WebDataset`` (resampled shards + a shuffle buffer of ``shuffle`` samples) and mixes them
    with the in-memory few-shot reals through ``wds.RandomMix`` with probabilities
    ``[1 - synthetic_prob, synthetic_prob]`` (synthetic sets share their part by size). Wrap it in a
    ``DataLoader(batch_size=...)`` and stop after as many batches as you want per epoch.
    """
    import webdataset as wds

    check_value("train.synthetic_prob", synthetic_prob)
    samples = dataset.kshot(k, seed, split) if k > 0 else []
    sets = [load_synthetic(a, dataset.class_names, min_confidence) for a in synthetic]
    sources: list[Any] = []
    probs: list[float] = []
    if samples:
        images, labels = load_real(dataset, samples, input_size)
        sources.append(_RealCycle(images, labels, transform, seed))
        probs.append(1.0 - synthetic_prob if sets else 1.0)
    total = sum(s.kept for s in sets)
    for i, s in enumerate(sets):
        sources.append(_synthetic_stream(s, input_size, transform, synthetic_weight, shuffle, seed + i))
        probs.append((synthetic_prob if samples else 1.0) * s.kept / total)
    if not sources:
        raise AugmentError("nothing to train on: k=0 real images per class and no synthetic set")
    return wds.RandomMix(sources, probs=probs, longest=False)
