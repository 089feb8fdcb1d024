"""--classes parsing and the dataset a config names (augment/datasets/selection.py)."""

from __future__ import annotations

import pytest

from augment.config import resolve_config
from augment.datasets.selection import load_dataset, select_classes
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


def test_load_dataset_of_the_config():
    ds = load_dataset(resolve_config(dataset="digits"))
    assert ds.name == "digits" and len(ds.class_names) == 10


def test_select_classes_by_name():
    names = ["cat", "t-shirt", "dog"]
    assert select_classes("dog,t-shirt", 3, names) == [1, 2]
    with pytest.raises(AugmentError, match="cannot read 'cow'.*e.g. 'cat'"):
        select_classes("cow", 3, names)
