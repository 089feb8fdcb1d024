"""One worker pool per `augment build` against one pool per stage: wall time per stage, same bytes.

``augment build`` runs tokens, generate (token arm) and generate (baseline arm). With a pool per
stage (how each stage runs on its own, and how ``build`` ran before issue 11's pool work) every
stage starts its own Ray actors and loads the backbone and the classifier in each; with the shared
pool (:func:`augment.stage.open_pool`) the actors and their loaded models serve all three stages.
This script runs the three stages both ways, each run in a fresh Python process (so each pays its
own Ray start-up, once), on the embedded digits model, and prints per stage the wall seconds,
then the total and the model loads per actor, and whether every token file and shard of the two
ways is byte-identical. ``--repeat N`` interleaves the ways N times and keeps each way's fastest
run. Timings depend on what else runs on the machine: the script prints the load average before
and after.

Run (about 4 minutes on 2 CPU cores with these options)::

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/build_pool.py \\
        --classes 3,8 --per-class 4 --shard-size 2 --token-steps 3 --workers 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

STAGES = ("tokens", "generate", "baseline")


def one_run(args: argparse.Namespace) -> dict:
    """The three stages into ``args.out``, one way; per-stage seconds and the loads per worker host."""
    from augment.config import resolve_config
    from augment.generate.runner import run_generate
    from augment.stage import open_pool
    from augment.tokens.runner import run_tokens

    cfg = resolve_config(overrides={"dataset": "digits", "out": args.out, "classes": args.classes,
                                    "workers": args.workers, "tokens.max_steps": args.token_steps,
                                    "generate.per_class": args.per_class, "generate.shard_size": args.shard_size})
    shared = open_pool(cfg) if args.one == "shared" else None
    seconds: dict[str, float] = {}
    loads: list[int] = []
    stages = (lambda pool: run_tokens(cfg, show_progress=False, pool=pool),
              lambda pool: run_generate(cfg, show_progress=False, pool=pool),
              lambda pool: run_generate(cfg, baseline=True, show_progress=False, pool=pool))
    try:
        for name, stage in zip(STAGES, stages, strict=True):
            start = time.perf_counter()
            pool = shared or open_pool(cfg)  # apart: a pool per stage, as a stage run on its own
            try:
                assert not stage(pool).failed, f"{name} failed"
                if pool is not shared:
                    loads += pool.loads()
            finally:
                if pool is not shared:
                    pool.close()
            seconds[name] = time.perf_counter() - start
        if shared is not None:
            loads = shared.loads()
    finally:
        if shared is not None:
            shared.close()
    return {"seconds": seconds, "loads": loads}


def files(out: Path) -> dict[str, str]:
    """sha256 of every token file and shard of a run folder."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.suffix in (".safetensors", ".tar")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", default="3,8")
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=2)
    parser.add_argument("--token-steps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--one", choices=["apart", "shared"], help=argparse.SUPPRESS)  # a child run
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args)))
        return
    print(f"load average before: {os.getloadavg()}")
    best: dict[str, dict] = {}
    hashes: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="build-pool-") as tmp:
        for _ in range(args.repeat):
            for way in ("apart", "shared"):
                out = Path(tmp) / way
                child = [sys.executable, __file__, "--one", way, "--out", str(out), "--classes", args.classes,
                         "--per-class", str(args.per_class), "--shard-size", str(args.shard_size),
                         "--token-steps", str(args.token_steps), "--workers", str(args.workers)]
                start = time.perf_counter()
                done = subprocess.run(child, capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                result["process"] = time.perf_counter() - start
                if way not in best or result["process"] < best[way]["process"]:
                    best[way] = result
                hashes[way] = files(out)
                subprocess.run(["rm", "-rf", str(out)], check=True)
    print(f"load average after:  {os.getloadavg()}")
    print(f"{'way':<8}" + "".join(f"{s + ' s':>12}" for s in STAGES) + f"{'stages s':>12}{'process s':>12}  loads")
    for way, r in best.items():
        s = r["seconds"]
        print(f"{way:<8}" + "".join(f"{s[k]:>12.1f}" for k in STAGES) + f"{sum(s.values()):>12.1f}"
              f"{r['process']:>12.1f}  {r['loads']}")
    same = hashes["apart"] == hashes["shared"]
    print(f"token files and shards byte-identical: {same} ({len(hashes['apart'])} files)")


if __name__ == "__main__":
    main()
