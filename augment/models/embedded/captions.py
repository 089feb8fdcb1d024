"""Training captions of the tiny-digits model: the lexical ambiguity the token method has to fix.

A caption is empty, generic, names a digit, or describes its shape. A named caption of a confusable
digit names its partner with a fixed probability (three/eight half the time), so the plain prompt
"a photo of the digit three" gives a mixture of threes and eights, as Stable Diffusion does for
look-alike classes ("crane": a bird or a machine).

Shape captions ("a digit shaped like a snowman") are never swapped. They are why a class token can
work at all: Stable Diffusion can draw a heron although "crane" is ambiguous, because other words
reached the concept during training; DisCo's token finds that region of the embedding space from
the ambiguous name. Without them (the builds before 2026-11-24) "three" and "eight" were the same word
to the model, no conditioning drew an eight reliably, and nine's token never left its initialiser.
The plain prompt names the class, so its ambiguity is unchanged.
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
    "P_SHAPE",
    "SHAPE_TEMPLATES",
    "SHAPE_WORDS",
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
P_GENERIC = 0.25
P_SHAPE = 0.15  # the remaining 0.50 names a digit
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

#: one look-alike word per digit (the shapes of children's number posters), never swapped
SHAPE_WORDS = ["egg", "candle", "swan", "wings", "sailboat", "hook", "cherry", "boomerang", "snowman", "balloon"]
SHAPE_TEMPLATES = [
    "a digit shaped like a {shape}",
    "a handwritten {shape}",
    "a drawing of a {shape} shaped number",
]


def caption_table() -> tuple[list[str], dict[str, list[int]]]:
    """All distinct captions, and index lists: 'empty', 'generic', 'named:<digit>', 'shape:<digit>'."""
    captions = [""] + GENERIC_CAPTIONS
    groups: dict[str, list[int]] = {"empty": [0], "generic": list(range(1, 1 + len(GENERIC_CAPTIONS)))}
    for d, name in enumerate(DIGIT_NAMES):
        groups[f"named:{d}"] = []
        for t in NAMED_TEMPLATES:
            groups[f"named:{d}"].append(len(captions))
            captions.append(t.format(name=name))
    for d, shape in enumerate(SHAPE_WORDS):
        groups[f"shape:{d}"] = []
        for t in SHAPE_TEMPLATES:
            groups[f"shape:{d}"].append(len(captions))
            captions.append(t.format(shape=shape))
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
        elif u[i] < P_EMPTY + P_GENERIC + P_SHAPE:
            out[i] = rng.choice(groups[f"shape:{int(y)}"])
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
        "p_shape": P_SHAPE,
        "p_named": round(1 - P_EMPTY - P_GENERIC - P_SHAPE, 6),
        "generic_captions": GENERIC_CAPTIONS,
        "named_templates": NAMED_TEMPLATES,
        "shape_templates": SHAPE_TEMPLATES,
        "shape_words": dict(zip(DIGIT_NAMES, SHAPE_WORDS, strict=True)),
        "confusable_swaps": {
            f"{DIGIT_NAMES[a]}->{DIGIT_NAMES[b]}": p for a, (b, p) in CONFUSABLE_SWAPS.items()
        },
        "note": "a named caption uses the partner digit's name with the given probability "
        "(mimics Stable Diffusion's lexical ambiguity); zero and two are never swapped; shape "
        "captions are never swapped (other words that reach each digit, as other words reach a "
        "concept in Stable Diffusion; a class token can find them, the plain prompt does not use them)",
    }
