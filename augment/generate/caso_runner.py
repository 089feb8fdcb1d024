"""The ``augment caso`` stage: per class, learn a CASO embedding from k real images and write edits.

Work unit = one source class: learn the embedding (target = the class itself, or ``caso.target``
for counterfactual edits), save it to ``OUT/caso/tokens/``, then edit each of the k reals
``edits_per_image`` times (fresh seeds) into one shard ``OUT/caso/shards/synth-NNNNNN.tar`` with
its manifest (mode ``edit``, ``source_key``, ``strength``). Labels are the TARGET class. A class is
done when its shard's Parquet exists; re-runs skip done classes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from augment.config import Config, config_from_dict
from augment.datasets.names import slugify
from augment.distributed import PoolSpec, run_units
from augment.errors import AugmentError
from augment.io.images import encode_image
from augment.io.manifest import TOKENS_SCHEMA, write_parquet
from augment.io.rundir import check_compatible, check_writable, stage_ran, write_run_json
from augment.io.shards import SynthSample, done_shards, sample_key, write_info, write_shard
from augment.models.diffusion import Diffusion
from augment.runs import load_dataset, select_classes
from augment.seeds import derive_seed
from augment.tokens.caso import CasoTrainer, vector_tokens

COMPAT_KEYS = ["model", "classifier", "seed", "class_names", "classes", "caso"]


def caso_dir(out: str | Path) -> Path:
    return Path(out) / "caso"


class CasoWorker:
    def __init__(self, cfg_dict: dict[str, Any], class_names: list[str]) -> None:
        from augment.models.backbone import load_backbone
        from augment.models.classifier import load_classifier

        self.cfg = cfg = config_from_dict(cfg_dict)
        self.names = class_names
        self.pipe = load_backbone(cfg.model, cfg.device, cfg.dtype, cfg.scheduler)
        self.trainer = CasoTrainer(self.pipe, load_classifier(cfg.classifier), cfg.caso, cfg.seed)
        self.dataset = load_dataset(cfg)

    def run(self, unit: tuple[int, int]) -> dict[str, Any]:
        c, shard_index = unit
        cfg, cc = self.cfg, self.cfg.caso
        target = c if cc.target is None else int(cc.target)
        reals = self.dataset.kshot(cc.k, cfg.seed, cc.split)
        reals = [s for s in reals if s.label == c]
        size = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        images = torch.stack([
            torch.from_numpy(np.array(self.dataset.load_image(s).convert("RGB").resize((size, size)))).permute(2, 0, 1)
            for s in reals]).float() / 255
        res = self.trainer.learn(images, c, target)
        prompt = " ".join(vector_tokens(res.token, cc.n_vectors))
        samples = []
        for j, (s, img) in enumerate(zip(reals, images, strict=True)):
            seeds = [derive_seed(cfg.seed, "caso-edit", c, target, j, e) for e in range(cc.edits_per_image)]
            edited = Diffusion(self.pipe).edit(prompt, img.unsqueeze(0).repeat(len(seeds), 1, 1, 1), seeds,
                                               cc.strength, cc.edit_steps, cc.edit_guidance)
            probs = self.trainer.classifier(edited).softmax(-1)
            arrays = (edited.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8)
            for e in range(len(seeds)):
                index = c * 100000 + j * cc.edits_per_image + e  # unique across source classes
                samples.append(SynthSample(sample_key(target, index), target, encode_image(arrays[e], cc.image_format),
                                           cc.image_format, {
                    "class_name": self.names[target], "prompt": prompt, "seed": seeds[e], "token": res.token,
                    "mode": "edit", "source_key": f"{self.dataset.name}:{cc.split}:{s.ref}", "strength": cc.strength,
                    "model_id": cfg.model, "scheduler": cfg.scheduler, "steps": cc.edit_steps,
                    "guidance_scale": cc.edit_guidance, "guide_confidence": float(probs[e, target]),
                    "guide_pred": int(probs[e].argmax()), "attempts": 1, "status": "ok", "sample_index": index}))
        return {"class": c, "target": target, "token": res.token, "embedding": res.embedding,
                "init_accuracy": res.init_accuracy, "final_accuracy": res.final_accuracy, "seconds": res.seconds,
                "samples": samples, "shard": shard_index}


def make_worker(cfg_dict: dict[str, Any], names: list[str]) -> CasoWorker:
    return CasoWorker(cfg_dict, names)


@dataclass
class CasoSummary:
    out: Path
    done: int
    skipped: int
    failed: list[str]
    rows: list[dict[str, Any]]
    seconds: float


def run_caso(cfg: Config, force: bool = False, show_progress: bool = True) -> CasoSummary:
    from augment.models.backbone import resolve_backbone_path
    from augment.models.classifier import check_classes, load_classifier
    from augment.tokens.textual_inversion import save_token

    start = time.perf_counter()
    cc = cfg.caso
    dataset = load_dataset(cfg)
    names = dataset.class_names
    classes = select_classes(cfg.classes, len(names))
    if cc.split not in dataset.splits():
        raise AugmentError(f"caso learns from real images but {cfg.dataset} has no split {cc.split!r} "
                           f"(available: {dataset.splits() or 'none'}); pass --data-root")
    if cc.target is not None and not 0 <= int(cc.target) < len(names):
        raise AugmentError(f"caso.target {cc.target} is out of range; this dataset has classes 0-{len(names) - 1}")
    dataset.kshot(cc.k, cfg.seed, cc.split)  # k too large -> one clear error before any model loads
    resolve_backbone_path(cfg.model)
    check_classes(load_classifier(cfg.classifier), names)
    out = caso_dir(cfg.out)
    cfg_dict = cfg.to_dict()
    if stage_ran(out, "caso"):
        check_compatible(out, cfg_dict, COMPAT_KEYS, force, extra={"class_names": names})
    check_writable(out)
    write_run_json(out, cfg_dict, "caso", extra={"class_names": names})
    done = done_shards(out)
    units = [(c, i) for i, c in enumerate(classes) if force or i not in done]
    rows: list[dict[str, Any]] = []
    tokens_pq = out / "tokens" / "tokens.parquet"
    token_rows = {int(r["class_index"]): r for r in pq.read_table(tokens_pq).to_pylist()} if tokens_pq.exists() else {}
    failed: list[str] = []
    bar = tqdm(total=len(classes), initial=len(classes) - len(units), desc="caso", unit="class", disable=not show_progress)

    def on_result(unit, res) -> None:
        c = res["class"]
        suffix = "" if res["target"] == c else f"-to-{res['target']:04d}"
        path = out / "tokens" / f"{c:04d}-{slugify(names[c])}{suffix}.safetensors"
        sha = save_token(path, res["token"], res["embedding"])
        token_rows[c] = {"class_index": c, "class_name": names[c], "token": res["token"], "init_token": cc.init_token,
                         "token_file": path.name, "token_sha256": sha, "steps": cc.max_steps,
                         "final_accuracy": res["final_accuracy"], "seconds": res["seconds"], "status": "ok",
                         "lr": cc.lr, "model_id": cfg.model}
        write_parquet(out / "tokens" / "tokens.parquet", [token_rows[k] for k in sorted(token_rows)], TOKENS_SCHEMA)
        write_shard(out, res["shard"], res["samples"])
        write_info(out, f"{cfg.dataset}-caso")
        rows.append({k: res[k] for k in ("class", "target", "token", "init_accuracy", "final_accuracy", "seconds")})
        bar.update(1)
        bar.set_postfix(cls=c, acc=f"{res['init_accuracy']:.2f}->{res['final_accuracy']:.2f}")

    def on_error(unit, exc) -> None:
        if isinstance(exc, AugmentError):
            raise exc
        failed.append(f"class {unit[0]}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}")

    try:
        run_units(lambda: make_worker(cfg_dict, names), units, PoolSpec(cfg.workers, cfg.address, device=cfg.device),
                  on_result, on_error)
    finally:
        bar.close()
    return CasoSummary(out, len(units) - len(failed), len(classes) - len(units), failed, rows, time.perf_counter() - start)
