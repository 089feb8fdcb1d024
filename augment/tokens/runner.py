"""The ``augment tokens`` stage: one DisCo token per selected class, in parallel, resumable.

Work unit = one class. A class is done when ``tokens/NNNN-<slug>.safetensors`` exists (written
atomically by the driver, then its row in ``tokens.parquet``); a re-run skips done classes and
redoes the rest, ``force`` retrains all selected classes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from tqdm.auto import tqdm

from augment.config import Config, config_from_dict
from augment.datasets.names import slugify
from augment.distributed import PoolSpec, run_units
from augment.errors import AugmentError
from augment.io.manifest import TOKENS_SCHEMA, write_parquet
from augment.io.rundir import RunDir, check_compatible, check_writable, stage_ran, write_run_json
from augment.models.backbone import model_fingerprint
from augment.runs import load_dataset, select_classes
from augment.tokens.textual_inversion import save_token, token_string

# Settings that make a token different: a folder with other values belongs to another run.
COMPAT_KEYS = ["model", "model_fingerprint", "classifier", "seed", "class_names", "tokens.prompts", "tokens.grad_steps",
               "tokens.lr", "tokens.steps", "tokens.guidance_scale", "tokens.batch_size", "resolution"]


def token_file(run: RunDir, class_index: int, class_name: str) -> Path:
    return Path(run.tokens) / f"{class_index:04d}-{slugify(class_name)}.safetensors"


class TokenWorker:
    """Loads backbone + classifier once; ``run(class_index)`` trains that class's token."""

    def __init__(self, cfg_dict: dict[str, Any], class_names: list[str]) -> None:
        from augment.models.backbone import load_backbone, native_resolution
        from augment.models.classifier import check_classes, load_classifier
        from augment.tokens.disco import DiscoTrainer

        cfg = config_from_dict(cfg_dict)
        self.class_names = class_names
        pipe = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        clf = load_classifier(cfg.classifier)
        check_classes(clf, class_names)
        self.trainer = DiscoTrainer(pipe, clf, cfg.tokens, cfg.seed, cfg.resolution or native_resolution(pipe))

    def run(self, class_index: int) -> dict[str, Any]:
        res = self.trainer.train(class_index, self.class_names[class_index])
        out = {k: getattr(res, k) for k in ("class_index", "class_name", "token", "init_token", "steps", "best_loss",
                                            "init_accuracy", "final_accuracy", "seconds", "status", "error", "seeds")}
        out["embedding"] = res.embedding
        return out


def make_worker(cfg_dict: dict[str, Any], class_names: list[str]) -> TokenWorker:
    return TokenWorker(cfg_dict, class_names)


@dataclass
class TokensSummary:
    trained: int
    skipped: int
    failed: list[str]
    rows: list[dict[str, Any]]
    seconds: float


def preflight(cfg: Config, names: list[str]) -> None:
    """Fail on the driver, with one clear line, before any actor starts loading models."""
    from augment.models.backbone import resolve_backbone_path
    from augment.models.classifier import check_classes, load_classifier
    from augment.tokens.disco import check_grad_steps

    resolve_backbone_path(cfg.model)
    check_grad_steps(cfg.tokens.grad_steps)
    check_classes(load_classifier(cfg.classifier), names)


def _read_rows(path: Path) -> dict[int, dict[str, Any]]:
    if not path.exists():
        return {}
    return {int(r["class_index"]): r for r in pq.read_table(path).to_pylist()}


def run_tokens(cfg: Config, force: bool = False, show_progress: bool = True) -> TokensSummary:
    """Train the tokens of the selected classes into ``cfg.out``/tokens."""
    start = time.perf_counter()
    dataset = load_dataset(cfg)
    names = dataset.class_names
    classes = select_classes(cfg.classes, len(names))
    preflight(cfg, names)  # every check that needs no run folder comes before creating it
    fingerprint = model_fingerprint(cfg.model)
    cfg_dict = cfg.to_dict()
    run = RunDir(cfg.out)
    if stage_ran(run, "tokens"):
        check_compatible(run, cfg_dict, COMPAT_KEYS, force, extra={"class_names": names, "model_fingerprint": fingerprint})
    check_writable(cfg.out)
    write_run_json(run, cfg_dict, "tokens", extra={"class_names": names, "model_fingerprint": fingerprint})
    Path(run.tokens).mkdir(parents=True, exist_ok=True)
    rows = _read_rows(Path(run.tokens_parquet))
    todo = [c for c in classes if force or not token_file(run, c, names[c]).exists()]
    skipped = len(classes) - len(todo)
    failed: list[str] = []
    bar = tqdm(total=len(classes), initial=skipped, desc="tokens", unit="class", disable=not show_progress)

    def record(c: int, row: dict[str, Any]) -> None:
        rows[c] = row
        write_parquet(run.tokens_parquet, [rows[k] for k in sorted(rows)], TOKENS_SCHEMA)

    def base_row(c: int) -> dict[str, Any]:
        return {"class_index": c, "class_name": names[c], "token": token_string(c), "grad_steps": str(cfg.tokens.grad_steps),
                "lr": cfg.tokens.lr, "model_id": cfg.model}

    def on_result(c: int, res: dict[str, Any]) -> None:
        path = token_file(run, c, names[c])
        row = base_row(c) | {k: res[k] for k in ("init_token", "steps", "final_accuracy", "seconds", "status",
                                                 "error", "seeds")}
        row["best_loss"] = res["best_loss"] if math.isfinite(res["best_loss"]) else None
        if res["status"] == "ok":
            row["token_sha256"] = save_token(path, res["token"], res["embedding"])
            row["token_file"] = path.name
        else:
            failed.append(f"{c} {names[c]}: {res['error']}")
        record(c, row)
        bar.set_postfix(cls=c, loss=f"{res['best_loss']:.3f}", acc=f"{res['init_accuracy']:.2f}->{res['final_accuracy']:.2f}")
        bar.update(1)

    def on_error(c: int, exc: BaseException) -> None:
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if isinstance(exc, AugmentError):
            raise exc
        failed.append(f"{c} {names[c]}: {msg}")
        record(c, base_row(c) | {"status": "failed", "error": msg})
        bar.update(1)

    try:
        run_units(lambda: make_worker(cfg_dict, names), todo, PoolSpec(cfg.workers, cfg.address, device=cfg.device),
                  on_result, on_error)
    finally:
        bar.close()
    write_run_json(run, cfg_dict, "tokens", extra={"class_names": names, "model_fingerprint": fingerprint})
    return TokensSummary(len(todo) - len(failed), skipped, failed, [rows[k] for k in sorted(rows)],
                         time.perf_counter() - start)
