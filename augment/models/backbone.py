"""Load a diffusers Stable Diffusion pipeline from one of three spec forms (read by :mod:`augment.models.spec`).

``embedded:<name>``  a pipeline folder shipped inside the package (the offline default);
``<path>``           a local ``save_pretrained`` folder (SD 1.x/2.x layout);
``hf:<id>`` / ``<owner>/<name>``  a hub id, resolved from the local Hugging Face cache only:
                     there is no network at run time, so a missing model must fail fast with the
                     command that downloads it, never hang.
The sampler is always swapped for a DDIM scheduler built from the model's own config (the sampler
the method's settings were measured with), unless ``scheduler`` names another.

Weights are the one thing a cluster worker does not receive from the driver (gigabytes, per
actor): each node reads them from its own Hugging Face cache or from a path that exists on every
node. When a worker's node lacks them, the error names that node (see :func:`load_backbone`).
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import torch

from augment.errors import AugmentError
from augment.models.device import resolve_device, resolve_dtype
from augment.models.spec import HUB_ID, looks_like_path, parse_spec
from augment.shipping import node_label

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
    "ddpm": "DDPMScheduler",
}


def embedded_dir() -> Path:
    return Path(str(resources.files("augment.models.embedded")))


def list_embedded_backbones() -> list[str]:
    root = embedded_dir()
    return sorted(p.name for p in root.iterdir() if (p / "model_index.json").exists()) if root.exists() else []


#: the pipeline classes augment runs (``_class_name`` of model_index.json): Stable Diffusion 1.x and
#: 2.x. The tokens, the sampler and the one-step x0 all assume one CLIP text encoder and a 4-channel
#: text-to-image UNet; SDXL (two text encoders, pooled embeddings), SD3, inpainting UNets and others
#: would fail deep inside a stage, on a worker, after the run folder was made.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)


def check_pipeline_class(folder: str, spec: str) -> str:
    """Return ``folder`` when its model_index.json names a supported pipeline class; else a one-line
    AugmentError naming the class found and what is supported (before any run folder is made)."""
    index = Path(folder) / "model_index.json"
    try:
        found = json.loads(index.read_text(encoding="utf-8")).get("_class_name")
    except FileNotFoundError:
        raise AugmentError(f"{spec}: {folder} is not a diffusers pipeline folder (no model_index.json)") from None
    except (OSError, ValueError, AttributeError) as e:
        raise AugmentError(f"{spec}: cannot read {index} ({type(e).__name__}); re-save or re-download the model") from None
    if found not in SUPPORTED_PIPELINES:
        raise AugmentError(
            f"{spec} is a {found or 'pipeline without a _class_name'}; augment supports Stable Diffusion 1.x/2.x "
            f"text-to-image pipelines ({', '.join(SUPPORTED_PIPELINES)}), e.g. stabilityai/stable-diffusion-2-1-base"
        )
    return folder


def resolve_backbone_path(spec: str) -> str:
    """Turn a spec (:func:`augment.models.spec.parse_spec`) into something ``from_pretrained``
    accepts, or raise a one-line AugmentError (an unsupported pipeline class included:
    :func:`check_pipeline_class`)."""
    parsed = parse_spec(spec, "backbone")
    if parsed.scheme == "embedded":
        path = embedded_dir() / parsed.name
        if not (path / "model_index.json").exists():
            known = ", ".join(f"embedded:{n}" for n in list_embedded_backbones()) or "none shipped"
            raise AugmentError(f"unknown embedded model {spec!r}; known: {known}")
        return check_pipeline_class(str(path), spec)
    if parsed.scheme == "path":
        path = Path(parsed.name).expanduser()
        if not (path / "model_index.json").exists():
            raise AugmentError(
                f"{spec} is not a diffusers pipeline folder (no model_index.json); "
                "save one with pipe.save_pretrained(DIR) or pass a hub id"
            )
        return check_pipeline_class(str(path), spec)
    return check_pipeline_class(cached_hub_snapshot(parsed.name), spec)  # hf:<id> or a bare hub id


def cached_hub_snapshot(repo_id: str) -> str:
    """The local folder of a hub model from the Hugging Face cache; never touches the network."""
    from huggingface_hub import snapshot_download

    try:
        # The cache location is read at call time so HF_HUB_CACHE set after import is honoured.
        return snapshot_download(repo_id, local_files_only=True, cache_dir=os.environ.get("HF_HUB_CACHE"))
    except Exception:  # noqa: BLE001 - any miss (not cached, bad id) is the same user problem
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        raise AugmentError(
            f"model {repo_id!r} is not in the local Hugging Face cache{' (HF_HUB_OFFLINE is set)' if offline else ''}; "
            f"download it on a connected machine with `hf download {repo_id}` and copy the cache "
            "(~/.cache/huggingface), or pass --model /path/to/pipeline-folder"
        ) from None


def weights_variant(folder: str | Path) -> str | None:
    """``"fp16"`` for a pipeline folder whose UNet or VAE holds only half-precision weight files
    (``*.fp16.safetensors`` / ``*.fp16.bin``, what ``save_pretrained(variant="fp16")`` and the
    hub's fp16 branches write), else None. diffusers loads such a folder only when told
    ``variant="fp16"``; a folder that has the full-precision files too loads those (no variant)."""
    root = Path(folder)
    for part in ("unet", "vae"):
        files = [f.name for f in (root / part).glob("*") if f.suffix in (".safetensors", ".bin")]
        if files and all(".fp16." in name for name in files):
            return "fp16"
    return None


def load_backbone(
    spec: str, device: str | torch.device = "cpu", dtype: str = "auto", scheduler: str = "ddim"
):
    """Load a StableDiffusionPipeline on ``device`` in the resolved compute dtype.

    Offline by construction: ``local_files_only=True`` always, so a hub id that is not in the cache
    fails at once with a message saying how to download it.
    """
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import logging as dlogging

    dev = device if isinstance(device, torch.device) else resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    try:
        where = resolve_backbone_path(spec)
    except AugmentError as e:
        raise _missing_on_node(spec, e) from None
    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            where,
            dtype=torch_dtype,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
            local_files_only=True,
            variant=weights_variant(where),  # fp16-only folders (auto-detected)
        )
    except (OSError, ValueError) as e:
        if HUB_ID.match(where) and not Path(where).exists():
            offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
            raise AugmentError(
                f"model {where!r} is not in the local Hugging Face cache{' (HF_HUB_OFFLINE is set)' if offline else ''}; "
                f"download it on a connected machine with `hf download {where}` and copy the cache, "
                "or pass --model /path/to/pipeline-folder"
            ) from None
        raise AugmentError(f"cannot load diffusers pipeline from {where}: {str(e).splitlines()[0]}") from None
    finally:
        dlogging.set_verbosity(verbosity)
    pipe = set_scheduler(pipe, scheduler)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(dev)
    try:  # SDPA is the default attention processor in diffusers on torch 2; make it explicit.
        from diffusers.models.attention_processor import AttnProcessor2_0

        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    except Exception:  # noqa: BLE001 - older/other attention layouts keep their own processor
        pass
    pipe.augment_spec = spec  # the spec we were loaded from, recorded in manifests
    return pipe


def _missing_on_node(spec: str, error: AugmentError) -> AugmentError:
    """On a Ray worker, the driver found the model (its preflight resolved it) and this node did
    not: say which node lacks what, since the fix is on that node, not in the command."""
    node = node_label()
    if node is None:
        return error
    if looks_like_path(spec):
        return AugmentError(
            f"model folder {spec} does not exist on {node}: a --model path must exist at the same place on "
            "every node (copy or mount it there), or use a hub id that is in every node's Hugging Face cache"
        )
    return AugmentError(f"on {node}: {error}")


def model_fingerprint(spec: str) -> str:
    """A cheap identity of the weights behind ``spec``: configs + weight file sizes + their first MiB.

    Stored in run.json so a folder made with other weights under the same name (a rebuilt embedded
    model, a re-downloaded snapshot) is refused instead of mixing tokens of two models. Hashing whole
    Stable Diffusion checkpoints (GBs) would cost seconds per stage; this costs milliseconds.
    """
    import hashlib

    root = Path(resolve_backbone_path(spec))
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.name.startswith(".") or path.name == "card.json":
            continue
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode())
        if path.suffix in (".json", ".txt"):
            h.update(path.read_bytes())
        elif path.suffix in (".safetensors", ".bin", ".ckpt", ".pt"):
            h.update(str(path.stat().st_size).encode())
            with open(path, "rb") as f:
                h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def text_width(spec: str) -> int | None:
    """The width of the backbone's token embeddings (its text encoder's ``hidden_size``), read from
    its config without loading weights; None when the config does not say."""
    config = Path(resolve_backbone_path(spec)) / "text_encoder" / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    width = data.get("hidden_size") if isinstance(data, dict) else None
    return width if isinstance(width, int) else None


def set_scheduler(pipe, name: str):
    import diffusers

    if name not in SCHEDULERS:
        raise AugmentError(f"unknown scheduler {name!r}; use one of {', '.join(SCHEDULERS)}")
    cls = getattr(diffusers, SCHEDULERS[name])
    pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe


def native_resolution(pipe) -> int:
    """The image size the backbone was trained at (UNet sample size x VAE downsampling)."""
    return int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
