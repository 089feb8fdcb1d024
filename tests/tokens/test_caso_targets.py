"""caso.target specs: which embeddings edit which reals, and the label an edit gets."""

from __future__ import annotations

import pytest

from augment.errors import AugmentError
from augment.tokens.caso import condition_prompt, edit_conditions, edit_label


def test_edit_conditions():
    classes = [0, 1, 2]
    assert edit_conditions("self", 1, classes, 3) == [(1,)]
    assert edit_conditions("all", 1, classes, 3) == [(0,), (1,), (2,)]
    assert edit_conditions("2", 0, classes, 3) == [(2,)]
    assert edit_conditions("0->1+2", 0, classes, 3) == [(1, 2)]
    assert edit_conditions("0->1+2", 1, classes, 3) == []  # only A's reals are edited
    for bad in ("3", "a->1", "0->", "1+x"):
        with pytest.raises(AugmentError, match="not a class index"):
            edit_conditions(bad, 0, classes, 3)


def test_condition_prompt_and_label():
    assert condition_prompt((3, 8), 2) == "<caso0003> <caso0003>_1 <caso0008> <caso0008>_1"
    assert edit_label(3, (8, 1), 10.0) == 8  # counterfactual 3 -> 8 is labelled 8
    assert edit_label(3, (8,), -10.0) == 3  # a reverse edit keeps the source's label
