"""The one JSON sanitiser: json_safe for results, json_value for atomic_write_json, require_fields back."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from augment.io.jsonsafe import json_safe, json_value, require_fields


def test_json_safe_replaces_non_finite():
    assert json_safe({"a": [float("nan"), 1.0], "b": math.inf}) == {"a": [None, 1.0], "b": None}


def test_json_safe_converts_what_json_cannot_write():
    when = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    doc = {"p": Path("a/b"), "s": {3, 1}, "t": (1, 2), "when": when, 1: np.float32(0.5),
           "i": np.int64(7), "f": np.float64("nan"), "arr": np.arange(3), "tensor": torch.tensor([1.5, 2.0]),
           "scalar": torch.tensor(2)}
    safe = json_safe(doc)
    assert safe == {"p": "a/b", "s": [1, 3], "t": [1, 2], "when": "2025-01-02T03:04:05+00:00", "1": 0.5,
                    "i": 7, "f": None, "arr": [0, 1, 2], "tensor": [1.5, 2.0], "scalar": 2}
    assert json.loads(json.dumps(safe)) == safe  # a result equals the file it is written to


def test_json_value_is_the_dumps_hook():
    assert json.dumps({"p": Path("x"), "n": np.int32(3)}, default=json_value, sort_keys=True) == '{"n": 3, "p": "x"}'
    with pytest.raises(TypeError):
        json_value(object())
    assert json_safe(b"raw") == b"raw"  # not JSON: left for json.dumps to refuse


def test_require_fields_names_what_is_missing():
    @dataclasses.dataclass
    class Row:
        a: int
        b: str

    assert require_fields(Row, {"a": 1, "b": "x", "extra": 0}, "row") == {"a": 1, "b": "x"}
    with pytest.raises(ValueError, match="row has no 'b'"):
        require_fields(Row, {"a": 1}, "row")
    with pytest.raises(ValueError, match="not an object"):
        require_fields(Row, [1, "x"], "row")
