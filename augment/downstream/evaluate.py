"""``augment eval OUT``: how recognisable a run's generated images are (the paper's Table 1).

For the token arm (``OUT/``) and, when present, the baseline arm (``OUT/baseline/``, same prompts
and seeds without the learned token; both arms are restricted to the sample keys they share, so
they are compared seed for seed), every classifier spec given (default: the run's guidance
classifier and its judge) predicts each image; we report top-1 / top-5 per class and their mean,
plus the same classifier on the real test split for reference. FID and KID between generated and
real test images are computed on a classifier's penultimate features (no Inception weights exist
offline), so they compare arms and runs, not papers. Results go to ``OUT/report/eval.json`` (an
:class:`~augment.downstream.eval_result.EvalResult`) and ``OUT/report/eval.md``.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from augment.datasets.base import Dataset
from augment.downstream.eval_result import Accuracy, Distance, EvalArm, EvalResult
from augment.downstream.metrics import fid, kid, penultimate_features
from augment.downstream.mixing import (
    SyntheticSet,
    load_real,
    load_synthetic,
    norm_name,
    read_synthetic_images,
)
from augment.errors import AugmentError
from augment.io.atomic import atomic_write_json, atomic_write_text
from augment.io.rundir import ArmDir, RunDir
from augment.io.shards import shard_urls
from augment.logs import progress_disabled

__all__ = ["align_classifier", "arm_dirs", "render_eval_markdown", "run_eval"]

#: the arms augment eval compares, seed for seed (names in augment.io.rundir.ARMS)
EVAL_ARMS = ("token", "baseline")

FEATURE_NOTE = ("FID/KID use the penultimate-layer features of {spec} (not Inception-v3: no Inception "
                "weights are available offline); compare them only between runs evaluated with the same "
                "feature classifier. KID is the unbiased estimate, so sets from the same distribution can "
                "score slightly below zero.")


def arm_dirs(out: str | Path) -> dict[str, ArmDir]:
    """The arms of run folder ``out`` that hold complete shards, among :data:`EVAL_ARMS`."""
    run = RunDir(out)
    arms = {name: run.arm_dir(name) for name in EVAL_ARMS}
    return {name: a for name, a in arms.items() if a.path.is_dir() and shard_urls(a)}


def align_classifier(clf: Any, class_names: Sequence[str],
                     class_map: Mapping[str, str | None] | None = None) -> torch.Tensor:
    """For each dataset class, the classifier output index with the same name (identity when the
    classifier has no names but the same number of outputs); AugmentError naming the first
    dataset classes the classifier does not know.

    With ``class_map`` (dataset class name -> the classifier's label for it, or None: not judged;
    :func:`read_class_map`), a class is looked up under its mapped label, then under its own
    name; a class found under neither is left out (index -1) instead of refused: the paper's
    iNat179 setting, CUB images judged by an iNat classifier on the 179 species both share."""
    names = getattr(clf, "class_names", None)
    n_out = clf.num_classes
    if not names:
        if n_out != len(class_names):
            raise AugmentError(
                f"classifier {clf.spec} has no class names and {n_out} outputs, but the run has "
                f"{len(class_names)} classes; pass a classifier with a label map (a .json sidecar)"
            )
        return torch.arange(len(class_names))
    index = {norm_name(n): i for i, n in enumerate(names)}
    if class_map is not None:
        mapped = {norm_name(k): v for k, v in class_map.items()}

        def find(name: str) -> int:
            label = mapped.get(norm_name(name), name)
            for cand in ([label, name] if label else []):
                if norm_name(cand) in index:
                    return index[norm_name(cand)]
            return -1

        return torch.tensor([find(n) for n in class_names])
    missing = [n for n in class_names if norm_name(n) not in index]
    if missing:
        shown = ", ".join(repr(n) for n in missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise AugmentError(
            f"classifier {clf.spec} does not know the classes {shown} (its labels: "
            f"{', '.join(repr(n) for n in list(names)[:5])}{', ...' if len(names) > 5 else ''}); "
            "pass a classifier trained on this class list, or --class-map FILE (dataset class -> its label)"
        )
    return torch.tensor([index[norm_name(n)] for n in class_names])


def read_class_map(path: str | Path) -> dict[str, str | None]:
    """A class-name map: dataset class -> the judge's label (null/empty: not judged). YAML (a
    mapping) or CSV (two columns, an optional ``class,label`` header): one line naming the
    problem when the file is neither."""
    import csv

    import yaml

    path = Path(path)
    if not path.is_file():
        raise AugmentError(f"class map {path} does not exist; pass a YAML or CSV file (dataset class -> label)")
    text = path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() == ".csv":
        rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
        if rows and [c.strip().lower() for c in rows[0][:2]] == ["class", "label"]:
            rows = rows[1:]
        bad = next((i for i, r in enumerate(rows) if len(r) > 2), None)
        if bad is not None:
            raise AugmentError(f"class map {path}: row {bad + 1} has {len(rows[bad])} columns; use two: class,label")
        return {r[0].strip(): (r[1].strip() if len(r) > 1 and r[1].strip() else None) for r in rows}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise AugmentError(f"class map {path} is not valid YAML ({str(e).splitlines()[0]}); fix it or use a .csv") from None
    if not isinstance(data, dict) or not all(isinstance(v, (str, type(None))) for v in data.values()):
        raise AugmentError(f"class map {path}: expected a mapping of dataset class -> label (a name or null)")
    return {str(k): v for k, v in data.items()}


@torch.no_grad()
def _logits(clf: Any, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    out = []
    device = clf.mean.device
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].to(device).float().div(255.0)
        out.append(clf(x).float().cpu())
    return torch.cat(out)


def accuracy_table(logits: torch.Tensor, targets: torch.Tensor, labels: torch.Tensor,
                   class_names: Sequence[str]) -> dict[str, Any]:
    """Top-1/top-5 over the classifier's full label space; ``targets`` are classifier indices,
    ``labels`` the dataset class of each image (for the per-class breakdown)."""
    k = min(5, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit1 = top[:, 0] == targets
    hit5 = (top == targets[:, None]).any(1)
    per1, per5 = {}, {}
    for c, name in enumerate(class_names):
        m = labels == c
        if m.any():
            per1[name] = float(hit1[m].float().mean())
            per5[name] = float(hit5[m].float().mean())
    return {
        "n": int(len(targets)),
        "top1": float(hit1.float().mean()),
        "top5": float(hit5.float().mean()),
        "top5_k": k,
        "mean_class_top1": sum(per1.values()) / len(per1) if per1 else None,
        "mean_class_top5": sum(per5.values()) / len(per5) if per5 else None,
        "per_class_top1": per1,
        "per_class_top5": per5,
    }


def _restrict(syn: SyntheticSet, keys: set[str]) -> SyntheticSet:
    idx = [i for i, k in enumerate(syn.keys) if k in keys]
    return SyntheticSet(syn.root, syn.urls, [syn.keys[i] for i in idx], [syn.labels[i] for i in idx],
                        [syn.confidence[i] for i in idx], syn.total, dict(syn.dropped), syn.min_confidence)


class _RealSets:
    """A real split decoded at each classifier's input size (its data config), once per size: the
    dataset's images may have any size, each classifier sees them as its own preprocessing would."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._loaded: dict[tuple[str, tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, split: str, clf: Any) -> tuple[torch.Tensor, torch.Tensor]:
        size = tuple(int(v) for v in clf.data.input_size[-2:])
        if (split, size) not in self._loaded:
            self._loaded[(split, size)] = load_real(self.dataset, self.dataset.samples(split), size)
        return self._loaded[(split, size)]


def run_eval(
    out: str | Path,
    dataset: Dataset,
    specs: Sequence[str],
    feature_spec: str | None = None,
    split: str = "test",
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    kid_subsets: int = 100,
    progress: bool = True,
    class_map: Mapping[str, str | None] | None = None,
) -> EvalResult:
    """Evaluate the arms of run folder ``out`` (see the module docstring); writes
    ``out/report/eval.json`` and ``eval.md`` and returns the result as written (undefined metrics
    are None)."""
    from augment.models.classifier import load_classifier

    out = Path(out)
    run = RunDir(out)
    arms = arm_dirs(out)
    if not arms:
        raise AugmentError(
            f"no generated images in {out} (no complete shards in "
            f"{' or '.join(str(run.arm_dir(a).shards) for a in EVAL_ARMS)}); "
            "run `augment build` (or `augment generate`) with this --out first"
        )
    specs = list(dict.fromkeys(s for s in specs if s))
    if not specs:
        raise AugmentError("no classifier to evaluate with; pass --eval-classifier SPEC")
    names = dataset.class_names
    sets = {a: load_synthetic(p, names) for a, p in arms.items()}
    notes: list[str] = []
    if len(sets) > 1:
        common = set.intersection(*(set(s.keys) for s in sets.values()))
        for a, s in sets.items():
            if len(common) < s.kept:
                notes.append(f"{a} arm: {s.kept - len(common)} of {s.kept} images have no counterpart with the "
                             "same seed in the other arm and are left out")
        sets = {a: _restrict(s, common) for a, s in sets.items()}
    images = {a: read_synthetic_images(s) for a, s in sets.items()}
    labels = {a: torch.tensor(s.labels) for a, s in sets.items()}

    has_real = split in dataset.splits()
    if not has_real and dataset.splits():
        raise AugmentError(
            f"dataset {dataset.name!r} has no real split {split!r} (available: {', '.join(dataset.splits())}); pass --split"
        )
    if not has_real:
        notes.append(f"dataset {dataset.name!r} has no real images (no --data-root): reference accuracy and FID/KID skipped")
    reals = _RealSets(dataset)

    accuracy: list[Accuracy] = []
    bar = tqdm(total=len(specs) * (len(images) + has_real), desc="eval", unit="set",
               disable=progress_disabled(progress), leave=False)
    for spec in specs:
        clf = load_classifier(spec, device, names)
        cols = align_classifier(clf, names, class_map)
        left_out = [n for n, c in zip(names, cols.tolist(), strict=True) if c < 0]
        if len(left_out) == len(names):
            raise AugmentError(f"classifier {spec} knows none of the run's classes, by name or under the class map; "
                               "check the map's labels against the classifier's")
        if left_out:
            notes.append(f"{spec}: {len(left_out)} of {len(names)} classes have no label of it under the class map "
                         f"and are left out of its accuracy (e.g. {', '.join(left_out[:3])})")
        sets_of = [(a, str(arms[a]), imgs, labels[a]) for a, imgs in images.items()]
        if has_real:
            sets_of.append((f"real {split}", None, *reals.get(split, clf)))
        for a, where, imgs, lab in sets_of:
            keep = cols[lab] >= 0
            logits = _logits(clf, imgs[keep], batch_size)
            accuracy.append(Accuracy(images=a, dir=where, classifier=spec,
                                     **accuracy_table(logits, cols[lab[keep]], lab[keep], names)))
            bar.update(1)
    bar.close()

    distances: list[Distance] = []
    feature_spec = feature_spec or specs[-1]
    if has_real:
        clf = load_classifier(feature_spec, device, names)
        ref = penultimate_features(clf, reals.get(split, clf)[0], batch_size)
        rows = [(a, imgs) for a, imgs in images.items()]
        other = "train" if split != "train" and "train" in dataset.splits() else None
        if other:
            rows.append((f"real {other} (reference)", reals.get(other, clf)[0]))
        for a, imgs in rows:
            f = penultimate_features(clf, imgs, batch_size)
            k_mean, k_std = kid(f, ref, subsets=kid_subsets)
            distances.append(Distance(images=a, n=int(len(imgs)), n_real=int(len(ref)), fid=fid(f, ref),
                                      kid=k_mean, kid_std=k_std))
        notes.append(FEATURE_NOTE.format(spec=feature_spec))

    result = EvalResult(
        run=str(out),
        dataset=dataset.name,
        split=split,
        classifiers=specs,
        feature_classifier=feature_spec if has_real else None,
        arms={a: EvalArm(dir=str(p), images=int(len(images[a]))) for a, p in arms.items()},
        accuracy=accuracy,
        distances=distances,
        notes=notes,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )
    doc = result.to_json()
    result = EvalResult.from_json(doc)  # NaN -> None: the object equals what the file holds
    atomic_write_json(run.eval_json, doc)
    atomic_write_text(run.eval_md, render_eval_markdown(result, names))
    return result


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def render_eval_markdown(result: EvalResult, class_names: Sequence[str]) -> str:
    """Markdown tables: accuracy per image set and classifier, per-class top-1, FID/KID."""
    lines = [f"# Generated-image accuracy: {result.run}", "",
             "| images | n | classifier | top-1 | top-5 | mean class top-1 |", "|---|---:|---|---:|---:|---:|"]
    for r in result.accuracy:
        lines.append(f"| {r.images} | {r.n} | {r.classifier} | {_pct(r.top1)} | {_pct(r.top5)} | "
                     f"{_pct(r.mean_class_top1)} |")
    cols = [(r.images, r.classifier) for r in result.accuracy]
    lines += ["", "Per-class top-1:", "",
              "| class | " + " | ".join(f"{i} / {c}" for i, c in cols) + " |",
              "|---|" + "---:|" * len(cols)]
    for name in class_names:
        vals = [r.per_class_top1.get(name) for r in result.accuracy]
        lines.append(f"| {name} | " + " | ".join(_pct(v) for v in vals) + " |")
    if result.distances:
        lines += ["", f"FID / KID against real {result.split} images "
                      f"(features: {result.feature_classifier}, penultimate layer):", "",
                  "| images | n | FID | KID ×10³ |", "|---|---:|---:|---:|"]
        for d in result.distances:
            f = "–" if d.fid is None else f"{d.fid:.2f}"
            k = "–" if d.kid is None else f"{1000 * d.kid:.2f} ± {1000 * (d.kid_std or 0):.2f}"
            lines.append(f"| {d.images} | {d.n} | {f} | {k} |")
    if result.notes:
        lines += [""] + [f"- {n}" for n in result.notes]
    return "\n".join(lines) + "\n"
