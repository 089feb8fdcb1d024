"""Training captions of the tiny-digits model: the lexical ambiguity the token method has to fix.

A caption is empty, generic, or names a digit; a named caption of a confusable digit names its
partner with a fixed probability (three/eight half the time), so the plain prompt "a photo of the
digit three" gives a mixture of threes and eights, as Stable Diffusion does for look-alike classes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from augment.datasets.digits import DIGIT_NAMES

__all__ = [
    "CONFUSABLE_SWAPS",
    "GENERIC_CAPTIONS",
    "NAMED_TEMPLATES",
    "P_EMPTY",
    "P_GENERIC",
    "caption_scheme",
    "caption_table",
    "sample_caption_indices",
]

#: digit -> (partner digit, probability that a caption of this digit names the partner)
CONFUSABLE_SWAPS: dict[int, tuple[int, float]] = {
    3: (8, 0.5),
    8: (3, 0.5),
    4: (9, 0.4),
    9: (4, 0.4),
    1: (7, 0.4),
    7: (1, 0.4),
    5: (6, 0.3),
    6: (5, 0.3),
}
P_EMPTY = 0.10
P_GENERIC = 0.30  # the remaining 0.60 names a digit
GENERIC_CAPTIONS = [
    "a handwritten digit",
    "a photo of a digit",
    "a picture of a number",
    "an image of a handwritten digit",
    "a drawing of a digit",
    "a handwritten number",
]
NAMED_TEMPLATES = [
    "a photo of the digit {name}",
    "the number {name}",
    "a handwritten {name}",
    "an image of the digit {name}",
    "a drawing of the number {name}",
]


def caption_table() -> tuple[list[str], dict[str, list[int]]]:
    """All distinct captions, and index lists: 'empty', 'generic', 'named:<digit>'."""
    captions = [""] + GENERIC_CAPTIONS
    groups: dict[str, list[int]] = {"empty": [0], "generic": list(range(1, 1 + len(GENERIC_CAPTIONS)))}
    for d, name in enumerate(DIGIT_NAMES):
        groups[f"named:{d}"] = []
        for t in NAMED_TEMPLATES:
            groups[f"named:{d}"].append(len(captions))
            captions.append(t.format(name=name))
    return captions, groups


def sample_caption_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One caption index per label following the scheme (empty / generic / named with swaps)."""
    _, groups = caption_table()
    out = np.empty(len(labels), dtype=np.int64)
    u = rng.random(len(labels))
    for i, y in enumerate(labels):
        if u[i] < P_EMPTY:
            out[i] = 0
        elif u[i] < P_EMPTY + P_GENERIC:
            out[i] = rng.choice(groups["generic"])
        else:
            d = int(y)
            if d in CONFUSABLE_SWAPS:
                partner, p = CONFUSABLE_SWAPS[d]
                if rng.random() < p:
                    d = partner
            out[i] = rng.choice(groups[f"named:{d}"])
    return out


def caption_scheme() -> dict[str, Any]:
    """The scheme as the card records it, so the ambiguity of the shipped model is documented."""
    return {
        "p_empty": P_EMPTY,
        "p_generic": P_GENERIC,
        "p_named": round(1 - P_EMPTY - P_GENERIC, 6),
        "generic_captions": GENERIC_CAPTIONS,
        "named_templates": NAMED_TEMPLATES,
        "confusable_swaps": {
            f"{DIGIT_NAMES[a]}->{DIGIT_NAMES[b]}": p for a, (b, p) in CONFUSABLE_SWAPS.items()
        },
        "note": "a named caption uses the partner digit's name with the given probability "
        "(mimics Stable Diffusion's lexical ambiguity); zero and two are never swapped",
    }
