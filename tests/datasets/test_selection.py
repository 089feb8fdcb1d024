"""--classes parsing and the dataset a config names (augment/datasets/selection.py)."""

from __future__ import annotations

import pytest

from augment.config import resolve_config
from augment.datasets.selection import load_dataset, select_classes
from augment.errors import AugmentError


@pytest.mark.parametrize("spec, n, expected", [
    (None, 3, [0, 1, 2]), ("all", 3, [0, 1, 2]), ("2,0", 5, [0, 2]), ("0-2,4", 5, [0, 1, 2, 4]), (" 1 , 1 ", 3, [1]),
])
def test_select_classes(spec, n, expected):
    assert select_classes(spec, n) == expected


@pytest.mark.parametrize("spec, fragment", [("3-1", "cannot read '3-1'"), ("a", "cannot read 'a'"),
                                            ("0,10", "class 10 is out of range")])
def test_select_classes_errors(spec, fragment):
    with pytest.raises(AugmentError, match=fragment):
        select_classes(spec, 10)


def test_load_dataset_of_the_config():
    ds = load_dataset(resolve_config(dataset="digits"))
    assert ds.name == "digits" and len(ds.class_names) == 10
