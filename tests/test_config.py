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
     ("tokens:\n  grad_steps: 0\n", "grad_steps must be a positive integer"),
     # every value typed and ranged, naming key, value and source
     ("seed: 1.5\n", "config key seed = 1.5 in config file .* must be an integer"),
     ("workers: true\n", "workers = True .* must be an integer"),
     ("classes: 3\n", r"must be a string or null \(quote it: '3'\)"),
     ("train:\n  scale: [0.9, big]\n", "train.scale = .* must be a list of numbers"),
     ("dataset_options: [1]\n", "dataset_options = .* must be a mapping"),
     ("generate:\n  per_class: 0\n", r"generate.per_class \(--per-class\) must be from 1 to 10,000,000, got 0"),
     ("caso:\n  t0: 1.0\n", r"caso.t0 must be above 0 and below 1, got 1.0"),
     ("generate:\n  image_format: gif\n", r"generate.image_format \(--image-format\) 'gif' is not one of jpg"),
     ("tokens:\n  prompts: ['{name}']\n", r"tokens.prompts template '\{name\}' has no \{token\} placeholder"),
     ("generate:\n  prompts: ['{token} {name} {0}']\n", "cannot be filled"),
     ("seed: 1\ntokens:\n  lr: [1\n", r"bad.yaml: .* at line 4, column 1; fix the YAML syntax"),
     ],
)
def test_bad_config_files(tmp_path, text, fragment):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(AugmentError, match=fragment):
        resolve_config(str(f))


def test_missing_config_file(tmp_path):
    with pytest.raises(AugmentError, match="does not exist"):
        resolve_config(str(tmp_path / "nope.yaml"))


def test_right_types_pass_and_keep_their_values(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("tokens:\n  lr: 1\ngenerate:\n  batch_size: null\nclasses: '3,8'\ntrain:\n  arch_kwargs: {a: 1}\n")
    cfg = resolve_config(str(f))
    assert cfg.tokens.lr == 1 and cfg.generate.batch_size is None and cfg.classes == "3,8"
    assert cfg.train.arch_kwargs == {"a": 1}


def test_non_utf8_config_is_one_line(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_bytes(b"seed: 1\n# caf\xe9\n")
    with pytest.raises(AugmentError, match=r"is not UTF-8 text \(byte 0xe9 at offset 13\); save it as UTF-8"):
        resolve_config(str(f))


@pytest.mark.parametrize("value", [0, -2, 1.5, True, "4"])
def test_threads_must_be_a_positive_whole_number(value):
    with pytest.raises(AugmentError, match=r"threads.* must be (an integer|from 1 to 1,024)"):
        resolve_config(overrides={"threads": value})


def test_threads_default_does_not_follow_the_workers():
    """One count for inline and actors (issue 13, defect 9): the default must not depend on --workers."""
    assert resolve_config(overrides={"workers": 0}).threads == resolve_config(overrides={"workers": 2}).threads
