"""Distillation: soft labels read from the manifests, targets at a temperature, the loss, the
benchmark's distilled arm."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from augment.datasets import get_dataset
from augment.downstream.benchmark import DEFAULT_TREATMENTS, _cell_key, default_treatments
from augment.downstream.benchmark_result import BenchmarkCell, Treatment, parse_treatment
from augment.downstream.mixing import MixedDataset, load_split, load_synthetic, make_mixed_dataset
from augment.downstream.train import TrainSettings, distill_loss, train_classifier
from augment.errors import AugmentError
from tests.downstream import make_digit_run


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def _next(c: int, i: int) -> tuple[list[int], list[float]]:
    """A soft label that puts most of the mass on the NEXT digit."""
    return [(c + 1) % 10, c], [0.8, 0.15]


def test_soft_labels_are_read_and_renormalised_at_a_temperature(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=2, soft=_next)
    syn = load_synthetic(run, digits.class_names)
    assert syn.soft[syn.labels.index(3)] == ([4, 3], [pytest.approx(0.8), pytest.approx(0.15)])
    t1 = syn.soft_targets(10, 1.0)
    row = t1[syn.labels.index(3)]
    assert row.sum().item() == pytest.approx(1.0) and row[4].item() == pytest.approx(0.8 / 0.95, abs=1e-6)
    assert (row > 0).sum().item() == 2  # top-k only
    hot = syn.soft_targets(10, 4.0)[syn.labels.index(3)]
    assert hot[3].item() > row[3].item() and hot[4].item() < row[4].item()  # a higher T flattens


def test_sets_without_soft_labels_refuse_distillation_in_one_line(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=1)  # no soft columns filled
    syn = load_synthetic(run, digits.class_names)
    assert syn.soft == [None] * 10
    with pytest.raises(AugmentError, match="10 of 10 images have no soft label.*regenerate"):
        make_mixed_dataset(digits, 0, synthetic=[run], distill_temperature=1.0)


def test_distilled_items_carry_targets_and_reals_keep_hard_labels(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=1, soft=_next)
    mixed = make_mixed_dataset(digits, 1, synthetic=[run], distill_temperature=1.0)
    img, label, weight, target = mixed[0]  # a real image
    assert target.sum().item() == 0
    img, label, weight, target = mixed[mixed.n_real]
    assert target.argmax().item() == (label + 1) % 10
    assert len(make_mixed_dataset(digits, 1, synthetic=[run])[0]) == 3  # no distillation: the 3-tuple
    with pytest.raises(AugmentError, match="distill-temperature must be > 0"):
        MixedDataset(mixed.images[:1], mixed.labels[:1], class_names=digits.class_names, distill_temperature=0)


def test_distill_loss_uses_soft_rows_and_hard_elsewhere():
    logits = torch.randn(3, 5, requires_grad=True)
    labels = torch.tensor([1, 2, 3])
    hard = F.cross_entropy(logits, labels, reduction="none")
    soft = torch.zeros(3, 5)
    soft[1, 2] = 1.0  # one-hot soft label at T=1: the hard loss
    soft[2] = torch.softmax(logits.detach()[2] / 2.0, 0)  # the student's own distribution at T=2
    loss = distill_loss(logits, hard, soft, 1.0)
    assert loss[0].item() == pytest.approx(hard[0].item()) and loss[1].item() == pytest.approx(hard[1].item())
    at_t2 = distill_loss(logits, hard, soft, 2.0)
    (grad,) = torch.autograd.grad(at_t2[2], logits)
    assert grad.abs().max().item() < 1e-5  # a student that already matches the targets gets no push


def test_distilled_training_learns_the_soft_labels(tmp_path, digits):
    """Synthetic digits whose soft labels point at the next digit: trained on their class the
    classifier reads digits right; distilled, it learns the soft labels' shift instead."""
    run = make_digit_run(tmp_path / "run", per_class=10, soft=_next)
    test = load_split(digits, "test", 32)
    settings = TrainSettings(arch="test_resnet", epochs=4, samples_per_epoch=400, batch_size=32, input_size=32,
                             lr=0.003)
    preds = {}
    for temp in (None, 1.0):
        mixed = make_mixed_dataset(digits, 0, synthetic=[run], input_size=32, distill_temperature=temp)
        model = train_classifier(mixed, *test, settings, progress=False).model.eval()
        with torch.no_grad():
            logits = model((test[0].float() / 255 - 0.5) / 0.5)
        preds[temp] = logits.argmax(1)
    shifted = (test[1] + 1) % 10
    assert (preds[None] == test[1]).float().mean() > (preds[None] == shifted).float().mean()
    assert (preds[1.0] == shifted).float().mean() > (preds[1.0] == test[1]).float().mean()


def test_distilled_arm_parses_labels_and_keeps_old_cache_keys():
    assert parse_treatment("token:distill") == Treatment("token", distill=True)
    assert parse_treatment("token:distill=2,conf=0.9") == Treatment("token", min_confidence=0.9, distill=True, temperature=2.0)
    resolved = parse_treatment("token:distill").resolved(0.5, 1.0, 0.0, 3.0)
    assert resolved.temperature == 3.0 and resolved.label == "real + token synthetic (p=0.5, distilled T=3)"
    assert parse_treatment("token").resolved(0.5, 1.0, 0.0, 3.0).temperature is None
    with pytest.raises(AugmentError, match="temperature must be > 0"):
        parse_treatment("token:distill=0")
    assert "token:distill" in DEFAULT_TREATMENTS
    # an arm without distillation hashes as before the fields existed; a line written then still reads
    assert _cell_key(Treatment("real"), 0, 0, TrainSettings(), None, "digits") == "f6f6b8f1625a794d42206f34"
    assert _cell_key(Treatment("token", distill=True, temperature=1.0), 0, 0, TrainSettings(), None, "digits") != \
        _cell_key(Treatment("token"), 0, 0, TrainSettings(), None, "digits")
    old = {"key": "k", "arm": "real only", "arm_spec": {"source": "real", "prob": None, "weight": None,
           "min_confidence": None}, "k": 3, "seed": 0, "top1": 0.5, "top5": 0.9, "mean_class_top1": 0.5,
           "real": 30, "synthetic": 0, "seconds": 1.0}
    assert BenchmarkCell.from_json(old).arm_spec == Treatment("real")


def test_default_arms_skip_distillation_for_runs_without_soft_labels(tmp_path):
    old = make_digit_run(tmp_path / "old", per_class=1)
    new = make_digit_run(tmp_path / "new", per_class=1, soft=_next)
    notes: list[str] = []
    assert "token:distill" not in default_treatments(old, notes.append) and "no soft labels" in notes[0]
    assert default_treatments(new, notes.append) == DEFAULT_TREATMENTS
