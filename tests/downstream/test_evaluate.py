"""augment eval's core: accuracy of generated images per arm and classifier, FID/KID, class alignment."""

from __future__ import annotations

import json
import math

import pytest

from augment.datasets import get_dataset
from augment.datasets.digits import DIGIT_NAMES
from augment.downstream.eval_result import EvalResult
from augment.downstream.evaluate import align_classifier, run_eval
from augment.errors import AugmentError
from augment.io.rundir import write_run_json
from tests.downstream import make_digit_run
from tests.fixtures.models import build_micro_classifier


@pytest.fixture(scope="module")
def digits():
    return get_dataset("digits")


@pytest.fixture(scope="module")
def digit_clf(tmp_path_factory):
    return build_micro_classifier(tmp_path_factory.mktemp("clf") / "digits.safetensors", DIGIT_NAMES)


def test_eval_token_and_baseline_arms(tmp_path, digits, digit_clf):
    run = make_digit_run(tmp_path / "run", per_class=3, shard_size=12)
    make_digit_run(tmp_path / "run" / "baseline", per_class=4, index_of=lambda c: 9 - c)
    spec = f"timm:test_resnet@{digit_clf}"
    res = run_eval(run, digits, [spec, spec], progress=False, kid_subsets=5).to_json()
    assert res["classifiers"] == [spec]  # duplicates dropped
    rows = {r["images"]: r for r in res["accuracy"]}
    assert set(rows) == {"token", "baseline", "real test"}
    # arms are compared on the seeds they share: 3 per class
    assert rows["token"]["n"] == rows["baseline"]["n"] == 30 and rows["real test"]["n"] == 450
    assert any("baseline arm: 10 of 40" in n for n in res["notes"])
    for r in rows.values():
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
        assert set(r["per_class_top1"]) == set(DIGIT_NAMES)
    # same images, labels aligned by name: both arms score identically
    assert rows["token"]["per_class_top1"] == rows["baseline"]["per_class_top1"]
    dist = {d["images"]: d for d in res["distances"]}
    assert set(dist) == {"token", "baseline", "real train (reference)"}
    for d in dist.values():
        assert math.isfinite(d["fid"]) and d["fid"] >= -1e-6 and math.isfinite(d["kid"])
    assert any("not Inception" in n for n in res["notes"])
    saved = json.loads((run / "report" / "eval.json").read_text())
    assert saved["accuracy"] == res["accuracy"]
    md = (run / "report" / "eval.md").read_text()
    assert "| token | 30 |" in md and "FID" in md and "| zero |" in md


def test_eval_without_shards_says_what_to_run(tmp_path, digits, digit_clf):
    (tmp_path / "run").mkdir()
    with pytest.raises(AugmentError, match="augment build"):
        run_eval(tmp_path / "run", digits, [f"timm:test_resnet@{digit_clf}"], progress=False)


def test_eval_unknown_split(tmp_path, digits, digit_clf):
    run = make_digit_run(tmp_path / "run", per_class=1)
    with pytest.raises(AugmentError, match="no real split 'val'"):
        run_eval(run, digits, [f"timm:test_resnet@{digit_clf}"], split="val", progress=False)


def test_align_classifier_by_name(tmp_path):
    from augment.models.classifier import load_classifier

    path = build_micro_classifier(tmp_path / "c.safetensors", ["two", "zero", "one"])
    clf = load_classifier(f"timm:test_resnet@{path}")
    assert align_classifier(clf, ["zero", "one", "two"]).tolist() == [1, 2, 0]
    with pytest.raises(AugmentError, match="'three'"):
        align_classifier(clf, ["zero", "three"])


def test_eval_result_round_trips_and_draws_the_eval_figure(tmp_path, digits, digit_clf):
    """evaluate writes an EvalResult; contact reads it back by type, not by guessing keys."""
    from augment.report.contact import EVAL_FIGURE, eval_panels, write_eval_figures

    run = make_digit_run(tmp_path / "run", per_class=2)
    make_digit_run(tmp_path / "run" / "baseline", per_class=2)
    write_run_json(run, {}, "generate", extra={"class_names": DIGIT_NAMES})
    spec = f"timm:test_resnet@{digit_clf}"
    res = run_eval(run, digits, [spec], progress=False, kid_subsets=2)
    assert isinstance(res, EvalResult)
    doc = json.loads((run / "report" / "eval.json").read_text())
    assert res.to_json() == doc and EvalResult.from_json(doc) == res
    token, baseline = res.row("token", spec), res.row("baseline", spec)
    assert token.n == baseline.n == res.arms["token"].images == 20 and res.row("real test", spec).real
    panels = eval_panels(res, DIGIT_NAMES)
    assert [p.classifier for p in panels] == [spec] and panels[0].classes == DIGIT_NAMES
    assert panels[0].tokens == [token.per_class_top1[n] for n in DIGIT_NAMES]
    assert write_eval_figures(run) == [run / "report" / EVAL_FIGURE]
    # a renamed field fails where it is read, naming it
    doc["accuracy"][0]["top_1"] = doc["accuracy"][0].pop("top1")
    with pytest.raises(ValueError, match="'top1'"):
        EvalResult.from_json(doc)


def test_eval_on_a_folder_of_mixed_sizes_and_modes(tmp_path, mixed_folder):
    """A user's folder (grey, CMYK, palette, 16-bit, EXIF-rotated, 17x31 to 640x480): the reals are
    brought to each classifier's input size, not refused for differing in size."""
    ds = get_dataset("folder", data_root=mixed_folder)
    run = make_digit_run(tmp_path / "run", per_class=2, classes=(0, 1), names=["apple", "pear"])
    clf = build_micro_classifier(tmp_path / "fruit.safetensors", ["apple", "pear"])
    res = run_eval(run, ds, [f"timm:test_resnet@{clf}"], split="train", progress=False, kid_subsets=2)
    rows = {r.images: r for r in res.accuracy}
    assert rows["real train"].n == 8 and rows["token"].n == 4
    assert {d.images for d in res.distances} == {"token"}
