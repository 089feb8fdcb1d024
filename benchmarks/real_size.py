"""Real-size figures: Stable Diffusion 1.5 / 2.1-base at 512 px through augment's own code path.

Nothing else in the repository runs at the size users run. This script builds the full Stable
Diffusion 1.5 and 2.1-base architectures from their public component configs (copied into
``benchmarks/configs/``) with random weights, so no download is needed and random weights cost
exactly what trained ones do (same shapes, same kernels), and measures, side by side in one run:

* **one DisCo token step** (``augment.tokens.disco.DiscoTrainer.train`` with ``max_steps=1`` and
  validation off, :class:`OneStepTrainer`: the sampler forward, VAE decode, classifier, loss,
  backward and optimiser step, nothing else; batch ``--token-batch``) at ``grad_steps`` 1 / 5 / all
  with ``tokens.checkpointing`` on (the default: each gradient step checkpointed, and inside it the
  UNet's and the VAE decoder's blocks) and off: seconds (split into forward and backward) and peak
  memory;
* **generation** images/s by batch size through ``Diffusion.generate`` (the generate worker's call).

Each row runs in a fresh child process (``--isolate row``) so that its peak memory is its own:
on CPU the peak RSS over the row (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` before
the row; a 10 ms RSS sampler where that is unavailable) minus the RSS before it; on CUDA
``torch.cuda.max_memory_allocated``. A watchdog kills a child whose RSS passes ``--max-rss-gb``.

A full-depth (``grad_steps: all``) step at 30 sampler steps takes most of an hour on a small CPU,
so ``all`` runs with ``--all-steps`` sampler steps (default 10) and a linear model fitted on the
measured rows extrapolates to ``--steps``: forward seconds = a + f * sampler steps, backward
seconds = c + b * gradient steps, memory = M0 + m * gradient steps (each gradient step keeps
only its checkpointed inputs; one step's activations are rebuilt at a time in the backward).

Run (hours on 2 shared CPU cores; the figures in docs/results.md)::

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/real_size.py --steps 30 --all-steps 10 \\
        --out real_size.json

``--device cuda`` runs the same rows on a GPU in the compute dtype augment resolves there
(bfloat16 where supported, else float16; ``--dtypes bfloat16,float16`` for both) under
autocast, with diffusers' SDPA attention processor, as ``augment.models.backbone.load_backbone``
sets up. ``--quick`` is a seconds-long smoke run of every row on shrunken architectures (64 px,
2-3 sampler steps), used by ``tests/test_benchmarks_real_size.py``; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
MODELS = ("sd15", "sd21-base")
#: how the token step keeps memory down; "ckpt" is augment's default (tokens.checkpointing: true)
VARIANTS = {
    "ckpt": "tokens.checkpointing: true (the default): per gradient step, inside the UNet's and the VAE decoder's blocks",
    "no-ckpt": "tokens.checkpointing: false (every gradient step and the decode keep their activations)",
}
DEFAULT_ROWS = "1,5,all,1:no-ckpt"
#: prompts, initialiser and class count of the CUB preset (pipelines/cub.yaml): the paper's setting
PROMPTS = ["A high-resolution realistic image of a {token} {name}", "A photo of {token} {name}"]
INIT_TOKEN = "bird"
WORDS = ["a", "bird", "photo", "of", "high", "resolution", "realistic", "image", "type"]
NUM_CLASSES = 200
#: glibc settings for the children under ``--malloc mmap``: every allocation of 64 KiB or more is its
#: own mapping, returned to the system when freed, so RSS follows the live tensors. With glibc's
#: defaults the mmap threshold grows to 32 MiB, activations then come from the heap, and memory a
#: gradient step freed stays resident (measured: ~0.6 GB more RSS per gradient step at 512 px).
MALLOC_MMAP_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
GB = 1e9  # decimal gigabytes, everywhere (10 GB target = 10e9 bytes, the stricter reading)
TARGET_GS1_GB = 10.0
TARGET_ALL_GB = 24.0


# ------------------------------------------------------------------------------------------ specs


@dataclasses.dataclass(frozen=True)
class TokenSpec:
    """One token-step row: how deep the gradient goes, how memory is saved, how many sampler steps."""

    grad_steps: int | str
    variant: str
    steps: int

    @property
    def label(self) -> str:
        return f"gs={self.grad_steps} {self.variant}"


def parse_token_rows(text: str, steps: int, all_steps: int) -> list[TokenSpec]:
    """``"1,5,all,1:no-ckpt@10"`` -> specs; ``@S`` overrides the sampler steps of one row.

    Without ``@S`` a row runs ``steps`` sampler steps, ``all`` rows ``all_steps``. ValueError names
    the bad item and the accepted forms.
    """
    specs = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        body, _, at = item.partition("@")
        depth, _, variant = body.partition(":")
        variant = variant or "ckpt"
        if variant not in VARIANTS:
            raise ValueError(f"row {item!r}: unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
        if depth == "all":
            gs: int | str = "all"
        elif depth.isdigit() and int(depth) > 0:
            gs = int(depth)
        else:
            raise ValueError(f"row {item!r}: grad_steps must be a positive integer or 'all' (e.g. 1,5,all,1:no-ckpt@10)")
        if at and not (at.isdigit() and int(at) > 0):
            raise ValueError(f"row {item!r}: '@{at}' must be a positive number of sampler steps")
        n = int(at) if at else (all_steps if gs == "all" else steps)
        specs.append(TokenSpec(gs, variant, n))
    if not specs:
        raise ValueError("no token rows given; pass e.g. --rows 1,5,all (or --rows '' with --no-tokens)")
    return specs


def depth(spec: TokenSpec) -> int:
    """The number of sampler steps the gradient flows through (what DiscoTrainer resolves)."""
    return spec.steps if spec.grad_steps == "all" else min(int(spec.grad_steps), spec.steps)


# ------------------------------------------------------------------------------------------ models


def load_configs(model: str, tiny: bool) -> dict[str, dict[str, Any]]:
    """The copied public configs of ``model``; ``tiny`` shrinks every width/depth for the smoke run."""
    folder = CONFIGS / model
    cfgs = {
        "unet": json.loads((folder / "unet" / "config.json").read_text()),
        "vae": json.loads((folder / "vae" / "config.json").read_text()),
        "text_encoder": json.loads((folder / "text_encoder" / "config.json").read_text()),
        "scheduler": json.loads((folder / "scheduler" / "scheduler_config.json").read_text()),
    }
    if tiny:  # same block types and layout, widths of a toy: the code path, not the figures
        unet, vae, te = cfgs["unet"], cfgs["vae"], cfgs["text_encoder"]
        heads = unet["attention_head_dim"]
        unet.update(block_out_channels=[32, 64, 64, 64], layers_per_block=1, cross_attention_dim=32, sample_size=8,
                    attention_head_dim=[2] * len(heads) if isinstance(heads, list) else 2)
        vae.update(block_out_channels=[32, 32, 32, 32], layers_per_block=1, sample_size=64)
        te.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, projection_dim=32)
    return cfgs


def build_tokenizer(folder: Path, vocab_size: int, max_length: int):
    """A CLIP tokenizer from the project's offline builder, padded to the text encoder's vocabulary.

    The builder writes the byte-level symbols plus merges for a few words; unused filler entries
    (never produced by the merges) bring it to ``vocab_size`` with the specials last, as CLIP's
    (49406 / 49407). The size matters: adding a class token resizes the embedding table to
    ``len(tokenizer) + 1``, which must be the real table's size for the memory to be the real one.
    """
    from transformers import CLIPTokenizer

    from augment.models.tokenizer import BOS, EOS, write_clip_tokenizer_files

    write_clip_tokenizer_files(folder, WORDS, max_length)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    body = [t for t in sorted(vocab, key=vocab.__getitem__) if t not in (BOS, EOS)]
    if len(body) + 2 > vocab_size:
        raise ValueError(f"the builder made {len(body) + 2} tokens, more than the model's {vocab_size}")
    body += [f"<|unused{i:05d}|>" for i in range(vocab_size - len(body) - 2)]
    table = {tok: i for i, tok in enumerate([*body, BOS, EOS])}
    (folder / "vocab.json").write_text(json.dumps(table, ensure_ascii=False), encoding="utf-8")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    if len(tokenizer) != vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, expected {vocab_size}")
    return tokenizer


def build_pipeline(model: str, device, dtype, tiny: bool, workdir: Path, cfgs: dict[str, dict[str, Any]] | None = None):
    """A ``StableDiffusionPipeline`` assembled in memory from the configs, prepared like ``load_backbone``.

    ``cfgs`` replaces ``model``'s copied configs (``tests/models/test_memory.py`` measures reduced ones).

    Random weights (seeded), the scheduler swapped for DDIM (``set_scheduler``, as augment always
    does), progress bars off, moved to ``device`` in the compute dtype, SDPA attention processors.
    """
    import diffusers
    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel

    from augment.models.backbone import set_scheduler

    cfgs = cfgs or load_configs(model, tiny)
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(cfgs["unet"])
    vae = AutoencoderKL.from_config(cfgs["vae"])
    te_cfg = {k: v for k, v in cfgs["text_encoder"].items() if k not in ("architectures", "model_type")}
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    scheduler = getattr(diffusers, cfgs["scheduler"]["_class_name"]).from_config(cfgs["scheduler"])
    tokenizer = build_tokenizer(workdir / f"tokenizer-{model}", te_cfg["vocab_size"], te_cfg["max_position_embeddings"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe = set_scheduler(pipe, "ddim")
    pipe.set_progress_bar_config(disable=True)
    if dtype == torch.float32:  # built in float32; casting again only makes diffusers warn
        pipe.to(device=device)
    else:
        pipe.to(device=device, dtype=dtype)
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    pipe.vae.set_attn_processor(AttnProcessor2_0())
    return pipe


def build_classifier(arch: str, workdir: Path, device):
    """A random-weight timm classifier with 200 outputs, loaded through ``load_classifier``.

    It is saved as a local checkpoint plus a sidecar with class names and loaded as
    ``timm:<arch>@<file>``, the spec a user passes, so the wrapper's differentiable resize, crop and
    normalisation to the model's native input size are the real ones.
    """
    import timm
    import torch
    from safetensors.torch import save_model

    from augment.models.classifier import load_classifier

    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, num_classes=NUM_CLASSES)
    ckpt = workdir / f"{arch}-random.safetensors"
    save_model(model, str(ckpt))
    ckpt.with_suffix(".json").write_text(json.dumps({"class_names": [f"species {i:03d}" for i in range(NUM_CLASSES)]}))
    del model
    return load_classifier(f"timm:{arch}@{ckpt}", device)


def params_m(module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def weight_bytes(module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ------------------------------------------------------------------------------------------ memory


def _status_kb(field: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else None


class Meter:
    """Peak memory of one block: CUDA's allocator peak, or this process's peak RSS on CPU.

    CPU: ``VmHWM`` (the kernel's peak RSS) reset by writing 5 to ``/proc/self/clear_refs`` at the
    start, so nothing before the block counts; where that is unavailable a thread samples RSS
    every 10 ms (a spike shorter than that can be missed). ``base`` is the memory in use at the
    start (weights, libraries); ``delta`` what the block added at its peak.
    """

    def __init__(self, device) -> None:
        self.cuda = device.type == "cuda"
        self.method = "cuda.max_memory_allocated" if self.cuda else "VmHWM (clear_refs)"
        self.base = 0
        self._peak_sampled = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def start(self) -> None:
        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return
        self.base = self._rss()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            if _status_kb("VmHWM") is None:
                raise OSError("no VmHWM")
        except OSError:
            self.method = "RSS sampled every 10 ms"
            self._peak_sampled = self.base
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._peak_sampled = max(self._peak_sampled, self._rss())

    def peak(self) -> int:
        """The peak so far (absolute bytes: base included)."""
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated()
        if self._thread is not None:
            return max(self._peak_sampled, self._rss())
        return (_status_kb("VmHWM") or 0) * 1024

    def stop(self) -> int:
        peak = self.peak()
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        return peak


# ------------------------------------------------------------------------------------------ child


def _load() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def one_step_trainer(pipe, classifier, cfg, resolution: int, on_step_start: Callable[[], None]):
    """A ``DiscoTrainer`` whose validation is off and that reports the start of its one step.

    Since validated selection, ``train`` scores ``val_seeds`` (32) images at the generation's 30
    steps before the first step and after the last: ~150 UNet calls and 65 decodes around a step of
    31 calls and one decode, which a row would time instead of the step. Here a validation returns
    one row of zero logits at once (accuracy never above ``acc_threshold``, so the step runs), and
    ``on_step_start`` fires as the step's gradient forward begins, after the token is added.
    """
    import torch

    from augment.tokens.disco import DiscoTrainer

    class OneStepTrainer(DiscoTrainer):
        def _validation_logits(self, class_index, token, name, negative):  # validation off
            return torch.zeros(1, NUM_CLASSES, device=self.device)

        def _forward(self, prompts, seeds, grad, *args, **kwargs):
            if grad:
                on_step_start()
            return super()._forward(prompts, seeds, grad, *args, **kwargs)

    return OneStepTrainer(pipe, classifier, cfg, run_seed=0, resolution=resolution)


def run_token_row(pipe, classifier, spec: TokenSpec, job: dict[str, Any], class_index: int, device) -> dict[str, Any]:
    """Exactly one DisCo optimisation step (:func:`one_step_trainer`), timed and measured.

    The meter starts and the clock runs from the step's gradient forward to the end of ``train``
    (backward, clipping, update); adding the token and the (switched-off) validation are outside.
    ``acc_threshold=1.0`` keeps the trainer from stopping before the step (it stops when accuracy
    is strictly above it). The trainer's progress callback fires after the forward and loss, before
    the backward: it splits the time and reads the forward's peak.
    """
    import torch

    from augment.config import TokenConfig

    cfg = dataclasses.replace(TokenConfig(), init_token=INIT_TOKEN, prompts=list(PROMPTS), batch_size=job["token_batch"],
                              grad_steps=spec.grad_steps, max_steps=1, acc_threshold=1.0, steps=spec.steps,
                              guidance_scale=7.0, checkpointing=spec.variant == "ckpt")
    meter = Meter(device)
    marks: dict[str, float] = {}

    def step_start() -> None:
        marks["load_start"] = _load()
        meter.start()
        marks["start"] = time.perf_counter()

    def progress(step: int, loss: float, acc: float) -> None:
        marks["forward_end"], marks["forward_peak"], marks["loss"] = time.perf_counter(), meter.peak(), loss

    trainer = one_step_trainer(pipe, classifier, cfg, job["resolution"], step_start)
    result = trainer.train(class_index, f"species {class_index:03d}", progress)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    peak = meter.stop() if "start" in marks else 0
    t0 = marks.get("start", t1)
    ok = result.status == "ok" and result.steps == 1 and "forward_end" in marks
    return {
        "kind": "token", "grad_steps": str(spec.grad_steps), "variant": spec.variant, "steps": spec.steps,
        "k": depth(spec), "batch": job["token_batch"], "seconds": t1 - t0,
        "forward_s": marks.get("forward_end", t1) - t0, "backward_s": t1 - marks.get("forward_end", t1),
        "base_mb": meter.base / 1e6, "peak_mb": peak / 1e6, "delta_mb": (peak - meter.base) / 1e6,
        "forward_peak_mb": marks.get("forward_peak", peak) / 1e6, "loss": marks.get("loss", float("nan")),
        "memory_method": meter.method, "load_start": marks.get("load_start", _load()), "load_end": _load(),
        "status": "ok" if ok else f"failed: {result.error or f'{result.steps} steps'}",
    }


def run_generate_rows(pipe, job: dict[str, Any], device) -> list[dict[str, Any]]:
    """Images/s of ``Diffusion.generate`` per batch size, after one untimed one-step warm-up.

    Each batch's VAE decode is timed on its own as well, so the sampler's seconds per step can be
    separated out and the figure extrapolated to the usual 30 steps.
    """
    import torch

    from augment.models.diffusion import Diffusion

    diffusion = Diffusion(pipe)
    res, steps = job["resolution"], job["gen_steps"]
    prompts = [p.format(token="", name="species 000").replace("  ", " ") for p in PROMPTS]
    diffusion.generate(prompts[:1], [0], 1, 7.0, None, res)  # warm-up: kernels, allocator
    rows = []
    for bs in job["gen_batches"]:
        meter = Meter(device)
        load0 = _load()
        meter.start()
        t0 = time.perf_counter()
        images = diffusion.generate([prompts[i % len(prompts)] for i in range(bs)], list(range(bs)), steps, 7.0, None, res)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = meter.stop()
        ok = tuple(images.shape) == (bs, 3, res, res) and bool(torch.isfinite(images).all())
        del images
        latents = diffusion.initial_latents(list(range(bs)), res)
        with torch.no_grad():
            t0 = time.perf_counter()
            diffusion.decode(latents)
            if device.type == "cuda":
                torch.cuda.synchronize()
            decode_s = time.perf_counter() - t0
        step_s = max(seconds - decode_s, 0.0) / steps
        rows.append({
            "kind": "generate", "batch": bs, "steps": steps, "seconds": seconds, "images_per_s": bs / seconds,
            "s_per_image": seconds / bs, "decode_s": decode_s, "sampler_step_s": step_s,
            "s_per_image_at_target": (job["target_steps"] * step_s + decode_s) / bs,
            "base_mb": meter.base / 1e6, "peak_mb": peak / 1e6, "delta_mb": (peak - meter.base) / 1e6,
            "memory_method": meter.method, "load_start": load0, "load_end": _load(),
            "status": "ok" if ok else "failed: images not (N, 3, H, W) finite",
        })
        print(f"  [{job['model']}] generate batch {bs}: {seconds:.1f} s, {bs / seconds:.3f} img/s, "
              f"peak {peak / GB:.2f} GB", flush=True)
    return rows


def child_main(job_path: str, out_path: str) -> int:
    """Run the jobs of one child process in order, writing the results after every row.

    Each job builds its model, runs its rows and frees the model. The results file is rewritten
    atomically after each row, so a child killed by the watchdog keeps the rows it finished.
    """
    import torch

    from augment.io.atomic import atomic_write_json
    from augment.io.jsonsafe import json_safe
    from augment.models.device import resolve_device, resolve_dtype

    jobs = json.loads(Path(job_path).read_text())
    if jobs and jobs[0].get("threads"):
        torch.set_num_threads(jobs[0]["threads"])
    outs: list[dict[str, Any]] = []
    for job in jobs:
        device = resolve_device(job["device"])
        dtype = resolve_dtype(job["dtype"], device)
        out: dict[str, Any] = {"rows": [], "info": {}}
        outs.append(out)
        with tempfile.TemporaryDirectory(prefix="real-size-") as tmp:
            t0 = time.perf_counter()
            pipe = build_pipeline(job["model"], device, dtype, job["tiny"], Path(tmp))
            classifier = build_classifier(job["classifier"], Path(tmp), device)
            proc = next(iter(pipe.unet.attn_processors.values()))
            out["info"] = {
                "build_s": time.perf_counter() - t0, "dtype": str(dtype).removeprefix("torch."),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                "params_m": {"unet": params_m(pipe.unet), "vae": params_m(pipe.vae),
                             "text_encoder": params_m(pipe.text_encoder), "classifier": params_m(classifier)},
                "weights_mb": {"unet": weight_bytes(pipe.unet) / 1e6, "vae": weight_bytes(pipe.vae) / 1e6,
                               "text_encoder": weight_bytes(pipe.text_encoder) / 1e6,
                               "classifier (float32)": params_m(classifier) * 4},
                "attention": type(proc).__name__, "tokenizer_size": len(pipe.tokenizer),
                "classifier_input": list(classifier.data.input_size), "torch_threads": torch.get_num_threads(),
            }
            atomic_write_json(out_path, json_safe(outs))
            for i, spec_dict in enumerate(job["tokens"]):
                spec = TokenSpec(**spec_dict)
                print(f"  [{job['model']}] token {spec.label} steps={spec.steps} ...", flush=True)
                row = run_token_row(pipe, classifier, spec, job, job["class_offset"] + i, device)
                out["rows"].append(row)
                atomic_write_json(out_path, json_safe(outs))
                print(f"  [{job['model']}] token {spec.label} steps={spec.steps}: {row['seconds']:.1f} s "
                      f"(forward {row['forward_s']:.1f}, backward {row['backward_s']:.1f}), peak {row['peak_mb'] / 1e3:.2f} GB, "
                      f"delta {row['delta_mb'] / 1e3:.2f} GB, {row['status']}", flush=True)
            if job["gen_batches"]:
                out["rows"].extend(run_generate_rows(pipe, job, device))
                atomic_write_json(out_path, json_safe(outs))
        del pipe, classifier
        gc.collect()
    return 0


# ------------------------------------------------------------------------------------------ parent


def expected_rows(job: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a job will produce, as stubs (what is recorded for rows a dead child never finished)."""
    rows = [{"kind": "token", **t, "k": depth(TokenSpec(**t)), "batch": job["token_batch"]} for t in job["tokens"]]
    return rows + [{"kind": "generate", "batch": b, "steps": job["gen_steps"]} for b in job["gen_batches"]]


def run_child(jobs: list[dict[str, Any]], workdir: Path, max_rss: float, timeout: float | None,
              min_available: float = 0.0, env: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Run ``jobs`` in one fresh interpreter, watching its RSS; one result per job (partial if it died).

    The watchdog kills the child when its RSS passes ``max_rss``, when the machine's available
    memory falls below ``min_available`` (on a machine shared with other jobs a child well under
    ``max_rss`` can still exhaust it, and the kernel's OOM killer then picks its victim among
    everyone's processes), or when it runs past ``timeout`` seconds. The row is then reported as
    killed, with the reason, and the next child starts.
    """
    import psutil

    name = f"child-{len(list(workdir.glob('child-*.jobs.json'))):03d}"
    job_path, out_path = workdir / f"{name}.jobs.json", workdir / f"{name}.out.json"
    job_path.write_text(json.dumps(jobs))
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--child", str(job_path), str(out_path)],
                            env={**os.environ, **(env or {})})
    reason, peak, start = None, 0, time.monotonic()
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss + sum(c.memory_info().rss for c in ps.children(recursive=True))
        except psutil.Error:
            rss = 0
        peak = max(peak, rss)
        available = psutil.virtual_memory().available
        if rss > max_rss:
            reason = f"killed: RSS {rss / GB:.1f} GB over --max-rss-gb {max_rss / GB:g}"
        elif available < min_available:
            reason = (f"killed: machine's available memory {available / GB:.1f} GB under --min-available-gb "
                      f"{min_available / GB:g} (child RSS {rss / GB:.1f} GB)")
        elif timeout and time.monotonic() - start > timeout:
            reason = f"killed: over --row-timeout {timeout:.0f} s"
        if reason:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.5)
    if proc.returncode != 0 and reason is None:
        reason = f"failed: child exited with {proc.returncode}"
    outs = json.loads(out_path.read_text()) if out_path.exists() else []
    results = []
    for i, job in enumerate(jobs):
        result = outs[i] if i < len(outs) else {"rows": [], "info": {}}
        for row in expected_rows(job)[len(result["rows"]):]:  # rows the child never finished
            row["status"] = reason or "failed: no result"
            result["rows"].append(row)
        for row in result["rows"]:
            row.update(model=job["model"], device=job["device"], dtype=result["info"].get("dtype", job["dtype"]),
                       dtype_spec=job["dtype"], resolution=job["resolution"],
                       grad_steps=str(row["grad_steps"]) if "grad_steps" in row else None)
        result["child_peak_rss_mb"] = peak / 1e6
        results.append(result)
    return results


def fit(xs: list[float], ys: list[float]) -> tuple[float, float] | None:
    """Least-squares ``y = a + b x``; None when the x's do not vary (the slope is not determined)."""
    if len(set(xs)) < 2:
        return None
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b


def memory_time_model(rows: list[dict[str, Any]], info: dict[str, Any], target: int) -> dict[str, Any] | None:
    """Fit the linear model on one model's default-variant token rows and predict at ``target`` steps.

    forward_s = a + f * steps (the no-gradient and checkpointed forward of each sampler step, plus
    decode and classifier); backward_s = c + b * k (each gradient step is recomputed and
    back-propagated once); delta = M0 + m * k. Needs two distinct step counts for f and two
    distinct k for b and m; otherwise the row-wise estimate (forward / steps) is used and marked.
    """
    ok = [r for r in rows if r["kind"] == "token" and r["variant"] == "ckpt" and r["status"] == "ok"]
    if not ok:
        return None
    fwd = fit([r["steps"] for r in ok], [r["forward_s"] for r in ok])
    bwd = fit([r["k"] for r in ok], [r["backward_s"] for r in ok])
    mem = fit([r["k"] for r in ok], [r["delta_mb"] for r in ok])
    first = min(ok, key=lambda r: r["k"])
    a, f = fwd if fwd else (0.0, first["forward_s"] / first["steps"])
    c, b = bwd if bwd else (first["backward_s"], 0.0)
    m0, m = mem if mem else (first["delta_mb"], 0.0)
    base = sum(r["base_mb"] for r in ok) / len(ok)
    w = info.get("weights_mb", {})
    p = info.get("params_m", {})
    diffusion_params_m = sum(v for k, v in p.items() if k != "classifier")
    gpu_weights = diffusion_params_m * 2 + p.get("classifier", 0.0) * 4  # bf16 backbone, float32 classifier
    model: dict[str, Any] = {
        "forward_a_s": a, "sampler_step_s": f, "backward_c_s": c, "grad_step_backward_s": b,
        "delta_m0_mb": m0, "delta_per_grad_step_mb": m, "base_mb": base, "weights_mb": sum(w.values()),
        "fitted": {"forward": fwd is not None, "backward": bwd is not None, "memory": mem is not None},
        "target_steps": target, "predicted": {},
    }
    for label, k in (("1", 1), ("5", min(5, target)), ("all", target)):
        delta = m0 + m * k
        model["predicted"][label] = {
            "k": k, "seconds": a + f * target + c + b * k, "delta_mb": delta, "peak_mb": base + delta,
            # bf16 weights plus activations between half (all in bf16) and all (fp32 norms) of fp32's
            "gpu_bf16_peak_mb_low": gpu_weights + delta / 2, "gpu_bf16_peak_mb_high": gpu_weights + delta,
        }
    for r in rows:
        if r["kind"] == "token" and r["status"] == "ok":
            r["seconds_at_target"] = r["seconds"] + (target - r["steps"]) * f
    return model


def targets(model_fit: dict[str, Any] | None, rows: list[dict[str, Any]], device: str) -> list[dict[str, Any]]:
    """The issue's two memory targets, on the measured rows and on the model's prediction."""
    if model_fit is None:
        return []
    pred, out = model_fit["predicted"], []
    ok = [r for r in rows if r["kind"] == "token" and r["variant"] == "ckpt" and r["status"] == "ok"]
    for label, limit in (("1", TARGET_GS1_GB), ("all", TARGET_ALL_GB)):
        measured = [r for r in ok if r["grad_steps"] == label]
        entry = {"grad_steps": label, "limit_gb": limit, "device": device,
                 "model_peak_gb_at_target": pred[label]["peak_mb"] / 1e3,
                 "model_pass": pred[label]["peak_mb"] / 1e3 <= limit}
        if measured:
            r = measured[0]
            entry.update(measured_peak_gb=r["peak_mb"] / 1e3, measured_steps=r["steps"], measured_pass=r["peak_mb"] / 1e3 <= limit)
        if device == "cpu":
            entry.update(gpu_bf16_predicted_gb=[pred[label]["gpu_bf16_peak_mb_low"] / 1e3, pred[label]["gpu_bf16_peak_mb_high"] / 1e3],
                         gpu_bf16_predicted_pass=pred[label]["gpu_bf16_peak_mb_high"] / 1e3 <= limit)
        out.append(entry)
    return out


def refit(result: dict[str, Any]) -> None:
    """(Re)compute every model's memory/time model and target checks from the rows present."""
    for key, entry in result["models"].items():
        mine = [r for r in result["rows"] if f"{r['model']}/{r['dtype_spec']}" == key]
        entry["fit"] = memory_time_model(mine, entry["info"], result["config"]["steps"])
        entry["targets"] = targets(entry["fit"], mine, result["config"]["device_type"])


def merge_results(paths: list[str]) -> dict[str, Any]:
    """Several saved runs (e.g. one per model, on the same machine) as one result, model fits redone.

    The first file's config and environment head the result; each file's own config, environment
    and load averages are kept under ``runs``. Runs must share the target steps, device type and
    allocator setting (``--malloc``).
    """
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    head = loaded[0]
    for p, r in zip(paths, loaded, strict=True):
        for key in ("steps", "device_type", "malloc"):
            mine, theirs = r["config"].get(key, "default"), head["config"].get(key, "default")
            if mine != theirs:
                raise ValueError(f"{p}: {key} {mine!r} differs from {paths[0]}'s {theirs!r}")
    result = {"config": head["config"], "environment": dict(head["environment"]), "models": {}, "rows": [],
              "runs": [{"file": p, "config": r["config"], "environment": r["environment"]} for p, r in zip(paths, loaded, strict=True)]}
    result["environment"]["load_start"] = min(r["environment"]["load_start"] for r in loaded)
    result["environment"]["load_end"] = max(r["environment"].get("load_end", float("nan")) for r in loaded)
    for r in loaded:
        result["rows"].extend(r["rows"])
        for key, entry in r["models"].items():
            result["models"].setdefault(key, {"info": entry["info"]})
    refit(result)
    return result


def _f(x: Any, spec: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def print_tables(result: dict[str, Any], emit: Callable[[str], None] = print) -> None:
    """The token-step table, the generation table, the fitted model and the targets."""
    rows, target = result["rows"], result["config"]["steps"]
    tok = [r for r in rows if r["kind"] == "token"]
    gen = [r for r in rows if r["kind"] == "generate"]
    if tok:
        head = (f"{'model':<10} {'dtype':<8} {'grad_steps':>10} {'variant':<12} {'steps':>5} {'k':>3} {'seconds':>8} "
                f"{'fwd s':>7} {'bwd s':>7} {f's@{target}':>8} {'peak GB':>8} {'delta GB':>8} {'fwd-end GB':>10} {'load':>9}  status")
        emit(head)
        emit("-" * len(head))
        for r in tok:
            load = f"{_f(r.get('load_start'))}-{_f(r.get('load_end'))}"
            emit(f"{r['model']:<10} {r['dtype']:<8} {r['grad_steps']:>10} {r['variant']:<12} {r['steps']:>5} {r['k']:>3} "
                 f"{_f(r.get('seconds'))!s:>8} {_f(r.get('forward_s'))!s:>7} {_f(r.get('backward_s'))!s:>7} "
                 f"{_f(r.get('seconds_at_target'), '.0f')!s:>8} {_f(_gb(r, 'peak_mb'), '.2f')!s:>8} "
                 f"{_f(_gb(r, 'delta_mb'), '.2f')!s:>8} {_f(_gb(r, 'forward_peak_mb'), '.2f')!s:>10} {load:>9}  {r['status']}")
        emit("")
    if gen:
        head = (f"{'model':<10} {'dtype':<8} {'batch':>5} {'steps':>5} {'seconds':>8} {'img/s':>7} {'s/img':>7} "
                f"{'decode s':>8} {'s/step':>7} {f's/img@{target}':>9} {'peak GB':>8} {'delta GB':>8} {'load':>9}  status")
        emit(head)
        emit("-" * len(head))
        for r in gen:
            load = f"{_f(r.get('load_start'))}-{_f(r.get('load_end'))}"
            emit(f"{r['model']:<10} {r['dtype']:<8} {r['batch']:>5} {r['steps']:>5} {_f(r.get('seconds'))!s:>8} "
                 f"{_f(r.get('images_per_s'), '.3f')!s:>7} {_f(r.get('s_per_image'))!s:>7} {_f(r.get('decode_s'))!s:>8} "
                 f"{_f(r.get('sampler_step_s'))!s:>7} {_f(r.get('s_per_image_at_target'))!s:>9} "
                 f"{_f(_gb(r, 'peak_mb'), '.2f')!s:>8} {_f(_gb(r, 'delta_mb'), '.2f')!s:>8} {load:>9}  {r['status']}")
        emit("")
    for key, m in result["models"].items():
        fitm = m.get("fit")
        if not fitm:
            continue
        emit(f"{key}: weights {fitm['weights_mb'] / 1e3:.2f} GB, process base {fitm['base_mb'] / 1e3:.2f} GB; "
             f"forward = {fitm['forward_a_s']:.1f} s + {fitm['sampler_step_s']:.1f} s x steps; backward = "
             f"{fitm['backward_c_s']:.1f} s + {fitm['grad_step_backward_s']:.1f} s x k; delta = "
             f"{fitm['delta_m0_mb'] / 1e3:.2f} GB + {fitm['delta_per_grad_step_mb']:.1f} MB x k"
             + ("" if all(fitm["fitted"].values()) else f" (not fitted: {[k for k, v in fitm['fitted'].items() if not v]})"))
        for label, p in fitm["predicted"].items():
            emit(f"  model at {target} steps, grad_steps {label} (k={p['k']}): {p['seconds']:.0f} s, peak {p['peak_mb'] / 1e3:.2f} GB"
                 + (f"; GPU bf16 predicted {p['gpu_bf16_peak_mb_low'] / 1e3:.1f}-{p['gpu_bf16_peak_mb_high'] / 1e3:.1f} GB"
                    if result["config"]["device_type"] == "cpu" else ""))
        for t in m.get("targets", []):
            parts = [f"  target grad_steps {t['grad_steps']} <= {t['limit_gb']:.0f} GB:"]
            if "measured_peak_gb" in t:
                parts.append(f"measured {t['measured_peak_gb']:.2f} GB at {t['measured_steps']} steps "
                             f"{'PASS' if t['measured_pass'] else 'FAIL'};")
            parts.append(f"model at {target} steps {t['model_peak_gb_at_target']:.2f} GB {'PASS' if t['model_pass'] else 'FAIL'}")
            if "gpu_bf16_predicted_gb" in t:
                lo, hi = t["gpu_bf16_predicted_gb"]
                parts.append(f"; GPU bf16 predicted {lo:.1f}-{hi:.1f} GB {'PASS' if t['gpu_bf16_predicted_pass'] else 'FAIL'}")
            emit(" ".join(parts))
    env = result["environment"]
    emit(f"machine: {env['cpus']} CPUs, {env['memory_gb']:.0f} GB RAM, device {result['config']['device']}; "
         f"load average {env['load_start']:.2f} at start, {env.get('load_end', float('nan')):.2f} at end")


def _gb(r: dict[str, Any], key: str) -> float | None:
    v = r.get(key)
    return None if v is None else v / 1e3


def environment() -> dict[str, Any]:
    import psutil

    versions = {}
    for name in ("torch", "diffusers", "transformers", "timm"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "memory_gb": psutil.virtual_memory().total / GB, "load_start": _load(), "versions": versions}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=None, help=f"comma-separated, from {', '.join(MODELS)} (default: both)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    ap.add_argument("--dtypes", default="auto", help="compute dtypes, comma-separated (auto = what augment picks: "
                    "float32 on CPU, bfloat16/float16 on CUDA)")
    ap.add_argument("--resolution", type=int, default=None, help="image side in pixels (default 512)")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps of the token rows, and the target the model "
                    "extrapolates to (default 30, the paper's)")
    ap.add_argument("--all-steps", type=int, default=None, help="sampler steps of the grad_steps=all rows (default 10)")
    ap.add_argument("--rows", default=None, help=f"token rows: grad_steps[:variant][@steps], comma-separated (default "
                    f"{DEFAULT_ROWS}); variants: {', '.join(VARIANTS)}")
    ap.add_argument("--no-tokens", action="store_true", help="skip the token rows")
    ap.add_argument("--token-batch", type=int, default=1, help="images per token step (the paper: 1, with accumulation)")
    ap.add_argument("--gen-batches", default=None, help="generation batch sizes (default 1,2,4; '' to skip)")
    ap.add_argument("--gen-steps", type=int, default=None, help="sampler steps of the generation rows (default 4 on CPU, 30 on CUDA)")
    ap.add_argument("--classifier", default=None, help="timm architecture of the random classifier (default vit_base_patch16_224)")
    ap.add_argument("--isolate", choices=("row", "model", "run"), default=None,
                    help="one child process per row (exact peaks, the default), per model, or one for the whole run "
                    "(faster; a row's peak may then reuse memory an earlier row freed)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the child processes (default: "
                    "torch's, one per core; --quick: 1, which stalls less on a machine shared with other jobs)")
    ap.add_argument("--malloc", choices=("mmap", "default"), default="mmap",
                    help="glibc allocator settings of the children: mmap (default) makes RSS follow the live tensors; "
                    "default keeps glibc's, whose freed heap memory stays resident and grows with grad_steps")
    ap.add_argument("--max-rss-gb", type=float, default=20.0, help="kill a child whose RSS passes this")
    ap.add_argument("--min-available-gb", type=float, default=1.5,
                    help="kill a child when the machine's available memory falls below this")
    ap.add_argument("--row-timeout", type=float, default=None, help="kill a child after this many seconds")
    ap.add_argument("--out", default=None, help="write the results as JSON here (rewritten after every child)")
    ap.add_argument("--quick", action="store_true", help="smoke run on shrunken architectures: 64 px, 3/2 steps, "
                    "batches 1,2, test_vit classifier, one child process; the figures mean nothing")
    ap.add_argument("--show", nargs="+", metavar="JSON", help="print the tables of saved results (several files are "
                    "merged, fits redone; with --out, the merged result is written there) and exit")
    ap.add_argument("--child", nargs=2, metavar=("JOB", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick = dict(resolution=64, steps=3, all_steps=2, gen_batches="1,2", gen_steps=2, classifier="test_vit", isolate="run", threads=1)
    full = dict(resolution=512, steps=30, all_steps=10, gen_batches="1,2,4",
                gen_steps=30 if args.device.startswith("cuda") else 4, classifier="vit_base_patch16_224", isolate="row")
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.models = args.models or ",".join(MODELS)
    args.rows = DEFAULT_ROWS if args.rows is None else args.rows
    bad = [m for m in args.models.split(",") if m not in MODELS]
    if bad:
        ap.error(f"unknown model {bad[0]!r}; use {', '.join(MODELS)}")
    try:
        args.token_specs = [] if args.no_tokens else parse_token_rows(args.rows, args.steps, args.all_steps)
        args.gen_batch_list = [int(b) for b in args.gen_batches.split(",") if b.strip()]
    except ValueError as e:
        ap.error(str(e))
    if any(b < 1 for b in args.gen_batch_list):
        ap.error("--gen-batches must be positive integers, e.g. 1,2,4")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(*args.child)
    if args.show:
        from augment.io.atomic import atomic_write_json
        from augment.io.jsonsafe import json_safe

        try:
            merged = merge_results(args.show)
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot merge {args.show}: {e}", file=sys.stderr)
            return 2
        print_tables(merged)
        if args.out:
            atomic_write_json(args.out, json_safe(merged))
        return 0
    from augment.io.atomic import atomic_write_json
    from augment.io.jsonsafe import json_safe

    config = {k: v for k, v in vars(args).items() if k not in ("child", "token_specs")}
    result: dict[str, Any] = {"config": config, "environment": environment(), "models": {}, "rows": []}
    if args.device != "cpu":  # the children do the work; the parent imports torch only to check the device
        import torch

        from augment.errors import AugmentError
        from augment.models.device import resolve_device

        try:
            dev = resolve_device(args.device)
        except AugmentError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        config["device_type"] = dev.type
        if dev.type == "cuda":
            result["environment"]["cuda"] = {"device": torch.cuda.get_device_name(dev),
                                             "flash_sdp": torch.backends.cuda.flash_sdp_enabled(),
                                             "mem_efficient_sdp": torch.backends.cuda.mem_efficient_sdp_enabled()}
    else:
        config["device_type"] = "cpu"
    print(f"real-size benchmark: {args.models} on {args.device}, {args.resolution} px, token rows "
          f"{[f'{s.label}@{s.steps}' for s in args.token_specs]}, generation batches {args.gen_batch_list} at "
          f"{args.gen_steps} steps; load average {result['environment']['load_start']:.2f}", flush=True)
    jobs: list[dict[str, Any]] = []
    for model in args.models.split(","):
        for dtype in args.dtypes.split(","):
            common = {"model": model, "device": args.device, "dtype": dtype, "tiny": args.quick,
                      "classifier": args.classifier, "resolution": args.resolution, "token_batch": args.token_batch,
                      "gen_steps": args.gen_steps, "target_steps": args.steps, "threads": args.threads}
            specs = [dataclasses.asdict(s) for s in args.token_specs]
            if args.isolate == "row":
                jobs += [{**common, "tokens": [s], "class_offset": i, "gen_batches": []} for i, s in enumerate(specs)]
                if args.gen_batch_list:
                    jobs.append({**common, "tokens": [], "class_offset": len(specs), "gen_batches": args.gen_batch_list})
            else:
                jobs.append({**common, "tokens": specs, "class_offset": 0, "gen_batches": args.gen_batch_list})
    units = [jobs] if args.isolate == "run" else [[job] for job in jobs]
    with tempfile.TemporaryDirectory(prefix="real-size-jobs-") as tmp:
        for unit in units:
            for job, out in zip(unit, run_child(unit, Path(tmp), args.max_rss_gb * GB, args.row_timeout,
                                                     args.min_available_gb * GB,
                                                     MALLOC_MMAP_ENV if args.malloc == "mmap" else None), strict=True):
                entry = result["models"].setdefault(f"{job['model']}/{job['dtype']}", {"info": {}})
                entry["info"] = entry["info"] or out["info"]
                result["rows"].extend(out["rows"])
            refit(result)
            result["environment"]["load_end"] = _load()
            if args.out:
                atomic_write_json(args.out, json_safe(result))
    print("")
    print_tables(result)
    if args.out:
        atomic_write_json(args.out, json_safe(result))
        print(f"results: {args.out}")
    return 0 if all(r["status"] == "ok" for r in result["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
