"""What a model spec names, read from its configs alone: ``augment models show SPEC``.

A user about to start a run wants to know what ``--model`` / ``--classifier`` will load (is this
folder a Stable Diffusion pipeline augment runs, at which resolution; how many outputs has this
checkpoint; is that hub id in the cache) without loading gigabytes of weights or starting a stage.
Every form :mod:`augment.models.spec` reads is described here from the files that declare it:
``model_index.json`` and the component configs of a pipeline, timm's pretrained config and a
checkpoint's safetensors header and sidecar, a transformers ``config.json``, an embedded model's
card. A hub id is looked up in the local Hugging Face cache only (configs are enough: ``hf download
ID --include "*.json"``), never on the network. Nothing here reads a weight tensor.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from augment.errors import AugmentError
from augment.models.backbone import SUPPORTED_PIPELINES, embedded_dir
from augment.models.classifier import _sidecar, declared_outputs, read_classifier_source
from augment.models.spec import BY_NAME, HUB_ID, looks_like_path, parse_spec, require_supported, split_prefix

__all__ = ["describe_spec"]

#: how many class names a description lists before "... N more"
SHOW_NAMES = 10


def describe_spec(spec: str) -> dict[str, Any]:
    """A description of ``spec`` (any form ``--model`` or ``--classifier`` takes) as plain data, or
    one AugmentError saying what is missing and how to get it."""
    scheme, rest = split_prefix(spec)
    if scheme == "embedded":
        return _embedded(spec, rest)
    if scheme == "timm":
        return _timm(spec)
    if scheme is not None and scheme != "hf":  # clip: parsed, not loadable yet
        require_supported(parse_spec(spec, BY_NAME[scheme].kinds[0]))
    return _files(spec, rest)


def _embedded(spec: str, name: str) -> dict[str, Any]:
    for kind, card in (("backbone", embedded_dir() / name / "card.json"), ("classifier", embedded_dir() / f"{name}.json")):
        if card.is_file():
            data = json.loads(card.read_text(encoding="utf-8"))
            return {"spec": spec, "kind": kind, "card": data.get("card", data)}
    raise AugmentError(f"no embedded model {spec!r}; see `augment models list`")


def _names(names: list[str] | None) -> dict[str, Any]:
    if not names:
        return {}
    shown: list[Any] = list(names[:SHOW_NAMES])
    if len(names) > SHOW_NAMES:
        shown.append(f"... {len(names) - SHOW_NAMES} more")
    return {"class_names": shown}


def _timm(spec: str) -> dict[str, Any]:
    import timm
    import timm.models

    source = read_classifier_source(spec)  # the checkpoint and its sidecar: one line when missing
    parsed = parse_spec(spec, "classifier")
    arch, checkpoint = parsed.name, parsed.checkpoint
    if not timm.is_model(arch.split(".", 1)[0]):
        raise AugmentError(f"unknown timm architecture {arch!r} in {spec!r}; see timm.list_models()")
    cfg = timm.models.get_pretrained_cfg(arch)
    out: dict[str, Any] = {"spec": spec, "kind": "classifier", "library": "timm", "architecture": arch}
    if cfg is not None:
        out["pretrained"] = {"hub_id": cfg.hf_hub_id, "num_classes": cfg.num_classes,
                             "input_size": list(cfg.input_size), "mean": list(cfg.mean), "std": list(cfg.std)}
    if checkpoint:
        ckpt = Path(checkpoint).expanduser()
        side = _sidecar(ckpt.name, source.files, ckpt)
        out["checkpoint"] = {"path": checkpoint, "bytes": source.nbytes, "sidecar": bool(side)}
        out.update(_names(side.get("class_names")))
    outputs = declared_outputs(source)
    out["outputs"] = outputs if outputs is not None else "unknown until loaded (a .pth state dict, or sidecar kwargs)"
    if not checkpoint:
        out["weights"] = "timm's pretrained weights, from the local Hugging Face cache"
    return out


def _files(spec: str, name: str) -> dict[str, Any]:
    """A folder or a hub id (bare or ``hf:``): a diffusers pipeline or a transformers classifier."""
    folder = Path(name).expanduser()
    if folder.is_dir():
        read = _folder_reader(folder)
        where = str(folder)
    elif looks_like_path(name) or not HUB_ID.match(name):
        raise AugmentError(f"{spec}: the folder {name} does not exist; pass a pipeline or classifier folder, "
                           "a hub id (owner/name), timm:<arch>[@checkpoint] or embedded:<name>")
    else:
        read = _cache_reader(name)
        where = f"the local Hugging Face cache ({name})"
    index = read("model_index.json")
    if index is not None:
        return _pipeline(spec, where, index, read)
    config = read("config.json")
    if config is not None:
        return _transformers(spec, where, config, read("preprocessor_config.json"))
    if folder.is_dir():
        raise AugmentError(f"{spec}: {folder} holds neither model_index.json (a diffusers pipeline) nor config.json "
                           "(a transformers model); save one with save_pretrained(DIR)")
    offline = " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else ""
    raise AugmentError(f"model {name!r} is not in the local Hugging Face cache{offline}; its configs are enough to show "
                       f"it: `hf download {name} --include \"*.json\"` on a connected machine (the whole model to run it)")


def _folder_reader(folder: Path):
    def read(rel: str) -> dict[str, Any] | None:
        path = folder / rel
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise AugmentError(f"cannot read {path} ({type(e).__name__}); re-save or re-download the model") from None
        return data if isinstance(data, dict) else None
    return read


def _cache_reader(repo_id: str):
    from huggingface_hub import try_to_load_from_cache

    def read(rel: str) -> dict[str, Any] | None:
        found = try_to_load_from_cache(repo_id, rel, cache_dir=os.environ.get("HF_HUB_CACHE"))
        return _folder_reader(Path(found).parent)(Path(found).name) if isinstance(found, str) else None
    return read


def _pipeline(spec: str, where: str, index: dict[str, Any], read) -> dict[str, Any]:
    cls = index.get("_class_name")
    components = {k: f"{v[0]}.{v[1]}" for k, v in index.items()
                  if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0]}
    out: dict[str, Any] = {"spec": spec, "kind": "backbone", "where": where, "pipeline": cls,
                           "supported": cls in SUPPORTED_PIPELINES, "components": components}
    if cls not in SUPPORTED_PIPELINES:
        out["note"] = f"augment runs {', '.join(SUPPORTED_PIPELINES)} (Stable Diffusion 1.x/2.x) only"
    unet, vae, text = read("unet/config.json") or {}, read("vae/config.json") or {}, read("text_encoder/config.json") or {}
    if unet.get("sample_size") and vae.get("block_out_channels"):
        out["resolution"] = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    for key, value in (("unet_cross_attention_dim", unet.get("cross_attention_dim")),
                       ("text_encoder_hidden_size", text.get("hidden_size")),
                       ("latent_channels", vae.get("latent_channels")),
                       ("prediction_type", (read("scheduler/scheduler_config.json") or {}).get("prediction_type"))):
        if value is not None:
            out[key] = value
    return out


def _transformers(spec: str, where: str, config: dict[str, Any], proc: dict[str, Any] | None) -> dict[str, Any]:
    labels = config.get("id2label") or {}
    names = [str(labels.get(str(i), labels.get(i, f"class {i}"))) for i in range(len(labels))]
    out: dict[str, Any] = {"spec": spec, "kind": "classifier", "library": "transformers", "where": where,
                           "model_type": config.get("model_type"), "architectures": config.get("architectures"),
                           "outputs": len(labels) or config.get("num_labels", "unknown (no id2label)")}
    out.update(_names(names))
    if proc:
        out["image_size"] = proc.get("crop_size") or proc.get("size")
    if not spec.startswith("hf:"):
        out["use_as"] = f"--classifier hf:{spec}"  # a bare spec is read as a --model
    return out
