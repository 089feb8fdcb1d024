"""Name cleaning and slugs."""

from __future__ import annotations

import re

import pytest

from augment.datasets.names import (
    clean_name,
    cub_class_name,
    imagenet_class_name,
    slugify,
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


SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../etc/passwd", "etc-passwd"),
        ("a.b", "a-b"),
        ("red fox", "red-fox"),
        ("  Great   White\tShark ", "great-white-shark"),
        ("Ünïcödé Bird", "unicode-bird"),
        ("C:\\Windows\\..", "c-windows"),
        ("st. bernard", "st-bernard"),
    ],
)
def test_slugify(name, expected):
    assert slugify(name) == expected


@pytest.mark.parametrize("name", ["", "...", "../..", "/", "狐狸", "🦊", "-", "\x00", "a" * 500, "x-" * 40])
def test_slugify_always_safe(name):
    s = slugify(name)
    assert SLUG.match(s), s
    assert 0 < len(s) <= 48
    assert "." not in s and "/" not in s and "\\" not in s


def test_slugify_distinct_fallbacks():
    assert slugify("狐狸") != slugify("猫")
    assert slugify("") == slugify("")
