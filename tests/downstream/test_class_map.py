"""The paper's iNat179 setting through a class-name map: a judge trained on other names (an iNat
classifier for CUB images) scores the classes the map (or its own labels) names, and the classes
it lacks are left out of its accuracy, not refused. A fixture judge with renamed labels stands in."""

from __future__ import annotations

import pytest

from augment.datasets import get_dataset
from augment.datasets.digits import DIGIT_NAMES
from augment.downstream.evaluate import align_classifier, read_class_map, run_eval
from augment.errors import AugmentError
from augment.models.classifier import load_classifier
from tests.downstream import make_digit_run
from tests.fixtures.models import build_micro_classifier

#: the judge's labels: zero and one under other names, no label for two, an extra class at the end
JUDGE_LABELS = ["Nil", "single", *DIGIT_NAMES[3:], "extra"]
YAML_MAP = "zero: Nil\none: single\ntwo: null   # no such species in the judge's label space\n"
CSV_MAP = "class,label\nzero,Nil\none,single\ntwo,\n"


@pytest.fixture(scope="module")
def judge(tmp_path_factory):
    return build_micro_classifier(tmp_path_factory.mktemp("judge") / "inat.safetensors", JUDGE_LABELS)


@pytest.mark.parametrize("name, text", [("map.yaml", YAML_MAP), ("map.csv", CSV_MAP)])
def test_yaml_and_csv_maps_read_the_same(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert read_class_map(tmp_path / name) == {"zero": "Nil", "one": "single", "two": None}


@pytest.mark.parametrize("name, text, fragment", [
    ("m.yaml", "- zero\n- one\n", "expected a mapping of dataset class -> label"),
    ("m.yaml", "zero: [a\n", "is not valid YAML"),
    ("m.csv", "zero,Nil,extra\n", "row 1 has 3 columns; use two: class,label"),
])
def test_bad_maps_are_one_line(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(AugmentError, match=fragment):
        read_class_map(tmp_path / name)
    with pytest.raises(AugmentError, match="does not exist"):
        read_class_map(tmp_path / "missing.yaml")


def test_alignment_through_the_map(judge, tmp_path):
    clf = load_classifier(f"timm:test_resnet@{judge}")
    with pytest.raises(AugmentError, match="--class-map FILE"):
        align_classifier(clf, DIGIT_NAMES)
    (tmp_path / "map.yaml").write_text(YAML_MAP)
    cols = align_classifier(clf, DIGIT_NAMES, read_class_map(tmp_path / "map.yaml")).tolist()
    assert cols == [0, 1, -1, *range(2, 9)]  # mapped, mapped, left out, then by own name


def test_eval_leaves_out_the_classes_the_judge_lacks(judge, tmp_path):
    run = make_digit_run(tmp_path / "run", per_class=2, shard_size=10)
    (tmp_path / "map.csv").write_text(CSV_MAP)
    spec = f"timm:test_resnet@{judge}"
    res = run_eval(run, get_dataset("digits"), [spec], progress=False, kid_subsets=2,
                   class_map=read_class_map(tmp_path / "map.csv"))
    rows = {r.images: r for r in res.accuracy}
    test = get_dataset("digits").samples("test")
    assert rows["token"].n == 18 and "two" not in rows["token"].per_class_top1  # 9 classes x 2 images
    assert set(rows["token"].per_class_top1) == set(DIGIT_NAMES) - {"two"}
    assert rows["real test"].n == sum(s.label != 2 for s in test)  # two's test images left out
    assert any("1 of 10 classes" in n and "two" in n for n in res.notes)
    (tmp_path / "none.yaml").write_text("".join(f"{n}: null\n" for n in DIGIT_NAMES))
    with pytest.raises(AugmentError, match="knows none of the run's classes"):
        run_eval(run, get_dataset("digits"), [spec], progress=False, class_map=read_class_map(tmp_path / "none.yaml"))
