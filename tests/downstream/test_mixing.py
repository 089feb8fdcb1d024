"""The mixing loader: labels by class name, confidence filter, sampling ratio, weights, bad input."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from augment.datasets import get_dataset
from augment.datasets.digits import DIGIT_NAMES
from augment.downstream.mixing import (
    MixedDataset,
    MixSampler,
    load_synthetic,
    make_mixed_dataset,
    mixed_loader,
    read_synthetic_images,
    stream_mixed,
)
from augment.errors import AugmentError
from tests.downstream import digit_png, make_digit_run


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


def test_labels_follow_class_names_not_indices(tmp_path, digits):
    # digit c is stored under manifest class index 9 - c, with its true name
    run = make_digit_run(tmp_path / "run", per_class=2, index_of=lambda c: 9 - c)
    syn = load_synthetic(run, digits.class_names)
    for key, label in zip(syn.keys, syn.labels, strict=True):
        stored_index = int(key[1:5])
        assert label == 9 - stored_index
    images = read_synthetic_images(syn)
    # the image under a key is the digit its label says
    i = syn.labels.index(3)
    want = torch.from_numpy(
        np.array(Image.open(io.BytesIO(digit_png(3, int(syn.keys[i][-6:])))).convert("RGB"))
    ).permute(2, 0, 1)
    assert torch.equal(images[i], want)


def test_names_are_matched_case_and_space_insensitively(tmp_path, digits):
    names = [f"  {n.upper()} " for n in DIGIT_NAMES]
    run = make_digit_run(tmp_path / "run", per_class=1, names=names)
    assert load_synthetic(run, digits.class_names).labels == list(range(10))


def test_mismatched_class_names_are_refused_naming_them(tmp_path, digits):
    names = list(DIGIT_NAMES)
    names[2], names[7] = "deux", "sept"
    run = make_digit_run(tmp_path / "run", per_class=1, names=names)
    with pytest.raises(AugmentError) as e:
        load_synthetic(run, digits.class_names)
    msg = str(e.value)
    assert "'deux' (class 2)" in msg and "'sept' (class 7)" in msg and "'zero'" in msg


def test_confidence_filter_counts_kept_and_dropped(tmp_path, digits):
    # confidence i/10 for sample i (0..9); sample 9 has none
    run = make_digit_run(tmp_path / "run", per_class=10, confidence=lambda c, i: None if i == 9 else i / 10)
    syn = load_synthetic(run, digits.class_names, min_confidence=0.5)
    assert syn.total == 100
    assert syn.kept == 40  # i = 5, 6, 7, 8
    assert syn.dropped == {"guide_confidence < 0.5": 50, "no guide_confidence": 10}
    assert all(c >= 0.5 for c in syn.confidence)
    assert load_synthetic(run, digits.class_names).kept == 100  # no filter keeps rows without confidence


def test_empty_after_filter_says_how_many_and_why(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=2, confidence=lambda c, i: 0.3)
    with pytest.raises(AugmentError, match=r"20 of 20 dropped: 20 with guide_confidence < 0.95"):
        load_synthetic(run, digits.class_names, min_confidence=0.95)


def test_folder_without_shards_is_refused(tmp_path, digits):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AugmentError, match="no complete shards"):
        load_synthetic(tmp_path / "empty", digits.class_names)
    with pytest.raises(AugmentError, match="does not exist"):
        load_synthetic(tmp_path / "nope", digits.class_names)


def test_sampler_ratio_matches_probability():
    s = MixSampler(n_real=30, n_synthetic=500, prob=0.3, num_samples=20000, seed=1)
    idx = torch.tensor(list(s))
    frac = float((idx >= 30).float().mean())
    assert abs(frac - 0.3) < 0.015
    assert idx.min() >= 0 and idx.max() < 530


def test_sampler_visits_every_real_before_repeating_and_is_seeded():
    s = MixSampler(n_real=10, n_synthetic=100, prob=0.5, num_samples=400, seed=3)
    first = list(s)
    reals = [i for i in first if i < 10]
    assert sorted(reals[:10]) == list(range(10))
    assert list(s) == first  # same epoch, same order
    s.set_epoch(1)
    assert list(s) != first


@pytest.mark.parametrize(("n_real", "n_syn", "want"), [(0, 50, 1.0), (20, 0, 0.0)])
def test_sampler_with_one_empty_pool(n_real, n_syn, want):
    idx = torch.tensor(list(MixSampler(n_real, n_syn, 0.5, 200)))
    assert float((idx >= n_real).float().mean()) == want


def test_mixed_dataset_weights_natural_share_and_loader(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=3)
    mixed = make_mixed_dataset(digits, k=2, seed=0, synthetic=[run], synthetic_prob=None, synthetic_weight=0.25)
    assert (mixed.n_real, mixed.n_synthetic) == (20, 30)
    assert mixed.effective_prob == pytest.approx(30 / 50)
    assert mixed.summary()["per_class"] == [5] * 10
    loader = mixed_loader(mixed, batch_size=16, samples_per_epoch=64, seed=0)
    batches = list(loader)
    assert sum(len(b[1]) for b in batches) == 64
    images, labels, weights = batches[0]
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
    assert set(weights.tolist()) <= {1.0, 0.25}
    # a real sample carries weight 1, a synthetic one the synthetic weight
    assert mixed[0][2] == 1.0 and mixed[25][2] == 0.25


def test_mixed_dataset_real_labels_match_kshot(digits):
    mixed = make_mixed_dataset(digits, k=3, seed=5)
    want = [s.label for s in digits.kshot(3, 5)]
    assert mixed.labels.tolist() == want and mixed.n_synthetic == 0


def test_bad_inputs(tmp_path, digits):
    with pytest.raises(AugmentError, match="smallest class"):
        make_mixed_dataset(digits, k=10_000, seed=0)
    with pytest.raises(AugmentError, match="no real split 'val'"):
        make_mixed_dataset(digits, k=2, seed=0, split="val")
    with pytest.raises(AugmentError, match="nothing to train on"):
        make_mixed_dataset(digits, k=0, seed=0)
    run = make_digit_run(tmp_path / "run", per_class=1)
    with pytest.raises(AugmentError, match="--synthetic-prob"):
        make_mixed_dataset(digits, k=1, seed=0, synthetic=[run], synthetic_prob=1.5)


def test_subset_of_classes_maps_by_name(tmp_path, digits):
    # a run generated for classes three and eight only: indices 0 and 1 in its manifests
    run = make_digit_run(tmp_path / "run", per_class=2, classes=(3, 8), index_of=lambda c: {3: 0, 8: 1}[c])
    mixed = make_mixed_dataset(digits, k=0, seed=0, synthetic=[run])
    assert sorted(set(mixed.labels.tolist())) == [3, 8]


def test_stream_mixed_ratio_and_labels(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=5, index_of=lambda c: 9 - c, shard_size=10)
    stream = stream_mixed(digits, k=1, seed=0, synthetic=[run], synthetic_prob=0.75, synthetic_weight=0.5, shuffle=20)
    items = list(itertools.islice(iter(stream), 800))
    weights = torch.tensor([w for _, _, w in items])
    assert abs(float((weights == 0.5).float().mean()) - 0.75) < 0.06
    syn = load_synthetic(run, digits.class_names)
    images = read_synthetic_images(syn)
    # every synthetic item carries the label of its image (found by pixel equality)
    for img, label, w in items[:60]:
        if w == 0.5:
            match = [i for i in range(len(images)) if torch.equal(images[i], img)]
            assert match and all(syn.labels[i] == label for i in match)


def test_mixed_dataset_refuses_size_mismatch(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=1)
    syn = load_synthetic(run, digits.class_names)
    with pytest.raises(AugmentError, match="differ in size"):
        MixedDataset(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), torch.tensor([0, 1]),
                     [(syn, read_synthetic_images(syn))], DIGIT_NAMES)


def test_filter_threshold_survives_float32_storage(tmp_path, digits):
    run = make_digit_run(tmp_path / "run", per_class=1, confidence=lambda c, i: 0.9)
    assert load_synthetic(run, digits.class_names, min_confidence=0.9).kept == 10
