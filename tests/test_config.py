"""Config precedence (built-in < preset < file < flags) and refusal of unknown keys."""

from __future__ import annotations

import pytest

from augment.config import list_presets, resolve_config
from augment.errors import AugmentError


def test_precedence(tmp_path):
    base = resolve_config(dataset="digits")
    assert base.model == "embedded:tiny-digits" and base.tokens.grad_steps == "all"  # from the preset
    f = tmp_path / "c.yaml"
    f.write_text("tokens:\n  lr: 0.5\n  max_steps: 3\nseed: 7\n")
    cfg = resolve_config(str(f), {"seed": 9, "tokens.max_steps": None})
    assert cfg.tokens.lr == 0.5 and cfg.tokens.max_steps == 3  # file beats preset; None flag ignored
    assert cfg.seed == 9  # flag beats file
    assert cfg.out == "runs/digits"


def test_every_preset_resolves():
    assert {"digits", "cub", "inat", "imagenet", "folder"} <= set(list_presets())
    for name in list_presets():
        cfg = resolve_config(dataset=name)
        assert cfg.dataset == name and cfg.out == f"runs/{name}"


@pytest.mark.parametrize(
    "text, fragment",
    [("tokens:\n  lrr: 1\n", "unknown config key 'lrr'"), ("nope: 1\n", "unknown config key 'nope'"),
     ("tokens: [1, 2\n", "cannot read config file"), ("- a\n- b\n", "must hold a YAML mapping"),
     ("tokens:\n  grad_steps: 0\n", "grad_steps must be a positive integer")],
)
def test_bad_config_files(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(AugmentError, match=fragment):
        resolve_config(str(f))


def test_missing_config_file(tmp_path):
    with pytest.raises(AugmentError, match="does not exist"):
        resolve_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_threads_must_be_a_positive_whole_number(value):
    with pytest.raises(AugmentError, match="threads must be a whole number"):
        resolve_config(overrides={"threads": value})


def test_threads_default_does_not_follow_the_workers():
    """One count for inline and actors (issue 13, defect 9): the default must not depend on --workers."""
    assert resolve_config(overrides={"workers": 0}).threads == resolve_config(overrides={"workers": 2}).threads
