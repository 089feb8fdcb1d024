"""The GPU check: one script a session with a GPU runs once, writing one JSON and one Markdown table.

No GPU has been lent to this project while its GPU code was written, so whoever gets one should not
have to assemble a benchmark: ``python benchmarks/gpu_check.py --out gpu-check/`` measures, in one
run under ~8 minutes on one data-centre GPU, what the README's GPU claims rest on, with Stable
Diffusion 2.1-base's full-size architecture and random weights (same shapes and kernels as the
trained model, built from the public configs in ``benchmarks/configs``, no download):

1. **token step** (``benchmarks/real_size.py``'s rows, each in its own child process): exactly one
   DisCo step, validation off, at ``--token-batch`` 5 and 512 px, with ``tokens.checkpointing`` on
   and off; seconds and the peak memory measured (``torch.cuda.max_memory_allocated``) beside the
   estimate of :mod:`augment.models.memory` (the ``augment plan`` figure) for the same settings;
2. **generation**: images/s of ``Diffusion.generate`` by batch size, plain, with channels_last and
   fused QKV (:func:`augment.models.speed.tune_pipeline`, the CUDA default) and with
   ``torch.compile`` on top (:func:`augment.models.speed.compiled_unet`; the first call per batch
   size, the compile, is timed apart); measured peak vs the estimate;
3. **downstream**: training images/s of the downstream classifier (ResNet-50 at 224 px): float32
   batches copied and computed in float32 (the old path) vs uint8 batches normalised on the device
   under bfloat16 autocast (:func:`augment.downstream.transforms.device_batch`, the current one);
   float32 peak vs the estimate;
4. **CUB end to end**: ``augment build --dataset cub`` through the CLI on 2 classes (a CUB-format
   folder written here), the backbone saved to a local folder, a random ViT-B/16 guide: exit code,
   seconds, shards and images.

Every section is timed and skipped (recorded as such) once ``--budget`` seconds have passed, so a
slow machine still writes its results. ``--quick`` runs the same code on shrunken models on the CPU
in a minute or two (``tests/test_benchmarks_gpu_check.py``); its figures mean nothing. See
docs/gpu_check.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GB = 1e9
#: two CUB-format classes (names as CUB spells its folders)
CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross"]


def real_size():
    """benchmarks/real_size.py as a module (registered while it executes: its dataclasses need it)."""
    name = "benchmarks_real_size"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "real_size.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """The sizes of a run: the real ones on a GPU, toy ones for ``--quick``."""
    if args.quick:
        base = dict(device="cpu", resolution=64, token_batch=2, token_steps=3, gen_batches=[2], compile_batches=[2],
                    gen_steps=2, compile_backend="eager", classifier="test_vit", train_arch="test_resnet",
                    train_size=64, train_batch=8, train_iters=2, per_class=2, max_steps=1, val_seeds=2, e2e_steps=2)
    else:
        base = dict(device="cuda", resolution=512, token_batch=5, token_steps=30, gen_batches=[1, 4, 8, 16],
                    compile_batches=[8], gen_steps=30, compile_backend="inductor", classifier="vit_base_patch16_224",
                    train_arch="resnet50", train_size=224, train_batch=64, train_iters=20, per_class=8, max_steps=5,
                    val_seeds=8, e2e_steps=None)
    for key in ("device", "token_batch", "gen_steps"):
        if getattr(args, key) is not None:
            base[key] = getattr(args, key)
    for key in ("gen_batches", "compile_batches"):
        if getattr(args, key) is not None:
            base[key] = [int(b) for b in getattr(args, key).split(",") if b.strip()]
    base.update(model=args.model, quick=args.quick)
    return base


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_start(device):
    """A real_size Meter started now (CUDA allocator peak, or the process's peak RSS on CPU)."""
    meter = real_size().Meter(device)
    meter.start()
    return meter


# ------------------------------------------------------------------------------------------ sections


def token_section(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """real_size.py's token rows (checkpointing on and off), each beside memory.py's estimate."""
    import torch

    from augment.models import memory

    rs = real_size()
    out = work / "real_size.json"
    cmd = [sys.executable, str(HERE / "real_size.py"), "--models", cfg["model"], "--device", cfg["device"],
           "--rows", "1,1:no-ckpt", "--token-batch", str(cfg["token_batch"]), "--gen-batches", "",
           "--out", str(out), "--row-timeout", "240"]
    cmd += ["--quick"] if cfg["quick"] else ["--steps", str(cfg["token_steps"]), "--resolution", str(cfg["resolution"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not out.exists():
        return {"status": f"failed: real_size.py exited {proc.returncode}: {proc.stderr.strip()[-400:]}", "rows": []}
    result = json.loads(out.read_text())
    attention = "cuda" if cfg["device"].startswith("cuda") else "cpu"
    rows = []
    for r in result["rows"]:
        models = memory.load_meta_models(rs.load_configs(r["model"], cfg["quick"]), getattr(torch, r["dtype"]))
        guide = memory.meta_classifier(result["config"]["classifier"], rs.NUM_CLASSES)
        est = memory.token_step(models, guide, batch=r["batch"], resolution=r["resolution"], steps=r["steps"],
                                grad_steps=int(r["grad_steps"]) if r["grad_steps"].isdigit() else r["grad_steps"],
                                checkpointing=r["variant"] == "ckpt", attention=attention)
        rows.append({
            "checkpointing": r["variant"] == "ckpt", "grad_steps": r["grad_steps"], "batch": r["batch"],
            "resolution": r["resolution"], "steps": r["steps"], "dtype": r["dtype"], "status": r["status"],
            "seconds": r.get("seconds"), "forward_s": r.get("forward_s"), "backward_s": r.get("backward_s"),
            "peak_gb": _gb(r.get("peak_mb"), 1e3), "added_gb": _gb(r.get("delta_mb"), 1e3),
            "estimate_peak_gb": est.peak / GB, "estimate_added_gb": est.activations / GB,
            "added_vs_estimate": _ratio(r.get("delta_mb"), est.activations / 1e6),
            "memory_method": r.get("memory_method"),
        })
    ok = proc.returncode == 0 and rows and all(r["status"] == "ok" for r in rows)
    return {"status": "ok" if ok else f"failed: real_size.py exited {proc.returncode}", "rows": rows,
            "real_size_info": result.get("models", {})}


def generation_section(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """Images/s by batch: plain, channels_last + fused QKV, and those with torch.compile."""
    import torch

    from augment.models import memory
    from augment.models.device import resolve_device, resolve_dtype
    from augment.models.diffusion import Diffusion
    from augment.models.speed import compiled_unet, tune_pipeline

    rs = real_size()
    device = resolve_device(cfg["device"])
    dtype = resolve_dtype("auto", device)
    pipe = rs.build_pipeline(cfg["model"], device, dtype, cfg["quick"], work)
    diffusion = Diffusion(pipe)
    models = memory.load_meta_models(rs.load_configs(cfg["model"], cfg["quick"]), dtype)
    res, steps = cfg["resolution"], cfg["gen_steps"]
    prompt = rs.PROMPTS[1].format(token="", name="species 000").replace("  ", " ")
    rows: list[dict[str, Any]] = []

    def run(bs: int, n_steps: int, diffusion: Diffusion = diffusion):
        t0 = time.perf_counter()
        images = diffusion.generate([prompt] * bs, list(range(bs)), n_steps, 7.0, None, res)
        _sync(device)
        return time.perf_counter() - t0, images

    variants = [("plain", False, False, cfg["gen_batches"]), ("channels_last+fused_qkv", True, False, cfg["gen_batches"]),
                ("channels_last+fused_qkv+compile", True, True, cfg["compile_batches"])]
    for name, tuned, compiled, batches in variants:
        if compiled and time.perf_counter() > cfg["deadline"] - 90:  # a compile takes a minute or more
            rows += [{"variant": name, "batch": bs, "status": "skipped: too close to --budget"} for bs in batches]
            continue
        tune_pipeline(pipe, channels_last=tuned, fuse_qkv=tuned, force=True)
        with compiled_unet(pipe, compiled, backend=cfg["compile_backend"]):
            run(1, 1) if not compiled else None  # kernels and allocator, untimed
            for bs in batches:
                try:
                    warm = run(bs, 1)[0] if compiled else None  # the compile for this shape, timed apart
                except Exception as e:  # noqa: BLE001 - a compiler failure is a result; the other rows stand
                    rows.append({"variant": name, "batch": bs, "status": f"failed: {type(e).__name__}: {str(e)[:200]}"})
                    continue
                meter = _peak_start(device)
                seconds, images = run(bs, steps)
                peak = meter.stop()
                ok = tuple(images.shape) == (bs, 3, res, res) and bool(torch.isfinite(images).all())
                del images
                est = memory.generation_batch(models, batch=bs, resolution=res,
                                              attention="cuda" if device.type == "cuda" else "cpu")
                rows.append({"variant": name, "batch": bs, "steps": steps, "seconds": seconds, "images_per_s": bs / seconds,
                             "compile_s": warm, "peak_gb": peak / GB, "added_gb": (peak - meter.base) / GB,
                             "estimate_peak_gb": est.peak / GB, "estimate_added_gb": est.activations / GB,
                             "added_vs_estimate": _ratio(peak - meter.base, est.activations),
                             "status": "ok" if ok else "failed: images not (N, 3, H, W) finite"})
                print(f"  generation {name} batch {bs}: {bs / seconds:.2f} img/s", flush=True)
    tune_pipeline(pipe, channels_last=False, fuse_qkv=False, force=True)
    plain = {r["batch"]: r["images_per_s"] for r in rows if r["variant"] == "plain"}
    for r in rows:
        r["speedup"] = _ratio(r.get("images_per_s"), plain.get(r["batch"]))
    del pipe, diffusion
    _free(device)
    return {"status": "ok" if rows and all(r["status"] == "ok" for r in rows) else "failed", "rows": rows,
            "dtype": str(dtype).removeprefix("torch.")}


def downstream_section(cfg: dict[str, Any]) -> dict[str, Any]:
    """Training images/s: float32 batches in float32 vs uint8 batches normalised on the device under autocast."""
    import timm
    import torch
    import torch.nn.functional as F

    from augment.downstream.train import mixed_precision
    from augment.downstream.transforms import Recipe, device_batch
    from augment.models import memory
    from augment.models.device import resolve_device

    device = resolve_device(cfg["device"])
    n, size, arch = cfg["train_batch"], cfg["train_size"], cfg["train_arch"]
    recipe = Recipe(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    g = torch.Generator().manual_seed(0)
    batch_u8 = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    batch_f32 = device_batch(batch_u8, recipe, torch.device("cpu"))  # what the CPU used to hand over
    labels = torch.randint(0, 200, (n,), generator=g)
    rows = []
    for name, batch, amp in (("float32 batch, float32", batch_f32, False), ("uint8 batch, on-device normalise, autocast", batch_u8, True)):
        torch.manual_seed(0)
        model = timm.create_model(arch, pretrained=False, num_classes=200).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def step(model=model, opt=opt, batch=batch, amp=amp) -> None:
            x = device_batch(batch, recipe, device)
            with mixed_precision(device) if amp else torch.autocast(device.type, enabled=False):
                loss = F.cross_entropy(model(x), labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()
        step()
        _sync(device)
        meter = _peak_start(device)
        t0 = time.perf_counter()
        for _ in range(cfg["train_iters"]):
            step()
        _sync(device)
        seconds = time.perf_counter() - t0
        peak = meter.stop()
        rows.append({"path": name, "batch": n, "input_size": size, "arch": arch, "images_per_s": n * cfg["train_iters"] / seconds,
                     "peak_gb": peak / GB, "transfer_mb": batch.numel() * batch.element_size() / 1e6, "status": "ok"})
        del model, opt
        _free(device)
    est = memory.downstream_batch(arch, batch=n, input_size=size, num_classes=200,
                                  attention="cuda" if device.type == "cuda" else "cpu")
    rows[0].update(estimate_peak_gb=est.peak / GB, peak_vs_estimate=_ratio(rows[0]["peak_gb"], est.peak / GB))
    rows[1]["speedup"] = _ratio(rows[1]["images_per_s"], rows[0]["images_per_s"])
    return {"status": "ok", "rows": rows}


def write_cub(root: Path) -> Path:
    """A CUB_200_2011 folder of the two classes, 3 train + 1 test image each (64 px noise JPEGs)."""
    import numpy as np
    from PIL import Image

    root = root / "CUB_200_2011"
    rng = np.random.default_rng(0)
    images, labels, split = [], [], []
    for c, cls in enumerate(CUB_CLASSES, 1):
        for j in range(4):
            rel = f"{cls}/{cls.split('.', 1)[1]}_{j:04d}_{c}.jpg"
            (root / "images" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(root / "images" / rel)
            i = len(images) + 1
            images.append(f"{i} {rel}")
            labels.append(f"{i} {c}")
            split.append(f"{i} {1 if j < 3 else 0}")
    (root / "classes.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (root / name).write_text("\n".join(lines) + "\n")
    return root


def e2e_section(cfg: dict[str, Any], work: Path) -> dict[str, Any]:
    """``augment build --dataset cub`` through the CLI on 2 classes, the backbone from a local folder."""
    import pyarrow.parquet as pq
    import timm
    import torch
    from safetensors.torch import save_model

    from augment.io.rundir import RunDir

    rs = real_size()
    t0 = time.perf_counter()
    folder = work / f"{cfg['model']}-random"
    pipe = rs.build_pipeline(cfg["model"], torch.device("cpu"), torch.float32, cfg["quick"], work)
    if not cfg["quick"]:
        pipe.to(dtype=torch.float16)  # half the bytes to write and read; loaded in the run's dtype
    pipe.save_pretrained(str(folder))
    del pipe
    cub = write_cub(work / "data")
    names = ["black footed albatross", "laysan albatross"]
    torch.manual_seed(0)
    guide = timm.create_model(cfg["classifier"], pretrained=False, num_classes=len(names))
    ckpt = work / "guide.safetensors"
    save_model(guide, str(ckpt))
    ckpt.with_suffix(".json").write_text(json.dumps({"arch": cfg["classifier"], "class_names": names}))
    prepared = time.perf_counter() - t0
    run = work / "run"
    cmd = [sys.executable, "-m", "augment", "build", "--dataset", "cub", "--data-root", str(cub), "--model", str(folder),
           "--classifier", f"timm:{cfg['classifier']}@{ckpt}", "--classes", "0,1", "--per-class", str(cfg["per_class"]),
           "--device", cfg["device"], "--workers", "0", "--out", str(run), "--baseline", "-q",
           "--set", f"tokens.max_steps={cfg['max_steps']}", "--set", f"tokens.val_seeds={cfg['val_seeds']}",
           "--set", f"tokens.val_every={cfg['max_steps']}"]
    if cfg["e2e_steps"]:
        cmd += ["--steps", str(cfg["e2e_steps"])]
    t1 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    seconds = time.perf_counter() - t1
    arms = {}
    folder = RunDir(run)
    for arm in ("token", "baseline"):
        where = folder.arm_dir(arm)
        manifests = sorted(where.manifests.glob("*.parquet")) if where.manifests.is_dir() else []
        arms[arm] = {"shards": len(list(where.shards.glob("*.tar"))) if where.shards.is_dir() else 0,
                     "images": sum(pq.read_metadata(m).num_rows for m in manifests)}
    token_dir = folder.arm_dir("token").tokens
    tokens = len(list(token_dir.glob("*.safetensors"))) if token_dir.is_dir() else 0
    want = 2 * cfg["per_class"]
    ok = proc.returncode == 0 and tokens == 2 and all(a["images"] == want for a in arms.values())
    status = "ok" if ok else (f"failed: exit {proc.returncode}, {tokens} tokens, images per arm "
                              f"{ {a: v['images'] for a, v in arms.items()} } (want {want})")
    return {"status": status, "exit_code": proc.returncode,
            "seconds": seconds, "prepare_s": prepared, "tokens": tokens, "arms": arms, "images_per_arm": want,
            "command": " ".join(cmd[1:]), "output_tail": (proc.stdout + proc.stderr).strip()[-2000:]}


# ------------------------------------------------------------------------------------------ report


def _gb(v: float | None, unit: float) -> float | None:
    return None if v is None else v / unit


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict[str, Any]], columns: list[tuple[str, str]]) -> list[str]:
    """A Markdown table of ``rows``: (key, header) per column."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return lines + ["| " + " | ".join(_cell(r.get(k)) for k, _ in columns) + " |" for r in rows]


def markdown(result: dict[str, Any]) -> str:
    """The report: the device, then one table per section."""
    env, s = result["environment"], result["sections"]
    lines = [f"# GPU check: {env.get('device_name')} ({result['config']['device']}, {'quick' if result['config']['quick'] else 'full'})",
             "", f"torch {env['versions'].get('torch')}, diffusers {env['versions'].get('diffusers')}, CUDA {env.get('cuda')}, "
             f"driver {env.get('driver')}; model {result['config']['model']} (random weights); "
             f"{result['seconds']:.0f} s in all; status {result['status']}.", ""]
    if not result["config"]["device"].startswith("cuda"):
        lines += ["On the CPU \"peak\" is the process's resident memory (libraries included): compare the "
                  "added memory with the estimate's (added/est.).", ""]
    sections = [
        ("token_step", "Token step (one DisCo step, validation off)",
         [("checkpointing", "checkpointing"), ("batch", "batch"), ("resolution", "px"), ("steps", "steps"),
          ("grad_steps", "grad_steps"), ("dtype", "dtype"), ("seconds", "s"), ("forward_s", "fwd s"), ("backward_s", "bwd s"),
          ("peak_gb", "peak GB"), ("estimate_peak_gb", "est. peak GB"), ("added_gb", "added GB"),
          ("estimate_added_gb", "est. added GB"), ("added_vs_estimate", "added/est."), ("status", "status")]),
        ("generation", "Generation (Diffusion.generate)",
         [("variant", "variant"), ("batch", "batch"), ("steps", "steps"), ("images_per_s", "img/s"), ("speedup", "vs plain"),
          ("compile_s", "compile s"), ("peak_gb", "peak GB"), ("estimate_peak_gb", "est. peak GB"),
          ("added_vs_estimate", "added/est."), ("status", "status")]),
        ("downstream", "Downstream training step",
         [("path", "path"), ("arch", "arch"), ("batch", "batch"), ("input_size", "px"), ("transfer_mb", "batch MB"),
          ("images_per_s", "img/s"), ("speedup", "speed-up"), ("peak_gb", "peak GB"), ("estimate_peak_gb", "est. peak GB"),
          ("status", "status")]),
    ]
    for key, title, columns in sections:
        sec = s.get(key, {})
        lines += [f"## {title}", "", f"status: {sec.get('status', 'not run')}", ""]
        if sec.get("rows"):
            lines += table(sec["rows"], columns) + [""]
    e2e = s.get("cub_e2e", {})
    lines += ["## CUB preset end to end (augment build, 2 classes)", "", f"status: {e2e.get('status', 'not run')}", ""]
    if "exit_code" in e2e:
        lines += table([{"exit": e2e["exit_code"], "seconds": e2e["seconds"], "tokens": e2e["tokens"],
                         "token images": e2e["arms"]["token"]["images"], "baseline images": e2e["arms"]["baseline"]["images"],
                         "shards": e2e["arms"]["token"]["shards"] + e2e["arms"]["baseline"]["shards"]}],
                       [(k, k) for k in ("exit", "seconds", "tokens", "token images", "baseline images", "shards")])
        lines += ["", f"`augment {e2e['command'].split(' augment ', 1)[-1]}`", ""]
    return "\n".join(lines) + "\n"


def environment(cfg: dict[str, Any]) -> dict[str, Any]:
    """Versions, and the GPU, driver and CUDA version when there is one."""
    import torch

    env = real_size().environment()
    env["device_name"] = platform.processor() or "cpu"
    if cfg["device"].startswith("cuda") and torch.cuda.is_available():
        from augment.models.device import resolve_device

        dev = resolve_device(cfg["device"])
        props = torch.cuda.get_device_properties(dev)
        env.update(device_name=props.name, memory_gb=props.total_memory / GB, cuda=torch.version.cuda,
                   capability=f"{props.major}.{props.minor}")
        try:
            env["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip().splitlines()[0]
        except (OSError, IndexError, subprocess.SubprocessError):
            env["driver"] = None
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_check.json and gpu_check.md")
    ap.add_argument("--quick", action="store_true", help="shrunken models on the CPU, a minute or two; figures mean nothing")
    ap.add_argument("--device", default=None, help="cuda[:N] (default) or cpu (--quick's default)")
    ap.add_argument("--model", default="sd21-base", choices=("sd21-base", "sd15"), help="architecture (random weights)")
    ap.add_argument("--token-batch", type=int, default=None, help="images per token step (default 5, the CUB preset's)")
    ap.add_argument("--gen-batches", default=None, help="generation batch sizes (default 1,4,8,16)")
    ap.add_argument("--compile-batches", default=None, help="batch sizes timed with torch.compile (default 8)")
    ap.add_argument("--gen-steps", type=int, default=None, help="sampler steps per generation batch (default 30)")
    ap.add_argument("--sections", default="token_step,cub_e2e,downstream,generation",
                    help="which sections, in order (generation last: its compile is the least certain part)")
    ap.add_argument("--budget", type=float, default=450.0, help="seconds after which the remaining sections are skipped")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = settings(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from augment.errors import AugmentError
    from augment.io.atomic import atomic_write_json, atomic_write_text
    from augment.io.jsonsafe import json_safe
    from augment.models.device import resolve_device

    try:
        resolve_device(cfg["device"])
    except AugmentError as e:
        print(f"error: {e} (run with --quick for the CPU smoke run)", file=sys.stderr)
        return 2
    start = time.perf_counter()
    cfg["deadline"] = start + args.budget
    result: dict[str, Any] = {"config": {k: v for k, v in cfg.items() if k != "deadline"}, "environment": environment(cfg), "sections": {}, "status": "running", "seconds": 0.0}
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        for name in wanted:
            if time.perf_counter() - start > args.budget:
                result["sections"][name] = {"status": f"skipped: past --budget {args.budget:.0f} s", "rows": []}
                continue
            print(f"gpu check: {name} ...", flush=True)
            t0 = time.perf_counter()
            try:
                if name == "token_step":
                    section = token_section(cfg, work)
                elif name == "generation":
                    section = generation_section(cfg, work)
                elif name == "downstream":
                    section = downstream_section(cfg)
                elif name == "cub_e2e":
                    section = e2e_section(cfg, work)
                else:
                    section = {"status": f"failed: unknown section {name!r}", "rows": []}
            except Exception as e:  # noqa: BLE001 - one section's failure is recorded; the others still run
                section = {"status": f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", "rows": []}
            section["section_s"] = time.perf_counter() - t0
            result["sections"][name] = section
            print(f"gpu check: {name} {section['status']} ({section['section_s']:.0f} s)", flush=True)
            result["seconds"] = time.perf_counter() - start
            atomic_write_json(out / "gpu_check.json", json_safe(result))
    ok = all(result["sections"].get(n, {}).get("status") == "ok" for n in wanted)
    result["status"] = "ok" if ok else "failed"
    result["seconds"] = time.perf_counter() - start
    atomic_write_json(out / "gpu_check.json", json_safe(result))
    atomic_write_text(out / "gpu_check.md", markdown(result))
    print(markdown(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
