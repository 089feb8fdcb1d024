"""Class-name helpers: raw dataset labels -> prompt text, and prompt text -> safe file names.

Prompt names are lower case with single spaces (``001.Black_footed_Albatross`` -> ``black footed
albatross``). :func:`slugify` turns any name into a file-name fragment that cannot leave a folder
(used for ``tokens/NNNN-<slug>.safetensors``; the index prefix keeps equal slugs apart).
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

from augment.errors import AugmentError

_NUMERIC_PREFIX = re.compile(r"^\s*\d+\s*[._\-\s]\s*")
_WORD_DOT = re.compile(r"(?<=[^\W_])\.(?=[^\W_])")
_WNID = re.compile(r"^n\d{8}$")
SLUG_MAX = 48


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


def slugify(name: str, max_len: int = SLUG_MAX) -> str:
    """File-name-safe slug: only ``[a-z0-9-]``, no leading/trailing ``-``, at most ``max_len`` chars, never empty.

    Accents are folded to ASCII (``Ünïcode`` -> ``unicode``); anything else (dots, slashes, spaces)
    becomes ``-``, so ``../etc/passwd`` -> ``etc-passwd``. A name with no ASCII letter or digit at
    all (empty, ``...``, ``狐狸``) gets ``class-`` plus a short hash of the name, so it stays distinct.
    """
    max_len = max(8, int(max_len))
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode("ascii").lower()
    slug = re.sub(r"[^a-z0-9]+", "-", text).strip("-")
    if not slug:
        digest = hashlib.sha1(str(name).encode("utf-8", "surrogatepass")).hexdigest()[:8]
        slug = f"class-{digest}"
    return slug[:max_len].rstrip("-")


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
