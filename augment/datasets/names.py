"""Class-name helpers: raw dataset labels -> prompt text.

Prompt names are lower case with single spaces (``001.Black_footed_Albatross`` -> ``black footed
albatross``). Their file-name form (``tokens/NNNN-<slug>.safetensors``) is the run folder's
business: :func:`augment.io.slug.slugify`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from augment.errors import AugmentError

_NUMERIC_PREFIX = re.compile(r"^\s*\d+\s*[._\-\s]\s*")
_WORD_DOT = re.compile(r"(?<=[^\W_])\.(?=[^\W_])")
_WNID = re.compile(r"^n\d{8}$")


def clean_name(raw: str) -> str:
    """Underscores -> spaces, runs of white space -> one space, trimmed, lower case."""
    return " ".join(str(raw).replace("_", " ").split()).lower()


def strip_numeric_prefix(raw: str) -> str:
    """``001.Black_footed_Albatross`` -> ``Black_footed_Albatross`` (only a leading number + separator)."""
    stripped = _NUMERIC_PREFIX.sub("", str(raw), count=1)
    return stripped if stripped.strip() else str(raw)


def cub_class_name(raw: str) -> str:
    """CUB folder/class label -> prompt name: numeric prefix dropped, ``_`` and word-joining dots -> spaces.

    ``001.Black_footed_Albatross`` -> ``black footed albatross``; ``003.Sooty.Albatross`` -> ``sooty albatross``.
    """
    return clean_name(_WORD_DOT.sub(" ", strip_numeric_prefix(raw)))


def imagenet_class_name(description: str) -> str:
    """timm's ImageNet description (``"great white shark, white shark, ..."``) -> its first synonym, lower case."""
    return clean_name(str(description).split(",")[0])


def is_wnid(name: str) -> bool:
    """True for a WordNet id such as ``n01440764`` (ImageNet class folders and label maps)."""
    return bool(_WNID.match(str(name)))


def check_distinct(names: Sequence[str], raw: Sequence[str], what: str, where: object) -> None:
    """Refuse two classes whose cleaned names are equal (``Red_Fox`` and ``red fox`` both give
    ``red fox``), naming both raw names: downstream, labels follow class names, so the two classes
    would silently share one label. Names compare case- and space-insensitively, as labels do."""
    seen: dict[str, str] = {}
    for name, original in zip(names, raw, strict=True):
        key = " ".join(str(name).split()).lower()
        if key in seen:
            raise AugmentError(
                f"{what} {seen[key]!r} and {original!r} in {where} both become the class name {name!r}; "
                "rename or merge one of them so that every class has its own name"
            )
        seen[key] = original
