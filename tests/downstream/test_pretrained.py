"""Downstream training as the literature does it: train.pretrained (timm weights from the local
Hugging Face cache, or timm:<arch>@<file>) and timm's train transform above 64 px."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from augment.config import resolve_config
from augment.datasets import get_dataset
from augment.downstream.mixing import load_split, make_mixed_dataset
from augment.downstream.train import TrainSettings, create_classifier, train_classifier
from augment.downstream.transforms import training_recipe
from augment.errors import AugmentError

NAME = "test_resnet.r160_in1k"  # timm's tiny ResNet; its pretrained_cfg points at hf hub timm/test_resnet.r160_in1k


def plant_hub_entry(cache: Path, repo: str, files: dict[str, bytes], commit: str = "0" * 40) -> Path:
    """A Hugging Face hub cache entry as ``hf download`` leaves it: ``models--<org>--<name>/``
    with ``refs/main`` holding the commit and ``snapshots/<commit>/<file>`` (huggingface_hub's
    ``file_download`` layout; real caches link snapshots to ``blobs/``, a plain file reads the same)."""
    entry = cache / ("models--" + repo.replace("/", "--"))
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    snap = entry / "snapshots" / commit
    snap.mkdir(parents=True)
    for name, data in files.items():
        (snap / name).write_bytes(data)
    return entry


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    return cache


@pytest.fixture
def planted(hub_cache):
    """Weights of ``NAME`` (1000 classes) planted in the cache; returns their state dict."""
    import timm
    from safetensors.torch import save

    torch.manual_seed(123)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    plant_hub_entry(hub_cache, f"timm/{NAME}", {"model.safetensors": save(state)})
    return state


def test_pretrained_loads_the_weights_it_names_from_the_local_cache(planted):
    settings = TrainSettings(arch="test_resnet", pretrained=NAME, input_size=32)
    model, note = create_classifier(settings, 3)
    assert note["pretrained"] == NAME and note["weights"].endswith("model.safetensors")
    got = model.state_dict()
    body = [k for k in planted if not k.startswith("fc.")]
    assert body and all(torch.equal(got[k], planted[k]) for k in body)
    assert got["fc.weight"].shape == (3, planted["fc.weight"].shape[1])  # a fresh head for 3 classes
    scratch, _ = create_classifier(TrainSettings(arch="test_resnet", input_size=32), 3)
    assert not torch.equal(scratch.state_dict()["conv1.0.weight"], planted["conv1.0.weight"])


def test_training_starts_from_the_planted_weights(planted, tmp_path):
    digits = get_dataset("digits")
    mixed = make_mixed_dataset(digits, k=1, seed=0, input_size=32)
    test = load_split(digits, "test", 32)
    settings = TrainSettings(arch="test_resnet", pretrained=NAME, input_size=32, epochs=1, samples_per_epoch=8,
                             batch_size=8, lr=0.0, weight_decay=0.0)
    res = train_classifier(mixed, test[0][:20], test[1][:20], settings, out=tmp_path / "out", progress=False)
    assert res.metrics.to_json()["init"]["pretrained"] == NAME
    state = res.model.state_dict()
    assert torch.equal(state["conv1.0.weight"].cpu(), planted["conv1.0.weight"])  # lr 0: still the planted ones
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["config"]["train"]["pretrained"] == NAME


def test_missing_cache_entry_is_one_line_with_the_download_command(hub_cache):
    with pytest.raises(AugmentError, match=r"not in the local Hugging Face cache; .*`hf download timm/test_resnet\.r160_in1k`"):
        create_classifier(TrainSettings(arch="test_resnet", pretrained=NAME), 3)
    with pytest.raises(AugmentError, match=r"train.pretrained 'resnet50.a1_in1k' is not a test_resnet"):
        create_classifier(TrainSettings(arch="test_resnet", pretrained="resnet50.a1_in1k"), 3)


def test_pretrained_from_a_checkpoint_file(tmp_path, planted):
    from safetensors.torch import save_file

    save_file(planted, str(tmp_path / "w.safetensors"))
    model, note = create_classifier(
        TrainSettings(arch="test_resnet", pretrained=f"timm:test_resnet@{tmp_path / 'w.safetensors'}"), 4)
    assert torch.equal(model.state_dict()["conv1.0.weight"], planted["conv1.0.weight"])
    assert note["reinitialised"] == ["fc.bias", "fc.weight"]


def test_scratch_runs_record_no_pretrained_key():
    """A setting added later leaves the recorded config of runs that do not use it as it was."""
    assert "pretrained" not in TrainSettings(arch="test_resnet").to_dict()
    assert "pretrained" not in resolve_config(dataset="digits").to_dict()["train"]


def test_large_inputs_use_timm_transform_and_the_backbone_normalisation(tmp_path, mixed_folder):
    import timm

    model = timm.create_model("test_resnet", pretrained=False, num_classes=2)
    small = training_recipe(TrainSettings(input_size=64), model)
    assert small.batch is not None and small.sample is None
    big = training_recipe(TrainSettings(input_size=72, hflip=0.5), model)
    assert big.batch is None and big.mean == list(model.pretrained_cfg["mean"])
    out = big.sample(torch.zeros(3, 72, 72, dtype=torch.uint8))
    assert out.shape == (3, 72, 72) and out.dtype == torch.float32
    # a folder of mixed sizes and modes trains at 72 px
    ds = get_dataset("folder", data_root=mixed_folder)
    mixed = make_mixed_dataset(ds, k=2, seed=0, input_size=72)
    test = load_split(ds, "train", 72)
    settings = TrainSettings(arch="test_resnet", input_size=72, epochs=1, samples_per_epoch=4, batch_size=4)
    res = train_classifier(mixed, *test, settings, out=tmp_path / "out", progress=False)
    side = json.loads((tmp_path / "out" / "best.json").read_text())
    assert side["mean"] == big.mean and side["input_size"] == [3, 72, 72]
    assert res.metrics.to_json()["test"]["n"] == 8


def test_real_dataset_presets_start_pretrained_at_224(monkeypatch):
    monkeypatch.setenv("AUGMENT_PIPELINES", str(Path(__file__).resolve().parents[2] / "pipelines"))
    for name in ("cub", "inat", "imagenet", "folder"):
        train = resolve_config(dataset=name).train
        assert train.pretrained and train.input_size == 224 and train.hflip > 0, name
    digits = resolve_config(dataset="digits").train
    assert digits.pretrained is None and digits.input_size == 32
