"""Slugs: class names -> safe file-name fragments (augment/io/slug.py)."""

from __future__ import annotations

import re

import pytest

from augment.io.slug import slugify

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
