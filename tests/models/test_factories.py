"""The backbone and classifier factories on micro fixtures, and every bad spec they must refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from augment.errors import AugmentError
from augment.models.backbone import load_backbone, native_resolution
from augment.models.classifier import ClassifierSource, check_classes, load_classifier, read_classifier_source


def test_backbone_loads_from_folder_and_generates(micro_pipe):
    assert type(micro_pipe).__name__ == "StableDiffusionPipeline"
    assert type(micro_pipe.scheduler).__name__ == "DDIMScheduler"
    assert native_resolution(micro_pipe) == 32
    out = micro_pipe("a photo of a cat", num_inference_steps=2, guidance_scale=2.0, output_type="pt",
                     generator=torch.Generator().manual_seed(0), height=32, width=32)
    assert out.images.shape == (1, 3, 32, 32)
    assert torch.isfinite(out.images).all()


def test_backbone_other_scheduler(micro_pipeline_dir):
    pipe = load_backbone(str(micro_pipeline_dir), scheduler="euler")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("embedded:nope", "unknown embedded model"),
        ("not a spec!", "cannot read model spec"),
        ("someone/not-cached-model", "not in the local Hugging Face cache"),
    ],
)
def test_backbone_bad_specs(spec, fragment, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(AugmentError, match=fragment):
        load_backbone(spec)


def test_backbone_folder_without_model_index(tmp_path):
    with pytest.raises(AugmentError, match="model_index.json"):
        load_backbone(str(tmp_path))


SDXL_INDEX = {"_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.42.1",
              "text_encoder": ["transformers", "CLIPTextModel"],
              "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
              "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}


@pytest.mark.parametrize("name", ["StableDiffusionXLPipeline", "StableDiffusion3Pipeline",
                                  "StableDiffusionInpaintPipeline"])
def test_backbone_other_pipeline_classes_refused_before_loading(name, tmp_path):
    from augment.models.backbone import resolve_backbone_path

    (tmp_path / "model_index.json").write_text(json.dumps(SDXL_INDEX | {"_class_name": name}))
    for call in (lambda: resolve_backbone_path(str(tmp_path)), lambda: load_backbone(str(tmp_path))):
        with pytest.raises(AugmentError) as e:
            call()
        msg = str(e.value)
        assert "\n" not in msg and f"{tmp_path} is a {name}; augment supports Stable Diffusion 1.x/2.x" in msg
        assert "(StableDiffusionPipeline)" in msg


def test_backbone_sdxl_from_the_hub_cache_refused(tmp_path, monkeypatch):
    """A hub id resolves through the local cache; the class check applies to that snapshot too."""
    from augment.models.backbone import resolve_backbone_path

    repo = tmp_path / "hub" / "models--someone--sdxl"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    (repo / "snapshots" / ("0" * 40) / "model_index.json").write_text(json.dumps(SDXL_INDEX))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(AugmentError, match="someone/sdxl is a StableDiffusionXLPipeline; augment supports"):
        resolve_backbone_path("someone/sdxl")
    with pytest.raises(AugmentError, match="hf:someone/sdxl is a StableDiffusionXLPipeline"):
        resolve_backbone_path("hf:someone/sdxl")


def test_backbone_supported_classes_pass(micro_pipeline_dir, tmp_path):
    from augment.models.backbone import resolve_backbone_path

    assert resolve_backbone_path(str(micro_pipeline_dir)) == str(micro_pipeline_dir)
    assert resolve_backbone_path("embedded:tiny-digits").endswith("tiny-digits")
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(AugmentError, match="cannot read .*model_index.json"):
        resolve_backbone_path(str(tmp_path))


def test_classifier_from_checkpoint_is_differentiable(micro_classifier):
    assert micro_classifier.class_names == ["cat", "dog", "bird"]
    assert micro_classifier.num_classes == 3
    x = torch.rand(2, 3, 48, 48, requires_grad=True)
    logits = micro_classifier(x)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in micro_classifier.parameters())


def test_classifier_pth_checkpoint_weights_only(micro_classifier_path, tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(micro_classifier_path))
    pth = tmp_path / "clf.pth"
    torch.save({"state_dict": sd}, pth)
    clf = load_classifier(f"timm:test_resnet@{pth}")
    assert clf.num_classes == 3
    assert clf.class_names is None  # no sidecar: names come from the dataset


def test_classifier_refuses_pickled_objects(tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model": torch.nn.Linear(2, 2)}, bad)  # a pickled module, not a state dict
    with pytest.raises(AugmentError, match="cannot load checkpoint"):
        load_classifier(f"timm:test_resnet@{bad}")


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("resnet18", "cannot read classifier spec"),
        ("timm:no_such_arch_xyz", "unknown timm architecture"),
        ("timm:test_resnet@/nonexistent/ckpt.safetensors", "does not exist"),
        ("embedded:nope", "unknown embedded classifier"),
        ("hf:/nonexistent/folder", "cannot load transformers classifier"),
    ],
)
def test_classifier_bad_specs(spec, fragment):
    with pytest.raises(AugmentError, match=fragment):
        load_classifier(spec)


def test_classifier_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(AugmentError, match="cannot load checkpoint"):
        load_classifier(f"timm:test_resnet@{bad}")


def test_class_count_mismatch_names_both_numbers(micro_classifier):
    with pytest.raises(AugmentError, match="3 outputs but the dataset has 10 classes"):
        check_classes(micro_classifier, [str(i) for i in range(10)])
    check_classes(micro_classifier, ["a", "b", "c"])


def test_hf_classifier_from_local_folder(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification

    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=16, num_labels=2, id2label={0: "tabby cat", 1: "golden retriever"},
                    label2id={"tabby cat": 0, "golden retriever": 1})
    ViTForImageClassification(cfg).save_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 16, "width": 16}}))
    clf = load_classifier(f"hf:{tmp_path}")
    assert clf.class_names == ["tabby cat", "golden retriever"]
    assert clf.data.input_size == (16, 16)
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    clf(x).sum().backward()
    assert x.grad is not None and clf(x).shape == (3, 2)


def test_embedded_backbone_spec_resolves():
    pipe = load_backbone("embedded:tiny-digits")
    assert native_resolution(pipe) == 32
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"


@pytest.mark.parametrize("name", ["digits-guide", "digits-judge"])
def test_embedded_classifiers_through_the_factory(name):
    import numpy as np

    from augment.datasets.digits import DigitsDataset

    clf = load_classifier(f"embedded:{name}")
    ds = DigitsDataset()
    samples = ds.samples("test")
    x = torch.stack([torch.from_numpy(np.asarray(ds.load_image(s))).permute(2, 0, 1) for s in samples]).float() / 255
    y = torch.tensor([s.label for s in samples])
    with torch.no_grad():
        acc = (clf(x).argmax(1) == y).float().mean().item()
    assert clf.class_names == ds.class_names
    assert acc >= 0.95, acc


def test_backbone_hub_id_resolves_from_local_cache(micro_pipeline_dir, tmp_path, monkeypatch):
    import shutil

    repo = tmp_path / "hub" / "models--someone--micro-sd"
    shutil.copytree(micro_pipeline_dir, repo / "snapshots" / ("0" * 40))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    pipe = load_backbone("someone/micro-sd")
    assert native_resolution(pipe) == 32
    assert load_backbone("hf:someone/micro-sd").augment_spec == "hf:someone/micro-sd"


def _copy_checkpoint(src, folder):
    import shutil

    folder.mkdir()
    shutil.copy(src, folder / src.name)
    shutil.copy(src.with_suffix(".json"), folder / src.with_suffix(".json").name)
    return folder / src.name


def test_classifier_source_builds_the_classifier_without_the_files(micro_classifier_path, tmp_path):
    """A worker node that cannot see the checkpoint builds the same classifier from the driver's bytes."""
    import pickle
    import shutil

    ckpt = _copy_checkpoint(micro_classifier_path, tmp_path / "ckpt")
    spec = f"timm:test_resnet@{ckpt}"
    local = load_classifier(spec)
    source = pickle.loads(pickle.dumps(read_classifier_source(spec)))  # as it crosses to a worker
    assert sorted(source.files) == ["clf.json", "clf.safetensors"] and source.nbytes > 1000
    shutil.rmtree(tmp_path / "ckpt")
    remote = load_classifier(source)
    x = torch.rand(2, 3, 32, 32)
    assert remote.class_names == local.class_names == ["cat", "dog", "bird"] and remote.spec == spec
    assert torch.equal(remote(x), local(x))
    with pytest.raises(AugmentError, match="does not exist"):
        read_classifier_source(spec)  # the driver reads the files, and says so when they are gone


def test_classifier_source_of_a_sidecar_named_after_the_full_file(micro_classifier_path, tmp_path):
    import shutil

    (tmp_path / "c").mkdir()
    pth = tmp_path / "c" / "w.pth"
    from safetensors.torch import load_file

    torch.save(load_file(str(micro_classifier_path)), pth)
    shutil.copy(micro_classifier_path.with_suffix(".json"), str(pth) + ".json")
    source = read_classifier_source(f"timm:test_resnet@{pth}")
    assert sorted(source.files) == ["w.pth", "w.pth.json"]
    shutil.rmtree(tmp_path / "c")
    assert load_classifier(source).class_names == ["cat", "dog", "bird"]


def test_hf_classifier_source_from_a_folder_that_is_gone(tmp_path):
    import shutil

    from transformers import ViTConfig, ViTForImageClassification

    folder = tmp_path / "vit"
    cfg = ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=16, num_labels=2, id2label={0: "tabby cat", 1: "golden retriever"},
                    label2id={"tabby cat": 0, "golden retriever": 1})
    ViTForImageClassification(cfg).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "size": {"height": 16, "width": 16}}))
    local = load_classifier(f"hf:{folder}")
    source = read_classifier_source(f"hf:{folder}")
    assert "config.json" in source.files and "preprocessor_config.json" in source.files
    shutil.rmtree(folder)
    remote = load_classifier(source)
    x = torch.rand(2, 3, 32, 32)
    assert remote.class_names == ["tabby cat", "golden retriever"] and remote.data.input_size == (16, 16)
    torch.testing.assert_close(remote(x), local(x))


def test_sources_of_specs_every_node_resolves_carry_no_files():
    assert read_classifier_source("embedded:digits-guide") == ClassifierSource("embedded:digits-guide")
    assert read_classifier_source("timm:resnet18").files == {}
    assert read_classifier_source("hf:someone/some-vit").files == {}
    assert load_classifier(ClassifierSource("embedded:digits-guide")).num_classes == 10
    for bad in ("", None):
        for read in (read_classifier_source, load_classifier):
            with pytest.raises(AugmentError, match="no classifier given"):
                read(bad)
    with pytest.raises(AugmentError, match="cannot read classifier spec 'resnet18'"):
        read_classifier_source("resnet18")


def test_backbone_missing_on_a_worker_node_names_the_node(monkeypatch, tmp_path):
    """The driver's preflight found the model; a worker's node that lacks it says which node and what."""
    import augment.models.backbone as backbone

    monkeypatch.setattr(backbone, "node_label", lambda: "node gpu-7 (10.0.0.7)")
    with pytest.raises(AugmentError, match=r"^model folder /nonexistent/sd does not exist on node gpu-7 "
                                           r"\(10\.0\.0\.7\): a --model path must exist"):
        load_backbone("/nonexistent/sd")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(AugmentError, match=r"^on node gpu-7 \(10\.0\.0\.7\): model 'someone/absent' is not in "
                                           r"the local Hugging Face cache"):
        load_backbone("someone/absent")
    monkeypatch.setattr(backbone, "node_label", lambda: None)  # on the driver: no node named
    with pytest.raises(AugmentError, match="^model folder /nonexistent/sd does not exist; check the path"):
        load_backbone("/nonexistent/sd")


class _Touch:
    """A pickle that creates ``path`` when unpickled: what a hostile checkpoint would do."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("kind", ["pth-pickle", "pth-torch-save", "safetensors-named-pickle", "hf-bin"])
def test_a_hostile_pickle_is_refused_without_running_it(kind, tmp_path):
    import pickle

    marker = tmp_path / "pwned"
    if kind == "hf-bin":
        from transformers import ViTConfig, ViTForImageClassification

        folder = tmp_path / "hf"
        ViTForImageClassification(ViTConfig(image_size=16, patch_size=8, hidden_size=16, num_hidden_layers=1,
                                            num_attention_heads=2, intermediate_size=16, num_labels=2)
                                  ).save_pretrained(folder)
        (folder / "model.safetensors").unlink()
        torch.save({"vit.embeddings.cls_token": _Touch(marker)}, folder / "pytorch_model.bin")
        spec = f"hf:{folder}"
    else:
        path = tmp_path / ("evil.safetensors" if kind.startswith("safetensors") else "evil.pth")
        if kind == "pth-torch-save":
            torch.save({"state_dict": {"w": _Touch(marker)}}, path)
        else:
            path.write_bytes(pickle.dumps({"w": _Touch(marker)}))
        spec = f"timm:test_resnet@{path}"
    assert not marker.exists()
    with pytest.raises(AugmentError) as e:
        load_classifier(read_classifier_source(spec))
    assert "\n" not in e.value.message
    assert not marker.exists()  # refused before anything in the pickle ran
