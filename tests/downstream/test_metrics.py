"""Classification metrics and FID/KID on known inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from augment.downstream.metrics import classification_metrics, fid, kid


def test_classification_metrics_on_known_logits():
    # 3 classes; predictions: 0->0, 0->1, 1->1, 2->0
    logits = torch.tensor([[3.0, 1, 0], [1, 3, 2], [0, 3, 1], [2, 0, 1]])
    labels = torch.tensor([0, 0, 1, 2])
    m = classification_metrics(logits, labels, ["a", "b", "c"])
    assert m["n"] == 4
    assert m["top1"] == pytest.approx(0.5)
    assert m["top5_k"] == 3 and m["top5"] == 1.0
    assert m["per_class_top1"] == {"a": 0.5, "b": 1.0, "c": 0.0}
    assert m["mean_class_top1"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]


def test_top5_uses_five_best():
    logits = torch.arange(10.0).repeat(2, 1)  # best: 9, 8, 7, 6, 5
    m = classification_metrics(logits, torch.tensor([5, 4]), [str(i) for i in range(10)])
    assert m["top5"] == 0.5 and m["top1"] == 0.0


def test_class_without_samples_is_none():
    m = classification_metrics(torch.tensor([[1.0, 0]]), torch.tensor([0]), ["a", "b"])
    assert m["per_class_top1"]["b"] is None and m["mean_class_top1"] == 1.0


def test_fid_zero_for_same_set_and_mean_shift_for_shifted():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2000, 4))
    assert fid(a, a) == pytest.approx(0.0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, 0.0])
    assert fid(a, a + shift) == pytest.approx(5.0, rel=1e-6)  # covariances equal: |mu1 - mu2|^2


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, _ = kid(a, b, subsets=20, subset_size=200)
    diff, _ = kid(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.05 and diff > 0.5
