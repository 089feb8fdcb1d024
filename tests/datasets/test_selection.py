"""--classes parsing and the dataset a config names (augment/datasets/selection.py)."""

from __future__ import annotations

import pytest

from augment.config import resolve_config
from augment.datasets.selection import dataset_of, needs_classifier_names, select_classes
from augment.errors import AugmentError


@pytest.mark.parametrize("spec, n, expected", [
    (None, 3, [0, 1, 2]), ("all", 3, [0, 1, 2]), ("2,0", 5, [0, 2]), ("0-2,4", 5, [0, 1, 2, 4]), (" 1 , 2 ", 3, [1, 2]),
])
def test_select_classes(spec, n, expected):
    assert select_classes(spec, n) == expected


@pytest.mark.parametrize("spec, fragment", [("3-1", "runs backwards"), ("1,0-2", "class 1 is selected twice"), ("0-99999999999", "class 99999999999 is out of range"), ("-1", "class -1 is out of range"), ("a", "cannot read 'a'"),
                                            ("0,10", "class 10 is out of range")])
def test_select_classes_errors(spec, fragment):
    with pytest.raises(AugmentError, match=fragment):
        select_classes(spec, 10)


def test_dataset_of_the_config():
    ds = dataset_of(resolve_config(dataset="digits"))
    assert ds.name == "digits" and len(ds.class_names) == 10


def test_dataset_of_takes_the_classifier_names_as_values():
    """No data root: the names come from the caller (the classifier's label map), never from a model
    loaded here (datasets sit above models)."""
    cfg = resolve_config(dataset="cub")
    assert needs_classifier_names(cfg) and not needs_classifier_names(resolve_config(dataset="digits"))
    with pytest.raises(AugmentError, match="data-root"):
        dataset_of(cfg)
    ds = dataset_of(cfg, ["001.Black_footed_Albatross", "002.Laysan_Albatross"])
    assert ds.class_names == ["black footed albatross", "laysan albatross"]


def test_select_classes_by_name():
    names = ["cat", "t-shirt", "dog"]
    assert select_classes("dog,t-shirt", 3, names) == [1, 2]
    with pytest.raises(AugmentError, match="cannot read 'cow'.*e.g. 'cat'"):
        select_classes("cow", 3, names)
