"""The one place that turns Python values into what strict JSON can hold.

Results, configs and shard sidecars carry values ``json`` cannot write: paths, sets, datetimes,
numpy / torch scalars and arrays, and NaN/inf (which ``json`` writes as ``NaN``, a token strict
readers such as browsers and ``jq`` refuse). Every writer in augment goes through here so the
same value is always written the same way:

* :func:`json_value` converts ONE value that is not JSON (the ``default=`` hook of
  ``json.dumps``); :func:`augment.io.atomic.atomic_write_json` uses it and still refuses NaN, so
  a NaN in a config or manifest is an error, not a silent ``null``;
* :func:`json_safe` converts a whole tree and turns NaN/inf into ``None``, for results where a
  metric can legitimately be undefined (an empty class, FID on fewer than two images).

The way back, JSON into a typed record, is :func:`require_fields`: it refuses a document that
lacks a field, so a renamed key fails where it is read instead of turning into a silent default.
"""

from __future__ import annotations

import math
import os
from dataclasses import fields
from typing import Any

__all__ = ["json_safe", "json_value", "require_fields"]


def json_value(obj: Any) -> Any:
    """A JSON-native stand-in for ``obj``, one level deep (``json`` recurses into the result).

    Paths -> strings, sets -> sorted lists, dates and datetimes -> ISO 8601, numpy / torch
    scalars -> Python numbers, arrays and tensors -> nested lists. TypeError for anything else,
    like ``json.dumps`` itself.
    """
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if hasattr(obj, "isoformat"):
        return obj.isoformat()
    tolist = getattr(obj, "tolist", None)
    if callable(tolist) and getattr(obj, "ndim", 0):  # an array: .item() would refuse it
        return tolist()
    item = getattr(obj, "item", None)  # numpy / torch scalars
    if callable(item):
        return item()
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def json_safe(obj: Any) -> Any:
    """``obj`` as plain JSON data, recursively: NaN/inf -> None, tuples -> lists, mapping keys ->
    strings, and the conversions of :func:`json_value`. ``json.loads(json.dumps(json_safe(x)))``
    equals ``json_safe(x)``, so a result compares equal to the file it was written to."""
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    try:
        converted = json_value(obj)
    except TypeError:
        return obj  # left for json.dumps to refuse with its own message
    return json_safe(converted)


def require_fields(cls: type, data: Any, where: str) -> dict[str, Any]:
    """``data``'s values for the fields of dataclass ``cls`` (to build it from a JSON object);
    ValueError naming ``where`` when ``data`` is not an object or lacks one of them. Extra keys
    are ignored: a newer writer may add some."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} is a {type(data).__name__}, not an object")
    missing = [f.name for f in fields(cls) if f.name not in data]
    if missing:
        raise ValueError(f"{where} has no {', '.join(repr(m) for m in missing)}")
    return {f.name: data[f.name] for f in fields(cls)}
