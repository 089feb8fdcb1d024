"""The predicted peak-memory table of docs/memory.md: SD 1.5 and 2.1-base token steps at 512 px.

Every row is :func:`augment.models.memory.token_step` on the ``meta`` device (no GPU, no weights)
from the public configs in ``benchmarks/configs``, bfloat16 weights, a 200-class
``vit_base_patch16_224`` guide in float32, fused attention as on a GPU: batch 1 / 5, ``grad_steps``
1 / 5 / all, 10 and 30 sampler steps, ``tokens.checkpointing`` on and off. Plus one generation
batch per model at the CUDA default batch size. Predictions, not measurements.

Run (a few minutes on a CPU)::

    PYTHONPATH=. .venv/bin/python benchmarks/memory_table.py --out docs/memory-table.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from augment.models import memory

MODELS = {"sd15": "SD 1.5", "sd21-base": "SD 2.1-base"}


def rows(resolution: int = 512, batches=(1, 5), depths=(1, 5, "all"), steps=(10, 30)) -> list[dict]:
    out = []
    guide = memory.meta_classifier(memory.DEFAULT_CLASSIFIER, 200)
    for name in MODELS:
        models = memory.load_meta_models(memory.model_configs(name), torch.bfloat16)
        for batch in batches:
            for n in steps:
                for gs in depths:
                    for ckpt in (True, False):
                        t0 = time.perf_counter()
                        est = memory.token_step(models, guide, batch=batch, resolution=resolution, steps=n,
                                                grad_steps=gs, checkpointing=ckpt)
                        out.append({"model": name, "batch": batch, "steps": n, "grad_steps": str(gs),
                                    "checkpointing": ckpt, "weights_gb": est.weights / memory.GB,
                                    "activations_gb": est.activations / memory.GB, "peak_gb": est.peak / memory.GB})
                        print(f"{name} batch {batch} steps {n} grad_steps {gs} ckpt {ckpt}: {est.peak / memory.GB:.2f} GB "
                              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        gen = memory.generation_batch(models, batch=8, resolution=resolution)
        out.append({"model": name, "kind": "generation", "batch": 8, "peak_gb": gen.peak / memory.GB,
                    "weights_gb": gen.weights / memory.GB, "activations_gb": gen.activations / memory.GB})
    return out


def markdown(table: list[dict]) -> str:
    lines = ["| model | batch | sampler steps | grad_steps | checkpointing on | off |", "| --- | ---: | ---: | --- | ---: | ---: |"]
    tokens = [r for r in table if r.get("kind") != "generation"]
    for r in (r for r in tokens if r["checkpointing"]):
        off = next(o for o in tokens if not o["checkpointing"] and all(o[k] == r[k] for k in ("model", "batch", "steps", "grad_steps")))
        lines.append(f"| {MODELS[r['model']]} | {r['batch']} | {r['steps']} | {r['grad_steps']} | "
                     f"{r['peak_gb']:.1f} GB | {off['peak_gb']:.1f} GB |")
    gens = [r for r in table if r.get("kind") == "generation"]
    lines += ["", "| model | generation batch (no gradient) | peak |", "| --- | ---: | ---: |"]
    lines += [f"| {MODELS[r['model']]} | {r['batch']} | {r['peak_gb']:.1f} GB |" for r in gens]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the rows as JSON here")
    ap.add_argument("--resolution", type=int, default=512)
    args = ap.parse_args(argv)
    table = rows(args.resolution)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(table, f, indent=1)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
