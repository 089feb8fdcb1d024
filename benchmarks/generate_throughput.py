"""Generation throughput: `augment generate` against a naive loop and against pure model compute.

Measures, in one process and one run, on the same prompts and image count:

1. ``generate (workers=N)``: the real code path, ``augment.generate.runner.run_generate`` into a
   fresh run folder, end to end (model loading, Ray start-up and actor loading for N > 0,
   guidance scoring, PNG encoding, shard + manifest writing). ``workers=0`` runs the worker inline,
   ``workers=2`` on two Ray CPU actors (or one actor per GPU).
2. ``naive loop``: what a user would write first: ``pipe(prompt)`` one image at a time
   (30 steps, guidance 7), each image saved with PIL into a folder.
3. ``pure compute``: the same batches as (1) through ``Diffusion.generate``, the very call the
   generate worker makes per batch (seeded latents, then ``pipe(..., output_type="pt")``), and
   nothing else: no scoring, encoding or writing. It is the
   ceiling the generate path can at best reach on one process, so ``generate / pure`` says how
   much the pipeline's own work (I/O, scoring, scheduling) costs.

The issue's targets: generate >= 5x the naive loop and >= 0.9x pure compute, in wall-clock
images/s. The pipeline shared by the naive loop and pure compute is loaded once and warmed up with
one untimed batch; the generate rows are cold (what a user waits for), except that torch,
diffusers, timm and transformers are imported once before any row. For each generate row the
script also reports its start-up (``setup s``: preflight, Ray and actor start, model loading,
until the last worker has its models; workers report the moment through a file) and the rate
after it (``steady img/s``). Peak RSS and CPU time are sampled every 0.2 s over the process tree
(this process plus every descendant: Ray's raylet, GCS and actors). CPU-seconds per image are much
less sensitive than wall time to other jobs sharing the cores. ``--repeat N`` runs every method N
times, interleaved, and keeps each one's fastest run.

Run (a few minutes on 2 idle CPU cores with these options)::

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/generate_throughput.py \\
        --per-class 20 --workers 0,2 --naive-images 40 --json bench.json

``--arm tokens`` trains throw-away tokens first (``--token-steps`` steps per class) and measures
the token arm; the default ``baseline`` arm needs no tokens and does the same compute (a token is
one embedding row, the sampler's cost does not change). ``--only generate --workers 0`` runs one
row, e.g. under ``py-spy record -o prof.svg -- python benchmarks/generate_throughput.py ...``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import torch  # noqa: E402

TARGET_VS_NAIVE = 5.0
TARGET_VS_PURE = 0.9
METHODS = ("generate", "naive", "pure")


# ------------------------------------------------------------------------------------------ memory


class TreeMonitor:
    """Samples this process and all its descendants (Ray's raylet, GCS, actors) on a thread.

    ``peak``: the largest summed RSS of the tree. RSS over-counts pages shared between processes
    (Ray's object store, copy-on-write libraries), so it is an upper bound of what the run needs,
    which is what sizing a machine needs. ``cpu_seconds``: user + system CPU time the tree spent
    during the block (a child that exits between two samples loses at most one interval). CPU time
    is much less sensitive than wall time to other jobs sharing the cores.
    """

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self.peak_children = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = psutil.Process()
        self._cpu_start: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}
        self._self_cpu = 0.0
        self.cpu_seconds = 0.0
        self.loadavg: tuple[float, float] = (0.0, 0.0)

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def _sample(self, first: bool = False) -> None:
        try:
            mine = self._me.memory_info().rss
        except psutil.Error:
            return
        children = 0
        for p in self._me.children(recursive=True):
            try:
                with p.oneshot():
                    children += p.memory_info().rss
                    cpu = self._cpu(p)
            except psutil.Error:  # a process that exited between listing and reading
                continue
            if first:
                self._cpu_start[p.pid] = cpu
            self._cpu_last[p.pid] = cpu
        self.peak = max(self.peak, mine + children)
        self.peak_children = max(self.peak_children, children)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> TreeMonitor:
        self.loadavg = (os.getloadavg()[0], 0.0)
        self._self_cpu = self._cpu(self._me)
        self._sample(first=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        children = sum(cpu - self._cpu_start.get(pid, 0.0) for pid, cpu in self._cpu_last.items())
        self.cpu_seconds = self._cpu(self._me) - self._self_cpu + children
        self.loadavg = (self.loadavg[0], os.getloadavg()[0])


# ------------------------------------------------------------------------------------------ rows


@dataclass
class Row:
    method: str
    images: int
    seconds: float
    peak_rss_mb: float
    peak_children_rss_mb: float
    cpu_seconds: float
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else math.nan

    @property
    def images_per_cpu_s(self) -> float:
        return self.images / self.cpu_seconds if self.cpu_seconds > 0 else math.nan


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(method: str, images: int, fn: Callable[[], dict[str, Any] | None], device: torch.device) -> Row:
    with TreeMonitor() as mem:
        _sync(device)
        t0 = time.perf_counter()
        notes = fn() or {}
        _sync(device)
        seconds = time.perf_counter() - t0
    row = Row(method, images, seconds, mem.peak / 2**20, mem.peak_children / 2**20, mem.cpu_seconds, notes)
    row.notes["loadavg_1min_start_end"] = [round(x, 2) for x in mem.loadavg]
    print(f"  {method}: {images} images in {seconds:.2f} s ({row.images_per_s:.2f} img/s), "
          f"{mem.cpu_seconds:.1f} CPU-s, peak RSS {row.peak_rss_mb:.0f} MB, "
          f"load average {mem.loadavg[0]:.1f} -> {mem.loadavg[1]:.1f}", flush=True)
    return row


# ------------------------------------------------------------------------------------------ setup


def build_config(args: argparse.Namespace, out: Path, workers: int):
    from augment.config import resolve_config

    overrides: dict[str, Any] = {
        "out": str(out),
        "workers": workers,
        "generate.per_class": args.per_class,
        "generate.shard_size": args.shard_size,
        "model": args.model,
        "classifier": args.classifier,
        "device": args.device,
        "classes": args.classes,
    }
    return resolve_config(dataset="digits", overrides=overrides)


def plan_batches(cfg, class_names: list[str], batch_size: int, baseline: bool) -> list[tuple[list[str], list[int]]]:
    """(prompts, seeds) per sampler call, exactly as GenerateWorker.run forms them (first attempt)."""
    from augment.datasets.selection import select_classes
    from augment.generate.plan import plan_shards, sample_seed
    from augment.prompts import render_prompt
    from augment.tokens.textual_inversion import token_string

    g = cfg.generate
    classes = select_classes(cfg.classes, len(class_names))
    batches = []
    for unit in plan_shards(classes, g.per_class, g.shard_size):
        entries = list(unit.entries)
        for a in range(0, len(entries), batch_size):
            chunk = entries[a : a + batch_size]
            prompts = [render_prompt(g.prompts[i % len(g.prompts)], "" if baseline else token_string(c),
                                     class_names[c]) for c, i in chunk]
            batches.append((prompts, [sample_seed(cfg.seed, c, i) for c, i in chunk]))
    return batches


def train_tokens(args: argparse.Namespace, work: Path) -> tuple[Path, float]:
    """Throw-away tokens (``--token-steps`` DisCo steps per class) for the token arm."""
    from augment.io.rundir import RunDir
    from augment.tokens.runner import run_tokens

    cfg = build_config(args, work / "tokens-run", 0)
    cfg.tokens.max_steps = args.token_steps
    t0 = time.perf_counter()
    summary = run_tokens(cfg, show_progress=False)
    if summary.failed:
        raise SystemExit(f"token training failed: {summary.failed[:3]}")
    return RunDir(work / "tokens-run").tokens, time.perf_counter() - t0


# ------------------------------------------------------------------------------------------ methods


def _timestamped_factory(make_worker: Callable[..., Any], events: str) -> Callable[..., Any]:
    """Wrap ``runner.make_worker`` so each worker appends "built <time>" to ``events`` once loaded.

    Defined here (``__main__``), so Ray pickles it by value and the actors run it too; the file
    is how they report back (the actors share this machine's disk).
    """

    def make(*a: Any, **k: Any) -> Any:
        worker = make_worker(*a, **k)
        with open(events, "a") as f:
            f.write(f"built {time.time()}\n")
        return worker

    return make


def run_generate_row(args: argparse.Namespace, work: Path, workers: int, tokens_dir: Path | None,
                     device: torch.device) -> Row:
    import augment.generate.runner as runner
    from augment.distributed import shutdown
    from augment.io.rundir import RunDir

    out = work / f"generate-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    if tokens_dir is not None:
        shutil.copytree(tokens_dir, RunDir(out).tokens)
    cfg = build_config(args, out, workers)
    n = len(cfg_classes(cfg)) * cfg.generate.per_class
    events = work / f"events-w{workers}.txt"
    events.unlink(missing_ok=True)
    original = runner.make_worker
    runner.make_worker = _timestamped_factory(original, str(events))
    start = end = 0.0

    def go() -> dict[str, Any]:
        nonlocal start, end
        start = time.time()
        s = runner.run_generate(cfg, baseline=tokens_dir is None, show_progress=False)
        end = time.time()
        if s.failed:
            raise SystemExit(f"generate failed: {s.failed[:3]}")
        if s.written != s.shards:
            raise SystemExit(f"generate wrote {s.written} of {s.shards} shards: the run folder was not fresh")
        return {"shards": s.shards, "mean_confidence": s.mean_confidence}

    try:
        row = timed(f"generate (workers={workers})", n, go, device)
    finally:
        runner.make_worker = original
        if workers > 0:
            shutdown()  # stop Ray so the next row starts from the same state
    built = [float(line.split()[1]) for line in events.read_text().splitlines()] if events.exists() else []
    if built:
        # setup: preflight, Ray start, actor start, model loading, until the last worker is ready;
        # steady: the images over the rest (sampling, scoring, encoding, writing)
        row.notes["setup_seconds"] = round(max(built) - start, 3)
        row.notes["steady_images_per_s"] = round(n / max(1e-9, end - max(built)), 3)
    arm = RunDir(out).arm_dir("baseline" if tokens_dir is None else "token")
    row.notes["tar_bytes"] = sum(p.stat().st_size for p in arm.shards.glob("*.tar"))
    return row


def cfg_classes(cfg) -> list[int]:
    from augment.datasets.selection import select_classes
    from augment.models.labels import load_dataset

    return select_classes(cfg.classes, len(load_dataset(cfg).class_names))


def run_naive_row(pipe, prompts: list[str], steps: int, guidance: float, folder: Path, device: torch.device) -> Row:
    folder.mkdir(parents=True, exist_ok=True)

    def go() -> None:
        for k, prompt in enumerate(prompts):
            image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance).images[0]
            image.save(folder / f"{k:06d}.png")

    return timed("naive loop (pipe(prompt), batch 1)", len(prompts), go, device)


def sample_batch(diffusion, cfg, prompts: list[str], seeds: list[int], resolution: int) -> torch.Tensor:
    """The sampler call of GenerateWorker.sample (``Diffusion.generate``), and nothing else."""
    g = cfg.generate
    return diffusion.generate(prompts, seeds, g.steps, g.guidance_scale, g.negative_prompt, resolution)


def run_pure_row(diffusion, cfg, batches, resolution: int, device: torch.device) -> Row:
    def go() -> None:
        for prompts, seeds in batches:
            sample_batch(diffusion, cfg, prompts, seeds, resolution)

    sizes = sorted({len(p) for p, _ in batches})
    row = timed("pure compute (sampler only)", sum(len(p) for p, _ in batches), go, device)
    row.notes["batches"] = len(batches)
    row.notes["batch_sizes"] = sizes
    return row


# ------------------------------------------------------------------------------------------ report


def _fmt(value: Any, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if isinstance(value, int | float) else "-".rjust(width)


def table(rows: list[Row]) -> str:
    naive = next((r for r in rows if r.method.startswith("naive")), None)
    pure = next((r for r in rows if r.method.startswith("pure")), None)
    head = (f"{'method':<36} {'images':>6} {'seconds':>8} {'images/s':>9} {'vs naive':>9} {'vs pure':>8} "
            f"{'peak RSS MB':>11} {'CPU-s':>7} {'img/CPU-s':>9} {'setup s':>8} {'steady img/s':>12}")
    lines = [head, "-" * len(head)]
    for r in rows:
        vs_naive = r.images_per_s / naive.images_per_s if naive else math.nan
        vs_pure = r.images_per_s / pure.images_per_s if pure else math.nan
        lines.append(f"{r.method:<36} {r.images:>6} {r.seconds:>8.2f} {r.images_per_s:>9.2f} "
                     f"{vs_naive:>8.2f}x {vs_pure:>7.2f}x {r.peak_rss_mb:>11.0f} {r.cpu_seconds:>7.1f} "
                     f"{r.images_per_cpu_s:>9.2f} {_fmt(r.notes.get('setup_seconds'), '.2f', 8)} "
                     f"{_fmt(r.notes.get('steady_images_per_s'), '.2f', 12)}")
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[dict[str, Any]]:
    naive = next((r for r in rows if r.method.startswith("naive")), None)
    pure = next((r for r in rows if r.method.startswith("pure")), None)
    out = []
    for r in rows:
        if not r.method.startswith("generate"):
            continue
        for ref, target, name in ((naive, TARGET_VS_NAIVE, "naive"), (pure, TARGET_VS_PURE, "pure compute")):
            if ref is None:
                continue
            ratio = r.images_per_s / ref.images_per_s
            out.append({"row": r.method, "target": f">= {target}x {name}", "ratio": round(ratio, 3),
                        "pass": ratio >= target,
                        # the same ratio in images per CPU-second: robust to other jobs on the cores
                        "ratio_per_cpu_s": round(r.images_per_cpu_s / ref.images_per_cpu_s, 3),
                        # and once every worker has loaded its models (start-up excluded)
                        "ratio_steady": round(r.notes["steady_images_per_s"] / ref.images_per_s, 3)
                        if "steady_images_per_s" in r.notes else None})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--per-class", type=int, default=20, help="images per class (default 20: a quick run)")
    p.add_argument("--workers", default="0,2", help="comma list of generate worker counts; 0 = inline (default 0,2)")
    p.add_argument("--arm", choices=("baseline", "tokens"), default="baseline",
                   help="baseline: plain prompts, no tokens needed (default); tokens: train throw-away tokens first")
    p.add_argument("--token-steps", type=int, default=2, help="DisCo steps per class for --arm tokens (default 2)")
    p.add_argument("--shard-size", type=int, default=None,
                   help="images per shard (default: the preset's, lowered so that there are at least as many "
                        "shards as the largest --workers, else extra actors would idle)")
    p.add_argument("--naive-images", type=int, default=None,
                   help="time the naive loop on the first N images only (default: all); images/s is a rate")
    p.add_argument("--repeat", type=int, default=1,
                   help="run every method N times, interleaved, and keep each one's fastest (default 1)")
    p.add_argument("--only", default=",".join(METHODS), help="comma list of methods to run: generate,naive,pure")
    p.add_argument("--model", default=None, help="backbone spec (default: the digits preset's, embedded:tiny-digits)")
    p.add_argument("--classifier", default=None, help="guidance classifier spec (default: the preset's)")
    p.add_argument("--classes", default=None, help="class selection, e.g. 0-4 (default: all)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda (default: the preset's, auto)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads in this process (inline generate, naive, pure); default: torch's own, "
                        "as `augment generate` leaves it. Ray actors set their own (cores / actors)")
    p.add_argument("--work-dir", default=None, help="where the throw-away run folders go (default: a temp dir)")
    p.add_argument("--keep", action="store_true", help="keep the run folders and naive images")
    p.add_argument("--json", default=None, help="write the results as JSON to this path")
    args = p.parse_args(argv)
    args.workers = [int(w) for w in str(args.workers).split(",") if w.strip()]
    args.only = {m.strip() for m in args.only.split(",") if m.strip()}
    unknown = args.only - set(METHODS)
    if unknown:
        p.error(f"--only: unknown method(s) {', '.join(sorted(unknown))}; use {', '.join(METHODS)}")
    return args


def _row_dict(r: Row) -> dict[str, Any]:
    return {"method": r.method, "images": r.images, "seconds": round(r.seconds, 3),
            "images_per_s": round(r.images_per_s, 3), "peak_rss_mb": round(r.peak_rss_mb, 1),
            "peak_children_rss_mb": round(r.peak_children_rss_mb, 1), "cpu_seconds": round(r.cpu_seconds, 2),
            "images_per_cpu_s": round(r.images_per_cpu_s, 3), **r.notes}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from augment.models.backbone import load_backbone, native_resolution
    from augment.models.device import default_batch_size, resolve_device
    from augment.models.diffusion import Diffusion
    from augment.models.labels import load_dataset
    from augment.tokens.textual_inversion import load_tokens

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="augment-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    probe = build_config(args, work / "probe", 0)
    names = load_dataset(probe).class_names
    n_images = len(cfg_classes(probe)) * args.per_class
    if args.shard_size is None:  # enough shards for every actor to get one
        want = max([1, *args.workers])
        args.shard_size = min(probe.generate.shard_size, math.ceil(n_images / want))
    cfg = build_config(args, work / "probe", 0)
    device = resolve_device(cfg.device)
    started = time.perf_counter()
    print(f"augment generate throughput: dataset {cfg.dataset}, model {cfg.model}, {n_images} images "
          f"({args.per_class}/class), arm {args.arm}, shard size {cfg.generate.shard_size}, "
          f"{cfg.generate.steps} steps, guidance {cfg.generate.guidance_scale}, device {device}, "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} CPUs", flush=True)

    # Imported once up front, so the first timed row does not pay for it (Ray actors still import
    # in their own processes: that is part of their start-up, reported as "setup s").
    t0 = time.perf_counter()
    import diffusers  # noqa: F401
    import timm  # noqa: F401
    import transformers  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401

    import_seconds = time.perf_counter() - t0
    tokens_dir, token_seconds = None, None
    if args.arm == "tokens":
        print(f"training throw-away tokens ({args.token_steps} steps/class) ...", flush=True)
        tokens_dir, token_seconds = train_tokens(args, work)
        print(f"  tokens in {token_seconds:.1f} s", flush=True)

    load_seconds = batch_size = pipe = None
    if args.only & {"naive", "pure"}:
        t0 = time.perf_counter()
        pipe = load_backbone(cfg.model, device, cfg.dtype, cfg.scheduler)
        if tokens_dir is not None:
            load_tokens(pipe, sorted(tokens_dir.glob("*.safetensors")))
        load_seconds = round(time.perf_counter() - t0, 3)
        diffusion = Diffusion(pipe)
        resolution = cfg.resolution or native_resolution(pipe)
        batch_size = cfg.generate.batch_size or default_batch_size(pipe.unet.device, resolution)
        batches = plan_batches(cfg, names, batch_size, baseline=tokens_dir is None)
        prompts = [p for ps, _ in batches for p in ps][: args.naive_images]
        print(f"pipeline loaded in {load_seconds:.2f} s; resolution {resolution}, batch size {batch_size}, "
              f"{len(batches)} sampler calls", flush=True)
        # warm-up, not timed: first-call kernel selection / allocations
        sample_batch(diffusion, cfg, batches[0][0], batches[0][1], resolution)

    # Repeats are interleaved (pure, generate..., naive, pure, ...) so that a slow spell of other
    # jobs on the machine hits every method alike; the table keeps each method's fastest run.
    runs: list[Row] = []
    for rep in range(args.repeat):
        tag = f" [{rep + 1}/{args.repeat}]" if args.repeat > 1 else ""
        if "pure" in args.only and pipe is not None:
            print(f"pure compute{tag} ...", flush=True)
            runs.append(run_pure_row(diffusion, cfg, batches, resolution, device))
        if "generate" in args.only:
            for w in args.workers:
                print(f"generate, workers={w}{tag} ...", flush=True)
                runs.append(run_generate_row(args, work, w, tokens_dir, device))
        if "naive" in args.only and pipe is not None:
            print(f"naive loop over {len(prompts)} images{tag} ...", flush=True)
            runs.append(run_naive_row(pipe, prompts, cfg.generate.steps, cfg.generate.guidance_scale,
                                      work / "naive", device))
    rows: list[Row] = []
    for method in dict.fromkeys(r.method for r in runs):
        rows.append(min((r for r in runs if r.method == method), key=lambda r: r.seconds))

    print()
    print(table(rows))
    checks = verdicts(rows)
    for v in checks:
        steady = f", steady state: {v['ratio_steady']:.2f}x" if v["ratio_steady"] is not None else ""
        print(f"{v['row']}: {v['ratio']:.2f}x, target {v['target']}: {'PASS' if v['pass'] else 'FAIL'} "
              f"(per CPU-second: {v['ratio_per_cpu_s']:.2f}x{steady})")
    self_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_max = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"ru_maxrss: this process {self_max:.0f} MB, largest waited-for child {child_max:.0f} MB; "
          f"total {time.perf_counter() - started:.0f} s")

    result = {
        "config": {"dataset": cfg.dataset, "model": cfg.model, "classifier": cfg.classifier, "arm": args.arm,
                   "images": n_images, "per_class": args.per_class, "classes": len(cfg_classes(cfg)),
                   "steps": cfg.generate.steps, "guidance_scale": cfg.generate.guidance_scale,
                   "shard_size": cfg.generate.shard_size, "batch_size": batch_size,
                   "image_format": cfg.generate.image_format, "workers": args.workers,
                   "token_steps": args.token_steps if args.arm == "tokens" else None, "repeat": args.repeat,
                   "naive_images": len(prompts) if pipe is not None else None},
        "environment": {"device": str(device), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                        "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "setup_seconds": {"imports": round(import_seconds, 3), "pipeline_load": load_seconds,
                          "token_training": token_seconds},
        "rows": [_row_dict(r) for r in rows],
        "all_runs": [_row_dict(r) for r in runs],
        "targets": checks,
        "ru_maxrss_mb": {"self": round(self_max, 1), "children": round(child_max, 1)},
    }
    if args.json:
        from augment.io.atomic import atomic_write_json

        atomic_write_json(args.json, result)
        print(f"results: {args.json}")
    if not args.keep and not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
