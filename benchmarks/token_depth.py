"""Token training on the embedded default: gradient depth vs accuracy of generated images.

For each ``grad_steps`` setting, trains the 10 digit tokens (2 Ray CPU workers, as `augment tokens`
does), generates ``--per-class`` fresh-seed images per class with the token, and judges them with
the guidance classifier and the independent judge; the plain-prompt baseline uses the same seeds.
Prints one table, side by side, and writes it as JSON.

    python benchmarks/token_depth.py --depths 1,3,all --per-class 100 --json /tmp/token_depth.json

The figures quoted in docs/results.md come from this script.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depths", default="1,3,all", help="grad_steps settings, comma-separated")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--root", default="runs/bench-token-depth")
    ap.add_argument("--json", default=None)
    ap.add_argument("--lr", type=float, default=None, help="override the preset's token learning rate")
    ap.add_argument("--init", default=None, help="override the initialiser token (default: the class name)")
    args = ap.parse_args()

    from augment.config import resolve_config
    from augment.downstream.evaluate import run_eval
    from augment.generate.runner import run_generate
    from augment.io.rundir import RunDir
    from augment.models.labels import load_dataset
    from augment.tokens.runner import run_tokens

    base = resolve_config(dataset="digits")
    base.workers = args.workers
    base.generate.per_class = args.per_class
    root = Path(args.root)
    dataset = load_dataset(base)
    specs = [base.classifier, base.judge]
    rows = []
    baseline_dir = root / "baseline-run"
    for depth in args.depths.split(","):
        gs: int | str = "all" if depth == "all" else int(depth)
        tok = dataclasses.replace(base.tokens, grad_steps=gs)
        if args.lr:
            tok.lr = args.lr
        if args.init:
            tok.init_token = args.init
        cfg = dataclasses.replace(base, tokens=tok, out=str(root / f"gs-{depth}"))
        t0 = time.perf_counter()
        summary = run_tokens(cfg)
        train_s = time.perf_counter() - t0
        run_generate(cfg)
        shared = RunDir(baseline_dir).arm_dir("baseline")
        if not shared.has_manifests():
            run_generate(dataclasses.replace(cfg, out=str(baseline_dir)), baseline=True)
        # evaluate token arm and the shared baseline arm together (same seeds)
        target = RunDir(cfg.out).arm_dir("baseline").path
        if not target.exists():
            shutil.copytree(shared.path, target)
        result = run_eval(cfg.out, dataset, specs, progress=False)
        acc = {(r.images, r.classifier): r for r in result.accuracy}
        row = {"grad_steps": depth, "train_seconds": round(train_s, 1),
               "steps_mean": sum(r.steps for r in summary.rows) / max(1, len(summary.rows))}
        for arm, prefix in (("token", "tokens"), ("baseline", "baseline")):
            for spec, label in ((base.classifier, "guide"), (base.judge, "judge")):
                r = acc.get((arm, spec))
                row[f"{prefix}_{label}"] = None if r is None else round(100 * r.top1, 1)
        row["judge_gain"] = (None if row["tokens_judge"] is None or row["baseline_judge"] is None
                             else round(row["tokens_judge"] - row["baseline_judge"], 1))
        rows.append(row)
        print(json.dumps(row), flush=True)

    cols = ["grad_steps", "train_seconds", "steps_mean", "baseline_guide", "tokens_guide", "baseline_judge",
            "tokens_judge", "judge_gain"]
    print()
    print(" | ".join(f"{c:>14s}" for c in cols))
    for r in rows:
        print(" | ".join(f"{str(r[c]):>14s}" for c in cols))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
