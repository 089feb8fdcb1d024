"""Class names -> file-name fragments that cannot leave a folder.

The run folder names a class's files ``tokens/NNNN-<slug>.safetensors`` (the index prefix keeps
equal slugs apart); the slug lives in ``io`` with the layout that uses it (:mod:`augment.io.rundir`),
below the datasets, whose names it is given as plain strings.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

SLUG_MAX = 48


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
