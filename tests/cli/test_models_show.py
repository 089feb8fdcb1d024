"""`augment models show SPEC` describes any spec from its configs, no weights read
(augment.models.describe): pipeline folders, hub ids in the local cache, timm, hf, embedded."""

from __future__ import annotations

import shutil

import pytest
import yaml
from click.testing import CliRunner

from augment.cli import cli


def show(spec: str) -> dict:
    r = CliRunner().invoke(cli, ["models", "show", spec], prog_name="augment")
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.stdout)


def show_error(spec: str) -> str:
    r = CliRunner().invoke(cli, ["models", "show", spec], prog_name="augment")
    assert r.exit_code == 2, r.output
    (line,) = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert line.startswith("Error: ")
    return line


def _configs_only(src, dst):
    """A copy of a pipeline folder with its JSON files only: what `hf download ID --include "*.json"` gets."""
    for path in src.rglob("*.json"):
        (dst / path.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dst / path.relative_to(src))
    return dst


def test_pipeline_folder(micro_pipeline_dir):
    d = show(str(micro_pipeline_dir))
    assert d["kind"] == "backbone" and d["pipeline"] == "StableDiffusionPipeline" and d["supported"] is True
    assert d["components"]["unet"] == "diffusers.UNet2DConditionModel"
    assert d["resolution"] == 32  # 8x8 latents, a 3-level VAE
    assert d["text_encoder_hidden_size"] == 32


def test_hub_id_from_the_cache_configs_only(micro_pipeline_dir, tmp_path, monkeypatch):
    """A hub id is read from the local cache, where its configs alone are enough; no weight file exists."""
    cache = tmp_path / "hub"
    snap = cache / "models--someone--tiny-sd" / "snapshots" / ("a" * 40)
    _configs_only(micro_pipeline_dir, snap)
    (cache / "models--someone--tiny-sd" / "refs").mkdir()
    (cache / "models--someone--tiny-sd" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert not list(snap.rglob("*.safetensors"))
    d = show("someone/tiny-sd")
    assert d["pipeline"] == "StableDiffusionPipeline" and d["resolution"] == 32
    assert "someone/tiny-sd" in d["where"]
    assert show("hf:someone/tiny-sd")["components"] == d["components"]


def test_hub_id_not_cached_says_how_to_get_its_configs(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    line = show_error("stabilityai/stable-diffusion-2-1-base")
    assert "not in the local Hugging Face cache" in line
    assert 'hf download stabilityai/stable-diffusion-2-1-base --include "*.json"' in line


def test_unsupported_pipeline_class_is_shown_with_a_note(micro_pipeline_dir, tmp_path):
    folder = _configs_only(micro_pipeline_dir, tmp_path / "xl")
    index = folder / "model_index.json"
    index.write_text(index.read_text().replace('"StableDiffusionPipeline"', '"StableDiffusionXLPipeline"'))
    d = show(str(folder))
    assert d["supported"] is False and "StableDiffusionPipeline" in d["note"]


def test_timm_checkpoint_outputs_and_names(micro_classifier_path, tmp_path):
    d = show(f"timm:test_resnet@{micro_classifier_path}")
    assert d["kind"] == "classifier" and d["outputs"] == 3
    assert d["class_names"] == ["cat", "dog", "bird"] and d["checkpoint"]["sidecar"] is True
    bare = tmp_path / "bare.safetensors"
    shutil.copy(micro_classifier_path, bare)  # no sidecar: the count from the safetensors header
    d = show(f"timm:test_resnet@{bare}")
    assert d["outputs"] == 3 and d["checkpoint"]["sidecar"] is False and "class_names" not in d


def test_timm_pretrained_config():
    d = show("timm:resnet18")
    assert d["pretrained"]["num_classes"] == d["outputs"] == 1000
    assert d["pretrained"]["input_size"] == [3, 224, 224]


def test_transformers_folder(tmp_path):
    from transformers import ViTConfig

    ViTConfig(num_labels=4, id2label={i: f"c{i}" for i in range(4)}).save_pretrained(tmp_path / "vit")
    d = show(f"hf:{tmp_path / 'vit'}")
    assert d["library"] == "transformers" and d["outputs"] == 4 and d["class_names"] == ["c0", "c1", "c2", "c3"]
    assert show(str(tmp_path / "vit"))["use_as"] == f"--classifier hf:{tmp_path / 'vit'}"


def test_embedded_cards():
    assert show("embedded:digits-guide")["kind"] == "classifier"
    assert show("embedded:tiny-digits")["kind"] == "backbone"


@pytest.mark.parametrize("spec, fragment", [
    ("embedded:nope", "no embedded model"),
    ("/no/such/folder", "/no/such/folder does not exist"),
    ("timm:not_an_arch", "unknown timm architecture"),
    ("timm:test_resnet@/no/ckpt.safetensors", "/no/ckpt.safetensors does not exist"),
    ("clip:ViT-B-32", "ViT-B-32 does not exist"),
])
def test_bad_specs_one_line(spec, fragment):
    assert fragment in show_error(spec)


def test_empty_folder_says_what_it_lacks(tmp_path):
    assert "neither model_index.json" in show_error(str(tmp_path))
