"""Predicted peak memory of a token step, a generation batch and a downstream batch, with no GPU.

A GPU run that does not fit fails minutes in, on hardware this project may never see; the numbers
that decide it can be counted without one. The models are built from their configs on PyTorch's
``meta`` device (shapes and dtypes, no data, no weights loaded) and the step is run there, the way
:class:`augment.models.diffusion.Diffusion` and :class:`augment.tokens.disco.DiscoTrainer` run it
(text encoder with the token's gradient, the sampler's no-grad steps, ``grad_steps`` steps with
gradient, checkpointed as ``tokens.checkpointing`` says, the VAE decode, the classifier, the
backward). :class:`LiveMemory`, a ``TorchDispatchMode``, adds up every storage an operation
creates and takes it off when the storage is freed (a weak reference on it), so its peak is the
most tensor memory alive at once: the activations kept for backward plus the largest transient.
Weights (and a downstream optimiser's state) are counted from the parameters.

What is modelled, so what the figures mean:

* attention runs the fused kernel the device would (``"cuda"``: memory-efficient attention,
  ``"cpu"``: the CPU flash kernel), never the math path that materialises the attention matrix;
* the weights run in their dtype with no autocast (diffusers' own half-precision way; autocast over
  half weights upcasts the norms and would add memory), the classifier and the token in float32;
* tensors only: a CUDA context (~0.3-0.5 GB), cuDNN/cuBLAS workspaces and the caching allocator's
  rounding come on top, which :func:`check_fits` allows for with a margin.

The figures were checked against the resident memory a CPU run adds, at reduced sizes
(``tests/models/test_memory.py``); ``docs/memory.md`` has the 512 px table (``augment plan`` prints
one configuration's).
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.checkpoint import checkpoint

from augment.errors import AugmentError
from augment.models.diffusion import block_checkpointing, decoder_checkpointing

__all__ = ["GB", "Estimate", "LiveMemory", "MetaModels", "check_fits", "downstream_batch", "free_cuda_memory",
           "free_for_models", "generation_batch", "is_out_of_memory", "load_meta_models", "model_configs", "out_of_memory_error", "plan",
           "preflight", "token_step"]

GB = 1e9  # decimal gigabytes, as docs/results.md and docs/memory.md state them
#: public configs of the models the presets name, for planning before a model is downloaded
KNOWN_CONFIGS = {"stabilityai/stable-diffusion-2-1-base": "sd21-base", "runwayml/stable-diffusion-v1-5": "sd15",
                 "stable-diffusion-v1-5/stable-diffusion-v1-5": "sd15", "sd15": "sd15", "sd21-base": "sd21-base"}
CONFIG_FOLDER = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"  # in a checkout
#: used for the token step when no classifier is configured (the CUB preset's README example)
DEFAULT_CLASSIFIER = "vit_base_patch16_224"
#: on top of the predicted tensors: allocator rounding/fragmentation (fraction) and the CUDA
#: context + library workspaces (bytes)
MARGIN, OVERHEAD = 0.10, 0.5 * GB


class LiveMemory(TorchDispatchMode):
    """Tensor memory alive inside the ``with`` block: every new storage counted until it is freed.

    ``peak`` is the most alive at once. Tensors made before the block (weights, inputs) are not
    counted, nor their views (a transposed weight shares its storage); their bytes are the
    caller's to add.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {id(a.untyped_storage()) for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                key = id(storage)
                if key not in self.live and key not in inputs:  # a view or in-place result allocates nothing
                    self.live[key] = storage.nbytes()
                    self.current += self.live[key]
                    self.peak = max(self.peak, self.current)
                    weakref.finalize(storage, self._free, key)
        return out

    def _free(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)


@contextmanager
def fused_attention(device: str) -> Iterator[None]:
    """``F.scaled_dot_product_attention`` (unmasked) as the fused kernel ``device`` runs, on any device.

    On ``meta`` tensors the public function takes the math path, which keeps the whole attention
    matrix (gigabytes at 512 px); GPUs and PyTorch's CPU backend run a fused kernel that keeps the
    output and its log-sum-exp. Calling that kernel's operator directly gives its memory on meta.
    The function is swapped on ``torch.nn.functional`` itself (diffusers and timm look it up there
    at each call), not through a mode: the backward's recomputation of a checkpoint must see it too.
    """
    real = F.scaled_dot_product_attention

    def fused(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if attn_mask is not None or kwargs:
            return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)
        if device == "cpu":
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, is_causal, scale=scale)[0]
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
        return torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, grad, 0.0, is_causal, scale=scale)[0]

    F.scaled_dot_product_attention = fused
    try:
        yield
    finally:
        F.scaled_dot_product_attention = real


@dataclass
class Estimate:
    """One predicted peak: ``weights`` (and optimiser state) resident, ``activations`` the most
    tensor memory the work adds at once (kept for backward + the largest transient)."""

    what: str
    weights: int
    activations: int
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def peak(self) -> int:
        return self.weights + self.activations

    def line(self) -> str:
        opts = ", ".join(f"{k} {v}" for k, v in self.settings.items())
        return (f"{self.what:<18} {self.peak / GB:6.2f} GB  (weights {self.weights / GB:.2f} + activations "
                f"{self.activations / GB:.2f}; {opts})")


# ------------------------------------------------------------------------------------- models


def _read_folder(folder: Path) -> dict[str, dict[str, Any]]:
    return {part: json.loads((folder / part / "config.json").read_text()) for part in ("unet", "vae", "text_encoder")}


def model_configs(model: str) -> dict[str, dict[str, Any]]:
    """The UNet, VAE and text-encoder configs of a backbone spec, read without loading weights.

    A folder or the embedded model is read where it is; a hub id from the local Hugging Face cache,
    or, for the models the presets name, from the public configs in ``benchmarks/configs``.
    """
    from augment.models.backbone import resolve_backbone_path

    try:
        return _read_folder(Path(resolve_backbone_path(model)))
    except AugmentError:
        name = KNOWN_CONFIGS.get(model)
        if name is None or not (CONFIG_FOLDER / name).is_dir():
            raise
        return _read_folder(CONFIG_FOLDER / name)


@dataclass
class MetaModels:
    """The backbone's components on the ``meta`` device, frozen, in eval mode, in ``dtype``."""

    unet: Any
    vae: Any
    text_encoder: Any
    dtype: torch.dtype

    @property
    def vae_scale(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def weight_bytes(self) -> int:
        return sum(_bytes(m) for m in (self.unet, self.vae, self.text_encoder))


def _bytes(module: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])


def load_meta_models(configs: dict[str, dict[str, Any]], dtype: torch.dtype) -> MetaModels:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.utils import logging as dlogging
    from transformers import CLIPTextConfig, CLIPTextModel

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(configs["unet"])
            vae = AutoencoderKL.from_config(configs["vae"])
            te_cfg = {k: v for k, v in configs["text_encoder"].items() if k not in ("architectures", "model_type")}
            text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
        parts = [m.to(dtype).eval().requires_grad_(False) for m in (unet, vae, text_encoder)]
    finally:
        dlogging.set_verbosity(verbosity)
    return MetaModels(*parts, dtype=dtype)


def meta_classifier(arch: str, num_classes: int = 1000, train: bool = False, **kwargs: Any):
    """A timm model on meta, float32: frozen in eval mode (a guide) or trainable (downstream)."""
    import timm

    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    return model.train(train).requires_grad_(train)


def classifier_arch(spec: str | None) -> tuple[str, dict[str, Any]]:
    """The timm architecture (and kwargs) of a classifier spec; the default ViT-B/16 where unknown."""
    if spec and spec.startswith("timm:"):
        return spec[5:].partition("@")[0], {}
    if spec and spec.startswith("embedded:"):
        from augment.models.backbone import embedded_dir

        side = embedded_dir() / f"{spec.split(':', 1)[1]}.json"
        if side.exists():
            meta = json.loads(side.read_text())
            return meta.get("arch", DEFAULT_CLASSIFIER), dict(meta.get("kwargs", {}))
    return DEFAULT_CLASSIFIER, {}


def _input_side(model) -> int:
    return int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


# ------------------------------------------------------------------------------------- work


@contextmanager
def _counting(attention: str) -> Iterator[LiveMemory]:
    with fused_attention(attention), LiveMemory() as mem:
        yield mem


def _guided(models: MetaModels, model_in: torch.Tensor, context: torch.Tensor, ckpt: bool) -> torch.Tensor:
    """``Diffusion.guided_output`` on meta: the UNet on ``[uncond; cond]``, guidance in float32."""
    with block_checkpointing(models.unet, ckpt and torch.is_grad_enabled()):
        out = models.unet(model_in.to(models.dtype), 500, encoder_hidden_states=context.to(models.dtype)).sample
    out_u, out_c = out.float().chunk(2)
    return out_u + 7.0 * (out_c - out_u)


def _decode(models: MetaModels, latents: torch.Tensor, ckpt: bool) -> torch.Tensor:
    with decoder_checkpointing(models.vae, ckpt and torch.is_grad_enabled()):
        images = models.vae.decode(latents.to(models.dtype)).sample
    return images.float() / 2 + 0.5


def _prompt_ids(models: MetaModels, n: int) -> torch.Tensor:
    length = models.text_encoder.config.max_position_embeddings
    return torch.zeros(n, length, dtype=torch.long, device="meta")


def token_step(models: MetaModels, classifier, *, batch: int, resolution: int, steps: int, grad_steps: int | str,
               checkpointing: bool, attention: str = "cuda") -> Estimate:
    """One DisCo optimisation step (``DiscoTrainer._forward`` with gradient, loss, backward).

    The sampler's steps without gradient all cost the same, so one of them is run; the scheduler's
    update (elementwise on float32 latents) is stood in for by an elementwise update.
    """
    k = steps if grad_steps == "all" else min(int(grad_steps), steps)
    side = resolution // models.vae_scale
    channels = models.unet.config.in_channels
    emb = models.text_encoder.get_input_embeddings()
    with _counting(attention) as mem:
        vector = torch.zeros(emb.embedding_dim, device="meta", requires_grad=True)  # the token, float32
        hook = emb.register_forward_hook(lambda m, i, out: out + vector.to(out.dtype) if torch.is_grad_enabled() else out)
        try:
            with torch.no_grad():
                uncond = models.text_encoder(_prompt_ids(models, batch))[0]
            cond = models.text_encoder(_prompt_ids(models, batch))[0]
        finally:
            hook.remove()
        latents = torch.zeros(batch, channels, side, side, device="meta")
        if steps > k:
            with torch.no_grad():
                eps = _guided(models, torch.cat([latents, latents]), torch.cat([uncond, cond]), False)
                latents = latents * 0.98 + eps * 0.02
        for _ in range(k):
            model_in, context = torch.cat([latents, latents]), torch.cat([uncond, cond])
            if checkpointing:
                eps = checkpoint(_guided, models, model_in, context, True, use_reentrant=False)
            else:
                eps = _guided(models, model_in, context, False)
            latents = latents * 0.98 + eps * 0.02
        images = _decode(models, latents, checkpointing)
        images = images + (images.clamp(0, 1) - images).detach()  # straight-through clamp
        size = _input_side(classifier)
        logits = classifier(F.interpolate(images, size=(size, size), mode="bilinear", antialias=True))
        F.cross_entropy(logits, torch.zeros(batch, dtype=torch.long, device="meta")).backward()
        del latents, images, logits, eps, cond, uncond
    return Estimate("token step", models.weight_bytes() + _bytes(classifier), mem.peak,
                    {"batch": batch, "resolution": resolution, "steps": steps, "grad_steps": grad_steps,
                     "checkpointing": checkpointing, "dtype": str(models.dtype).removeprefix("torch.")})


def generation_batch(models: MetaModels, *, batch: int, resolution: int, attention: str = "cuda") -> Estimate:
    """One batch of diffusers' pipeline call (no gradient): prompts, a guided UNet step, the decode."""
    side = resolution // models.vae_scale
    with _counting(attention) as mem, torch.no_grad():
        context = models.text_encoder(_prompt_ids(models, 2 * batch))[0]
        latents = torch.zeros(batch, models.unet.config.in_channels, side, side, device="meta", dtype=models.dtype)
        eps = _guided(models, torch.cat([latents, latents]), context, False)
        latents = latents + eps.to(models.dtype)
        del eps, context
        _decode(models, latents, False)
    return Estimate("generation batch", models.weight_bytes(), mem.peak,
                    {"batch": batch, "resolution": resolution, "dtype": str(models.dtype).removeprefix("torch.")})


def downstream_batch(arch: str, *, batch: int, input_size: int, num_classes: int = 1000, attention: str = "cuda",
                     **kwargs: Any) -> Estimate:
    """One float32 training step of the downstream classifier: weights, AdamW's two moments (held
    between steps), the forward, the backward and its gradients."""
    model = meta_classifier(arch, num_classes, train=True, **kwargs)
    weights = _bytes(model)
    with _counting(attention) as mem:
        x = torch.zeros(batch, 3, input_size, input_size, device="meta")
        F.cross_entropy(model(x), torch.zeros(batch, dtype=torch.long, device="meta")).backward()
        model.zero_grad(set_to_none=True)
    state = 2 * sum(p.numel() * 4 for p in model.parameters())
    return Estimate("downstream batch", weights + state, mem.peak,
                    {"arch": arch, "batch": batch, "input_size": input_size, "dtype": "float32"})


# ------------------------------------------------------------------------------------- a config


def _dtype(name: str) -> torch.dtype:
    """The compute dtype a CUDA run resolves ``--dtype`` to (``auto``: bfloat16)."""
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
            "float16": torch.float16, "fp32": torch.float32, "float32": torch.float32}.get(name, torch.bfloat16)


#: the estimates :func:`plan` can make, in the order ``augment plan`` prints them
ESTIMATES = ("token step", "generation batch", "downstream batch")


def plan(cfg, device: str = "cuda", which: tuple[str, ...] = ESTIMATES, *,
         generation_batch_size: int | None = None) -> list[Estimate]:
    """The predicted peaks of ``cfg`` (a resolved :class:`augment.config.Config`) on ``device``:
    those named in ``which`` (a worker's preflight counts only its stage's own); the generation
    batch at ``generation_batch_size`` when given, else the config's or the device's default."""
    models = load_meta_models(model_configs(cfg.model), _dtype(cfg.dtype) if device == "cuda" else torch.float32)
    resolution = cfg.resolution or int(models.unet.config.sample_size) * models.vae_scale
    t, g = cfg.tokens, cfg.generate
    out: list[Estimate] = []
    if "token step" in which:
        arch, kwargs = classifier_arch(cfg.classifier)
        step = token_step(models, meta_classifier(arch, **kwargs), batch=t.batch_size, resolution=resolution,
                          steps=t.steps or g.steps, grad_steps=t.grad_steps, checkpointing=t.checkpointing,
                          attention=device)
        step.settings["classifier"] = arch  # the default ViT-B/16 where none is configured
        out.append(step)
    if "generation batch" in which:
        batch = generation_batch_size or g.batch_size or _default_generation_batch(device, resolution)
        out.append(generation_batch(models, batch=batch, resolution=resolution, attention=device))
    if "downstream batch" in which:
        out.append(downstream_batch(cfg.train.arch, batch=cfg.train.batch_size, input_size=cfg.train.input_size,
                                    attention=device, **cfg.train.arch_kwargs))
    return out


def _default_generation_batch(device: str, resolution: int) -> int:
    from augment.models.device import default_batch_size

    return default_batch_size(torch.device(device), resolution)


#: what to lower, per estimate, in the refusal line
LOWER = {"token step": "tokens.batch_size, resolution or tokens.grad_steps (or turn tokens.checkpointing on)",
         "generation batch": "generate.batch_size or resolution",
         "downstream batch": "train.batch_size or train.input_size"}


def check_fits(estimates: list[Estimate], free_bytes: int, device_name: str) -> None:
    """Refuse, in one line, the first estimate whose peak (plus margin) exceeds ``free_bytes``."""
    for est in estimates:
        need = _need(est)
        if need > free_bytes:
            settings = ", ".join(f"{k} {v}" for k, v in est.settings.items())
            raise AugmentError(
                f"the {est.what} ({settings}) needs about {need / GB:.1f} GB (predicted {est.peak / GB:.1f} GB "
                f"+ margin) but {device_name} has {free_bytes / GB:.1f} GB free; lower {LOWER.get(est.what, 'the batch size')}"
                " (`augment plan` prints the estimates)")


#: the settings an out-of-memory stage is told to lower, per stage (dotted config keys, in the order to try)
STAGE_KNOBS = {"tokens": ("tokens.batch_size", "resolution", "tokens.grad_steps"),
               "generate": ("generate.batch_size", "resolution"),
               "caso": ("caso.batch_size", "caso.k", "caso.edits_per_image"),  # an edit batch: k x edits
               "benchmark": ("train.batch_size", "train.input_size")}
_ASKED = re.compile(r"tried to allocate ([0-9.]+ ?[KMGTP]?i?B)", re.IGNORECASE)


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the device (or host allocator) running out of memory: torch's
    ``OutOfMemoryError`` (CUDA), or the RuntimeError the CPU/MPS allocators raise."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def out_of_memory_error(exc: BaseException, stage: str, cfg) -> AugmentError:
    """The one line an out-of-memory unit stops its stage with (the next unit would run out too,
    so failing them one after another helps nobody): the figure asked for, as torch reported it,
    and the settings to lower with their values now (``cfg``: the stage's resolved Config)."""
    asked = _ASKED.search(str(exc))
    knobs = []
    for key in STAGE_KNOBS.get(stage, ()):
        section, _, name = key.rpartition(".")
        value = getattr(getattr(cfg, section) if section else cfg, name, None)
        knobs.append(f"{key} (now {'native' if value is None else value})")
    lower = ", ".join(knobs) or "the batch size"
    if stage == "tokens" and not getattr(cfg.tokens, "checkpointing", True):
        lower += ", or set tokens.checkpointing: true"
    figure = f" (tried to allocate {asked.group(1)})" if asked else ""
    return AugmentError(f"out of memory in the {stage} stage{figure}; lower {lower} and re-run the same command "
                        "to resume (`augment plan` prints the predicted peaks)")


def free_cuda_memory(device: torch.device) -> tuple[int, str]:
    """Free bytes on ``device`` and its name (``torch.cuda.mem_get_info``)."""
    free, _total = torch.cuda.mem_get_info(device)
    return int(free), f"{torch.cuda.get_device_name(device)} ({device})"


def free_for_models(device: torch.device) -> tuple[int, str]:
    """What this process can still use on ``device``: the card's free bytes plus what torch's
    caching allocator already holds here (the models an earlier stage left in the host's cache, its
    reusable blocks), so a stage that reuses a loaded pipeline does not count its weights twice."""
    free, name = free_cuda_memory(device)
    return free + int(torch.cuda.memory_reserved(device)), name


def compute_device(cfg) -> torch.device:
    """The device a worker built from ``cfg`` loads its models on (``--device``, resolved here)."""
    from augment.models.device import resolve_device

    return resolve_device(cfg.device)


#: the estimates a stage's worker is checked against before it loads a model (caso: not modelled yet)
STAGE_ESTIMATES = {"tokens": ("token step",), "generate": ("generation batch",), "benchmark": ("downstream batch",)}


def preflight(cfg, device: torch.device | None = None, free: Callable[[torch.device], tuple[int, str]] | None = None,
              stage: str | None = None) -> int | None:
    """Before any model loads on a CUDA device (a Ray worker, or the driver for ``--workers 0``):
    refuse, in one line, a config whose predicted peak for ``stage`` (every estimate when None)
    exceeds the card's free memory. A generation batch the user left on auto (``generate.batch_size``
    unset) is lowered instead, halving from the device's default until it fits: that batch is returned
    (None: the user's own batch, or no CUDA). Nothing is counted off CUDA."""
    device = device if device is not None else compute_device(cfg)
    if device.type != "cuda":
        return None
    which = STAGE_ESTIMATES.get(stage, ESTIMATES) if stage is not None else ESTIMATES
    if not which:
        return None
    try:
        model_configs(cfg.model)
    except AugmentError:  # not on this node: the loader says which node lacks what (backbone._missing_on_node)
        return None
    free_bytes, name = (free or free_for_models)(device)
    estimates = plan(cfg, "cuda", which)
    lowered = None
    gen = next((e for e in estimates if e.what == "generation batch"), None)
    if gen is not None and cfg.generate.batch_size is None:
        batch = int(gen.settings["batch"])
        while batch > 1 and _need(gen) > free_bytes:
            batch = max(1, batch // 2)
            gen = plan(cfg, "cuda", ("generation batch",), generation_batch_size=batch)[0]
        estimates = [gen if e.what == "generation batch" else e for e in estimates]
        lowered = batch
    check_fits(estimates, free_bytes, name)
    return lowered


def _need(est: Estimate) -> int:
    """An estimate's bytes with the allocator margin and the CUDA context: what must be free."""
    return int(est.peak * (1 + MARGIN) + OVERHEAD)
