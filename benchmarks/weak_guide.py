"""The honest low-resource rows: a guide trained on the k-shot reals only, tokens trained with it,
Table 2 against real-only; next to the full-data guide (``embedded:digits-guide``).

A user with k images per class and no classifier runs ``augment guide --k K`` (the same k-shot
draw the downstream uses), then ``augment build --classifier <its value>``, then ``augment
benchmark --k K``. This script does exactly that on the embedded default for each K, and the same
build + grid with the full-data guide, through the real CLI, then writes one Markdown table
(``WORK/weak_guide.md``) with the guide's own test top-1, the judge's top-1 on the token images
(``augment eval``) and the grid's real-only / +token cells. Resumable: finished steps are skipped
(each command resumes on its own). Usage::

    python benchmarks/weak_guide.py --work /tmp/weak --k 3,9,15 --seeds 2 --per-class 50 --workers 2

Run it in the background with a log; on 2 shared CPU cores the default sizes take about 20-30 min.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from augment.io.rundir import RunDir

JUDGE = "embedded:digits-judge"
FULL = "embedded:digits-guide"


def augment(*args: str) -> float:
    """Run ``augment ARGS`` (this interpreter), stream its output, fail loudly; the seconds it took."""
    t0 = time.perf_counter()
    print(f"$ augment {' '.join(args)}  (load {os.getloadavg()[0]:.1f})", flush=True)
    r = subprocess.run([sys.executable, "-m", "augment", *args, "-q"], env=dict(os.environ, HF_HUB_OFFLINE="1"))
    if r.returncode != 0:
        sys.exit(f"augment {args[0]} exited {r.returncode}")
    seconds = time.perf_counter() - t0
    print(f"  ({seconds:.0f} s)", flush=True)
    return seconds


def _cells(run: Path) -> dict[tuple[str, int], str]:
    """(arm, k) -> 'mean±std' in % from a run's benchmark.json."""
    doc = json.loads(RunDir(run).benchmark_files()["json"].read_text())
    return {(row["arm"], row["k"]): f"{100 * row['mean']:.1f}±{100 * row['std']:.1f}"
            for row in doc["summary"] if row["mean"] is not None}


def _top1(run: Path, images: str, classifier: str) -> str:
    """Top-1 % of ``classifier`` on ``images`` (an arm, or ``real test``) from the run's eval.json."""
    doc = json.loads(RunDir(run).eval_json.read_text())
    row = next(r for r in doc["accuracy"] if r["images"] == images and r["classifier"] == classifier)
    return f"{100 * row['top1']:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--k", default="3,9,15", help="the full-data guide's grid")
    ap.add_argument("--guide-k", help="the k of the guides trained on k reals (default: --k)")
    ap.add_argument("--seeds", default="2")
    ap.add_argument("--per-class", default="50")
    ap.add_argument("--workers", default="2")
    a = ap.parse_args()
    ks = [int(k) for k in a.k.split(",")]
    guide_ks = [int(k) for k in a.guide_k.split(",")] if a.guide_k else ks
    a.work.mkdir(parents=True, exist_ok=True)
    common = ("--workers", a.workers)
    seconds: dict[str, float] = {}
    load_start = os.getloadavg()
    rows = []
    # None: the full-data guide, second, so that a run cut short still has both sides of the first k
    for k in [guide_ks[0], None, *guide_ks[1:]]:
        name = f"k{k}" if k is not None else "full"
        run = a.work / f"run-{name}"
        t0 = time.perf_counter()
        if k is not None:
            guide = a.work / f"guide-{name}"
            if not (guide / "metrics.json").is_file():
                augment("guide", "--k", str(k), "--threads", "1", "--out", str(guide))  # 1: shared cores
            spec = f"timm:test_resnet@{guide / 'best.safetensors'}"
        else:
            spec = FULL
        augment("build", "--classifier", spec, "--per-class", a.per_class, "--no-baseline", "--out", str(run), *common)
        if not RunDir(run).eval_json.is_file():
            augment("eval", str(run), "--eval-classifier", JUDGE, "--eval-classifier", spec)
        grid_k = str(k) if k is not None else a.k
        augment("benchmark", "--out", str(run), "--k", grid_k, "--seeds", a.seeds, "--arm", "real", "--arm", "token",
                "--no-build", *common)
        seconds[name] = time.perf_counter() - t0
        cells = _cells(run)
        guide_top1 = _top1(run, "real test", spec)  # the guide's checkpoint on the digits test split
        for kk in [k] if k is not None else ks:  # the full guide's row at every k of the grid
            rows.append((name, kk, guide_top1, _top1(run, "token", JUDGE), cells.get(("real only", kk), "–"),
                         next((v for (arm, c), v in cells.items() if c == kk and arm != "real only"), "–")))
    load_end = os.getloadavg()
    lines = [f"Command: `python benchmarks/weak_guide.py --work {a.work} --k {a.k} "
             + (f"--guide-k {a.guide_k} " if a.guide_k else "") + f"--seeds {a.seeds} "
             f"--per-class {a.per_class} --workers {a.workers}`; load average {load_start[0]:.1f} at the start, "
             f"{load_end[0]:.1f} at the end ({os.cpu_count()} CPUs); seconds per row: "
             + ", ".join(f"{n} {s:.0f}" for n, s in seconds.items()), "",
             "| guide trained on | k (grid) | guide test top-1 | judge top-1 on token images | real only | + token synthetic (p=0.5) |",
             "|---|---:|---:|---:|---:|---:|"]
    for name, k, g, j, real, token in sorted(rows, key=lambda r: (r[1], r[0] == "full")):
        who = f"the {k}-shot reals (`augment guide --k {k}`)" if name != "full" else "the full digits train split"
        lines.append(f"| {who} | {k} | {g} | {j} | {real} | {token} |")
    text = "\n".join(lines) + "\n"
    (a.work / "weak_guide.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
