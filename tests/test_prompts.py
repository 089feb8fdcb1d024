"""augment.prompts: how templates become prompts, with and without a token."""

from __future__ import annotations

import pytest

from augment.config import Config, validate
from augment.errors import AugmentError
from augment.prompts import render_prompt


def test_token_and_name_fill_their_places():
    assert render_prompt("A photo of a {token} {name}", "<c0003>", "three") == "A photo of a <c0003> three"


def test_without_a_token_the_space_is_folded():
    assert render_prompt("A photo of a {token} {name}", "", "three") == "A photo of a three"


def test_a_template_without_name_gets_the_name_in_the_token_place_for_the_plain_prompt():
    """The baseline arm and the confuser negatives must still name the class."""
    assert render_prompt("a photo of the digit {token}", "<c0003>", "three") == "a photo of the digit <c0003>"
    assert render_prompt("a photo of the digit {token}", "", "three") == "a photo of the digit three"


def test_generate_templates_need_a_token_but_not_a_name():
    cfg = Config()
    cfg.generate.prompts = ["a photo of the digit {token}"]
    validate(cfg)  # accepted: the class name in or out of the prompt is a setting
    cfg.generate.prompts = ["a photo of the digit {name}"]
    with pytest.raises(AugmentError, match=r"has no \{token\} placeholder"):
        validate(cfg)
