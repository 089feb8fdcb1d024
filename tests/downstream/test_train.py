"""train_classifier on a tiny mix: metrics, checkpoint in the classifier-loader format, init from a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from augment.datasets import get_dataset
from augment.downstream.mixing import load_split, make_mixed_dataset
from augment.downstream.train import TrainSettings, create_classifier, train_classifier
from augment.errors import AugmentError
from tests.downstream import make_digit_run

TINY = dict(arch="test_resnet", epochs=2, samples_per_epoch=64, batch_size=32, input_size=32)


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def test_split(digits):
    images, labels = load_split(digits, "test", 32)
    return images[:100], labels[:100]


def test_train_writes_metrics_and_loadable_checkpoint(tmp_path, digits, test_split):
    run = make_digit_run(tmp_path / "run", per_class=2)
    mixed = make_mixed_dataset(digits, k=1, seed=0, synthetic=[run], synthetic_prob=0.5, synthetic_weight=0.5)
    settings = TrainSettings(**TINY)
    res = train_classifier(mixed, *test_split, settings, out=tmp_path / "out", progress=False, extra={"real_k": 1})
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [h["epoch"] for h in m["history"]] == [1, 2]
    for part in ("final", "best"):
        assert 0.0 <= m[part]["top1"] <= m[part]["top5"] <= 1.0
        assert len(m[part]["confusion_matrix"]) == 10
        assert sum(map(sum, m[part]["confusion_matrix"])) == 100
        assert set(m[part]["per_class_top1"]) == set(digits.class_names)
    assert m["best"]["top1"] == max(h["test_top1"] for h in m["history"]) == pytest.approx(res.best_top1)
    assert m["final"]["top1"] == pytest.approx(m["history"][-1]["test_top1"])
    assert m["data"]["real"] == 10 and m["data"]["synthetic"] == 20 and m["data"]["synthetic_weight"] == 0.5
    assert m["config"]["train"]["arch"] == "test_resnet" and m["config"]["real_k"] == 1
    # the typed result is the file, and reads back from it
    from augment.downstream.train_metrics import load_metrics

    assert res.metrics.to_json() == m and load_metrics(tmp_path / "out" / "metrics.json") == res.metrics

    side = json.loads((tmp_path / "out" / "best.json").read_text())
    assert {"arch", "kwargs", "class_names", "input_size", "mean", "std", "crop_pct"} <= set(side)
    from augment.models.classifier import load_classifier

    clf = load_classifier(f"timm:test_resnet@{tmp_path / 'out' / 'best.safetensors'}")
    assert clf.class_names == digits.class_names and clf.num_classes == 10
    # the saved checkpoint is the best epoch: it reproduces the best top-1 through the loader
    with torch.no_grad():
        pred = clf(test_split[0].float() / 255).argmax(1)
    assert float((pred == test_split[1]).float().mean()) == pytest.approx(res.best_top1)


def test_training_is_deterministic_for_a_seed(digits, test_split):
    mixed = make_mixed_dataset(digits, k=2, seed=0)
    a = train_classifier(mixed, *test_split, TrainSettings(**TINY, seed=4), progress=False)
    b = train_classifier(mixed, *test_split, TrainSettings(**TINY, seed=4), progress=False)
    assert a.metrics.history[-1].loss == b.metrics.history[-1].loss


def test_checkpoint_init_reinitialises_a_head_of_another_size(tmp_path):
    from augment.downstream.train import save_checkpoint, sidecar

    s3 = TrainSettings(arch="test_resnet")
    model3, _ = create_classifier(s3, 3)
    save_checkpoint(model3, tmp_path / "c.safetensors", sidecar(s3, ["a", "b", "c"]))
    model10, note = create_classifier(TrainSettings(arch="test_resnet", checkpoint=str(tmp_path / "c.safetensors")), 10)
    assert note["reinitialised"] == ["fc.bias", "fc.weight"]
    key = "conv1.0.weight"
    assert torch.equal(model10.state_dict()[key], model3.state_dict()[key])
    with pytest.raises(AugmentError, match="does not fit"):
        create_classifier(TrainSettings(arch="resnet10t", checkpoint=str(tmp_path / "c.safetensors")), 10)


def test_checkpoint_read_by_the_driver_needs_no_file_on_the_worker(tmp_path):
    """Issue 11: benchmark actors read train.checkpoint by path; now the driver ships its bytes."""
    import pickle

    from augment.downstream.train import read_checkpoint, save_checkpoint, sidecar

    s3 = TrainSettings(arch="test_resnet")
    model3, _ = create_classifier(s3, 3)
    path = save_checkpoint(model3, tmp_path / "c.safetensors", sidecar(s3, ["a", "b", "c"]))
    settings = TrainSettings(arch="test_resnet", checkpoint=str(path))
    shipped = pickle.loads(pickle.dumps(read_checkpoint(settings)))  # as it crosses to an actor
    path.unlink()  # the worker's node does not have it
    model, note = create_classifier(settings, 3, shipped)
    assert note["checkpoint"] == str(path)
    for key, value in model3.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(AugmentError, match=r"c.safetensors \(train.checkpoint\) does not exist"):
        read_checkpoint(settings)
    assert read_checkpoint(TrainSettings(arch="test_resnet")) is None


def test_bad_settings():
    with pytest.raises(AugmentError, match="unknown timm architecture"):
        create_classifier(TrainSettings(arch="resnet_does_not_exist"), 10)
    with pytest.raises(AugmentError, match="--epochs"):
        TrainSettings(epochs=0).validate()


def test_eval_every_zero_tests_only_after_the_last_epoch(digits, test_split):
    mixed = make_mixed_dataset(digits, k=1, seed=0)
    res = train_classifier(mixed, *test_split, TrainSettings(**{**TINY, "epochs": 3}, eval_every=0), progress=False)
    assert [h.test_top1 is None for h in res.metrics.history] == [True, True, False]
    assert res.best_epoch == 3 and res.metrics.best.top1 == res.metrics.final.top1 == res.final_top1


#: TrainSettings.to_dict() before TrainSettings became TrainConfig + seed + device: metrics.json's
#: config.train and the benchmark's cell keys depend on exactly these entries
OLD_TO_DICT = {
    "arch": "resnet18", "arch_kwargs": {}, "batch_size": 64, "checkpoint": None, "degrees": 10.0, "device": "cpu",
    "epochs": 30, "eval_batch_size": 500, "eval_every": 1, "hflip": 0.0, "input_size": 32, "label_smoothing": 0.0,
    "lr": 0.001, "mean": [0.5, 0.5, 0.5], "opt": "adamw", "pad": 2, "samples_per_epoch": None, "scale": [0.9, 1.1],
    "sched": "cosine", "seed": 0, "std": [0.5, 0.5, 0.5], "warmup_epochs": 0, "weight_decay": 0.05,
}


def test_settings_are_the_config_plus_seed_and_device():
    from augment.config import TrainConfig

    assert TrainSettings().to_dict() == OLD_TO_DICT
    tc = TrainConfig(epochs=3, hflip=0.5, synthetic_prob=0.2)
    s = TrainSettings.from_config(tc, samples_per_epoch=None, hflip=None, seed=7, device="cpu")
    assert (s.epochs, s.hflip, s.seed, s.synthetic_prob) == (3, 0.5, 7, 0.2)  # None overrides: not given
    assert s.to_dict() == {**OLD_TO_DICT, "epochs": 3, "hflip": 0.5, "seed": 7}
    with pytest.raises(AugmentError, match="--hflip"):
        TrainSettings.from_config(tc, hflip=2.0)
    with pytest.raises(AugmentError, match="--samples-per-epoch"):
        TrainConfig(samples_per_epoch=0).validate()
    # `augment config` dumps the config as YAML: no tuples in it
    import dataclasses

    import yaml

    assert yaml.safe_load(yaml.safe_dump(dataclasses.asdict(TrainConfig())))["scale"] == [0.9, 1.1]
