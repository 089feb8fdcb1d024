"""The ``augment generate`` stage: per-class images into WebDataset shards + Parquet manifests.

Work unit = one shard. The driver plans the shards, skips the ones already done (Parquet present
with the expected keys), removes half-written files, and hands the rest to the pool; each finished
shard is written by the driver (tar, then Parquet last) and ``_info.json`` is rebuilt. The token
arm writes to ``OUT/``; the baseline arm (same prompts and seeds, no token) to ``OUT/baseline/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from augment.config import Config
from augment.distributed import PoolSpec, run_units
from augment.errors import AugmentError
from augment.generate.plan import ShardUnit, plan_shards
from augment.generate.worker import GenerateWorker, GenSpec
from augment.io.rundir import RunDir, check_compatible, check_writable, stage_ran, write_run_json
from augment.io.shards import cleanup_partial, done_shards, manifest_path, sample_key, write_info, write_shard
from augment.runs import load_dataset, select_classes
from augment.tokens.runner import token_file

COMPAT_KEYS = ["model", "model_fingerprint", "classifier", "seed", "class_names", "classes", "resolution", "scheduler",
               "generate.prompts", "generate.negative_prompt", "generate.steps", "generate.guidance_scale",
               "generate.shard_size", "generate.image_format", "generate.min_confidence",
               "generate.max_attempts", "generate.batch_size", "baseline"]


@dataclass
class GenerateSummary:
    out: Path
    classes: int
    samples: int
    shards: int
    written: int
    skipped: int
    failed: list[str]
    seconds: float
    mean_confidence: float | None


def arm_dir(out: str | Path, baseline: bool) -> Path:
    return Path(out) / "baseline" if baseline else Path(out)


def _shard_is_done(out: Path, unit: ShardUnit, done: set[int]) -> bool:
    """Done = its Parquet marker exists and holds exactly the keys this plan puts in the shard."""
    path = manifest_path(out, unit.index)
    if unit.index not in done:
        return False
    keys = pq.read_table(path, columns=["key"]).column("key").to_pylist()
    return keys == [sample_key(c, i) for c, i in unit.entries]


def make_worker(cfg_dict: dict[str, Any], spec: GenSpec) -> GenerateWorker:
    return GenerateWorker(cfg_dict, spec)


def run_generate(cfg: Config, baseline: bool = False, force: bool = False, show_progress: bool = True) -> GenerateSummary:
    start = time.perf_counter()
    g = cfg.generate
    if g.per_class < 1:
        raise AugmentError(f"--per-class must be at least 1, got {g.per_class}")
    if g.shard_size < 1:
        raise AugmentError(f"--shard-size must be at least 1, got {g.shard_size}")
    if not 0.0 <= g.min_confidence < 1.0:
        raise AugmentError(f"--min-confidence must be in [0, 1), got {g.min_confidence}")
    dataset = load_dataset(cfg)
    names = dataset.class_names
    classes = select_classes(cfg.classes, len(names))
    from augment.models.backbone import model_fingerprint, resolve_backbone_path
    from augment.models.classifier import check_classes, load_classifier

    resolve_backbone_path(cfg.model)  # every check that needs no run folder comes before creating it
    fingerprint = model_fingerprint(cfg.model)
    check_classes(load_classifier(cfg.classifier), names)
    root = RunDir(cfg.out)
    out = arm_dir(cfg.out, baseline)
    token_files: dict[int, str] = {}
    token_sha: dict[int, str] = {}
    if not baseline:
        missing = [c for c in classes if not token_file(root, c, names[c]).exists()]
        if missing:
            c = missing[0]
            raise AugmentError(
                f"no token for class {c} ({names[c]!r}) in {root.tokens} ({len(missing)} missing); "
                "run `augment tokens` with the same --out first (or pass --baseline for plain prompts)"
            )
        import hashlib

        for c in classes:
            path = token_file(root, c, names[c])
            token_files[c] = str(path)
            token_sha[c] = hashlib.sha256(path.read_bytes()).hexdigest()
    cfg_dict = cfg.to_dict()
    extra = {"class_names": names, "baseline": baseline, "model_fingerprint": fingerprint}
    if stage_ran(out, "generate"):
        check_compatible(out, cfg_dict, COMPAT_KEYS, force, extra=extra)
    check_writable(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    write_run_json(out, cfg_dict, "generate", extra=extra)
    cleanup_partial(out)
    units = plan_shards(classes, g.per_class, g.shard_size)
    # Shards beyond the plan (a smaller --per-class than before) are left alone; redo changed ones.
    done = done_shards(out)  # one directory listing, not one per shard
    todo = [u for u in units if force or not _shard_is_done(out, u, done)]
    failed: list[str] = []
    total_images = sum(len(u.entries) for u in todo)
    bar = tqdm(total=total_images, desc="generate" + (" (baseline)" if baseline else ""), unit="img",
               disable=not show_progress)
    name = f"{cfg.dataset}-{'baseline' if baseline else 'tokens'}"

    def on_result(unit: ShardUnit, samples) -> None:
        write_shard(out, unit.index, samples)
        write_info(out, name)
        bar.update(len(samples))
        bar.set_postfix(shard=unit.index)

    def on_error(unit: ShardUnit, exc: BaseException) -> None:
        if isinstance(exc, AugmentError):
            raise exc
        if isinstance(exc, OSError):
            raise AugmentError(f"cannot write shard {unit.index} in {out}: {exc}; free space or fix permissions, "
                               "then re-run the same command to resume") from None
        failed.append(f"shard {unit.index}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

    spec = GenSpec(names, token_files, token_sha, baseline)
    try:
        try:
            run_units(lambda: make_worker(cfg_dict, spec), todo, PoolSpec(cfg.workers, cfg.address, device=cfg.device),
                      on_result, on_error)
        except OSError as e:
            raise AugmentError(f"cannot write into {out}: {e}; free space or fix permissions, then re-run to resume") from None
    finally:
        bar.close()
    write_info(out, name)
    write_run_json(out, cfg_dict, "generate", extra=extra)
    conf = _mean_confidence(out)
    planned = {u.index for u in units}
    return GenerateSummary(out, len(classes), sum(len(u.entries) for u in units), len(planned), len(todo) - len(failed),
                           len(units) - len(todo), failed, time.perf_counter() - start, conf)


def _mean_confidence(out: Path) -> float | None:
    from augment.io.manifest import read_manifests

    try:
        table = read_manifests(out / "manifests")
    except Exception:  # noqa: BLE001 - no manifests yet
        return None
    col = table.column("guide_confidence").to_pylist() if table.num_rows else []
    vals = [v for v in col if v is not None]
    return sum(vals) / len(vals) if vals else None
