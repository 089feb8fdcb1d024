"""Name cleaning."""

from __future__ import annotations

import pytest

from augment.datasets.names import (
    clean_name,
    cub_class_name,
    imagenet_class_name,
    strip_numeric_prefix,
)


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("001.Black_footed_Albatross", "black footed albatross"),
        ("003.Sooty.Albatross", "sooty albatross"),
        ("200.Common_Yellowthroat", "common yellowthroat"),
        ("Chuck_will_Widow", "chuck will widow"),
        ("032.Mangrove_Cuckoo ", "mangrove cuckoo"),
    ],
)
def test_cub_names(raw, name):
    assert cub_class_name(raw) == name


def test_other_names():
    assert imagenet_class_name("great white shark, white shark, man-eater") == "great white shark"
    assert imagenet_class_name("jack-o'-lantern") == "jack-o'-lantern"
    assert clean_name("  St._Bernard  ") == "st. bernard"
    assert strip_numeric_prefix("001") == "001"
