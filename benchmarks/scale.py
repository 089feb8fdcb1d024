"""The generate driver and planner at scale, with a stub worker (no model): does the driver's cost
per shard stay flat as the run grows?

The stub returns tiny images at once (a 1x1 PNG per sample, a manifest row with a made-up guide
confidence), so what is timed is the driver: planning, writing each shard (tar + Parquet), the
arm's bookkeeping (:class:`augment.generate.book.ArmBook`: ``_info.json``, ``acceptance.json``,
the summary's figures) and, after the run, ``augment verify``::

    python benchmarks/scale.py run --classes 1000 --per-class 1000 --shard-size 100 --out /tmp/scale-100
    python benchmarks/scale.py table --out /tmp/scale --json scale.json   # both shard sizes, each in a child
    python benchmarks/scale.py run --quick --out /tmp/scale-q              # 40 x 10, shards of 1 (the suite's)

One ``run`` measures, in its own process: the plan (``plan_shards``), the driver's CPU time
(``time.process_time``) inside ``on_result`` for every shard (write + bookkeeping; the stub
worker's own time is not in it), the first and the last hundred shards' means and their ratio,
the peak resident memory of the process (``ru_maxrss``, imports included: the ``rss_base_mb``
before the run is printed next to it), manifest reads made by the driver during the run, and the
seconds of ``verify_run``. docs/scale.md holds a table made with it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from augment import stage
from augment.config import Config, GenerateConfig
from augment.distributed import ignoring_cache
from augment.generate.plan import ShardUnit, plan_shards, sample_prompt, sample_seed
from augment.generate.rejection import ClassAcceptance, RejectionStats
from augment.generate.runner import GenerateStage
from augment.generate.worker import ShardResult
from augment.io.manifest import ManifestRow
from augment.io.shards import SynthSample, sample_key

#: a valid 1x1 PNG (what a stub sample holds)
PNG_1x1 = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5d8c2c90000000049454e44ae426082")

#: the plans the table is made of: (classes, per class, shard size)
TABLE_PLANS = ((1000, 1000, 1000), (1000, 1000, 100))
QUICK = (40, 10, 1)


@dataclass
class StubWorker:
    """Returns a shard's samples at once: the same tiny PNG, a row per sample (confidence made up
    from the key, deterministic), and under ``min_confidence`` draws that accepted every image."""

    names: list[str]
    min_confidence: float = 0.0
    max_attempts: int = 1
    #: the templates of the plan's prompts (baseline: no token), which a resume checks the rows against
    prompts: list[str] = field(default_factory=lambda: list(GenerateConfig().prompts))

    def run(self, unit: ShardUnit) -> ShardResult:
        samples = [SynthSample(sample_key(c, i), c, PNG_1x1, "png", ManifestRow(
            class_name=self.names[c], seed=sample_seed(0, c, i), mode="txt2img", status="ok",
            prompt=sample_prompt(self.prompts, i, "", self.names[c]),
            guide_confidence=((c * 7919 + i * 104729) % 1000) / 1000, attempts=1)) for c, i in unit.entries]
        rejection = None
        if self.min_confidence > 0:
            per: dict[int, int] = {}
            for c, _ in unit.entries:
                per[c] = per.get(c, 0) + 1
            rejection = RejectionStats(self.min_confidence, self.max_attempts,
                                       tuple(ClassAcceptance(c, n, n, n) for c, n in per.items()))
        return ShardResult(samples, rejection)


class StubGenerateStage(GenerateStage):
    """The generate stage with no model: class names made up, the stub worker. The driver's code
    (plan, on_result, the book, finish, summary) is the stage's own; ``on_result`` is timed."""

    def __init__(self, cfg: Config, n_classes: int) -> None:
        super().__init__(cfg, baseline=True)
        self.n_classes = n_classes
        self.cpu: list[float] = []  # CPU seconds of on_result, per shard in the order they came

    def preflight(self) -> None:
        self.names = [f"class{c}" for c in range(self.n_classes)]
        self.classes = list(range(self.n_classes))
        self.fingerprint = "stub"

    def worker_factory(self) -> Any:
        g = self.cfg.generate
        return ignoring_cache(lambda: StubWorker(self.names, g.min_confidence, g.max_attempts))

    def on_result(self, unit: ShardUnit, result: ShardResult) -> str | None:
        t0 = time.process_time()
        try:
            return super().on_result(unit, result)
        finally:
            self.cpu.append(time.process_time() - t0)


def stub_config(out: Path, classes: int, per_class: int, shard_size: int, min_confidence: float = 0.0) -> Config:
    """A config the stub stage runs with: inline, CPU, PNG, the plan's sizes."""
    return Config(dataset="digits", model="stub", classifier="stub", judge=None, out=str(out), workers=0,
                  device="cpu", generate=GenerateConfig(per_class=per_class, shard_size=shard_size,
                                                        image_format="png", min_confidence=min_confidence,
                                                        max_attempts=2 if min_confidence > 0 else 5))


class ManifestReads:
    """Counts the driver's reads of manifests (``manifests/*.parquet``) through pyarrow's readers,
    while installed (a context manager): the figure the O(N) claim is about."""

    NAMES = ("read_table", "read_metadata", "read_schema", "ParquetFile")

    def __init__(self) -> None:
        self.count = 0
        self._saved: dict[str, Any] = {}

    def _wrap(self, fn: Any) -> Any:
        def counted(source: Any, *args: Any, **kwargs: Any) -> Any:
            if "manifests" in Path(str(source)).parts and str(source).endswith(".parquet"):
                self.count += 1
            return fn(source, *args, **kwargs)
        return counted

    def __enter__(self) -> ManifestReads:
        for name in self.NAMES:
            self._saved[name] = getattr(pq, name)
            setattr(pq, name, self._wrap(self._saved[name]))
        return self

    def __exit__(self, *exc: object) -> None:
        for name, fn in self._saved.items():
            setattr(pq, name, fn)


def run_one(out: Path, classes: int, per_class: int, shard_size: int, min_confidence: float = 0.0,
            do_verify: bool = True) -> dict[str, Any]:
    """One plan, generated into the fresh folder ``out``: the figures of the module doc."""
    from augment.verify import verify_run

    rss_base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    units = plan_shards(list(range(classes)), per_class, shard_size)
    plan_s = time.perf_counter() - t0
    del units
    st = StubGenerateStage(stub_config(out, classes, per_class, shard_size, min_confidence), classes)
    t0 = time.perf_counter()
    with ManifestReads() as reads:
        s = stage.run_stage(st, show_progress=False)
    gen_s = time.perf_counter() - t0
    if s.failed:
        raise SystemExit(f"stub generate failed: {s.failed[:3]}")
    cpu = st.cpu
    first, last = cpu[:100], cpu[-100:]
    row: dict[str, Any] = {
        "classes": classes, "per_class": per_class, "shard_size": shard_size, "images": s.samples,
        "shards": s.shards, "plan_s": round(plan_s, 3), "generate_s": round(gen_s, 2),
        "driver_cpu_ms_per_shard": round(1000 * statistics.fmean(cpu), 3),
        "first100_ms": round(1000 * statistics.fmean(first), 3), "last100_ms": round(1000 * statistics.fmean(last), 3),
        "last_over_first": round(statistics.fmean(last) / statistics.fmean(first), 3),
        # shards 101-200: past the first shards' warm-up (imports, caches), the fairer "early" figure
        "second100_ms": round(1000 * statistics.fmean(cpu[100:200] or first), 3),
        "manifest_reads": reads.count, "rss_base_mb": round(rss_base),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "mean_confidence": s.mean_confidence,
    }
    if do_verify:
        t0 = time.perf_counter()
        report = verify_run(s.out)  # the arm: the stub writes the baseline arm (no tokens needed)
        row["verify_s"] = round(time.perf_counter() - t0, 2)
        row["verify_ok"] = report.ok
        row["verify_problems"] = report.problems[:3]
    return row


def load_line() -> str:
    """The machine's load when the table was made (it is shared)."""
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__repr__()
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("run", "table"))
    ap.add_argument("--out", type=Path, required=True, help="a fresh folder (table: one subfolder per plan)")
    ap.add_argument("--classes", type=int, default=1000)
    ap.add_argument("--per-class", type=int, default=1000)
    ap.add_argument("--shard-size", type=int, default=100)
    ap.add_argument("--min-confidence", type=float, default=0.0, help="> 0: the stub reports draws (acceptance.json)")
    ap.add_argument("--quick", action="store_true", help=f"the plan {QUICK} (classes, per class, shard size)")
    ap.add_argument("--no-verify", action="store_true")
    ap.add_argument("--json", type=Path, help="table: write the rows here too")
    args = ap.parse_args(argv)
    if args.what == "run":
        classes, per_class, shard_size = QUICK if args.quick else (args.classes, args.per_class, args.shard_size)
        row = run_one(args.out, classes, per_class, shard_size, args.min_confidence, not args.no_verify)
        print(json.dumps(row), flush=True)
        return 0
    rows = []
    for classes, per_class, shard_size in TABLE_PLANS:
        cmd = [sys.executable, __file__, "run", "--out", str(args.out / f"shards-of-{shard_size}"),
               "--classes", str(classes), "--per-class", str(per_class), "--shard-size", str(shard_size)]
        print("+", " ".join(cmd), "  load", load_line(), flush=True)
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"load": load_line(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
