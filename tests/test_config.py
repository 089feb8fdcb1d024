"""Config precedence (built-in < preset < file < flags) and refusal of unknown keys."""

from __future__ import annotations

import pytest

from augment.config import compat_keys, list_presets, resolve_config, settings_of
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


@pytest.mark.parametrize("key, value, fragment", [
    ("train.epochs", 0, "--epochs must be at least 1, got 0"),
    ("train.hflip", 3.0, r"--hflip must be a probability in \[0, 1\], got 3.0"),
    ("train.synthetic_prob", 1.5, r"--synthetic-prob must be in \[0, 1\]"),
    ("train.batch_size", 0, r"train.batch_size \(--batch-size\) must be at least 1, got 0"),
    ("train.eval_every", -1, "train.eval_every must be >= 0"),
    ("tokens.val_seeds", 0, "tokens.val_seeds must be at least 1, got 0"),
    ("tokens.step_size", 0.0, "tokens.step_size must be positive or null"),
    ("caso.edit_mode", "x", r"caso.edit_mode \(--edit-mode\) 'x' is not one of ddim, sdedit"),
])
def test_every_section_is_validated(key, value, fragment):
    """One validation path for every section: the train section was once never checked here."""
    with pytest.raises(AugmentError, match=fragment):
        resolve_config(overrides={key: value})


def test_compat_keys_come_from_the_declarations():
    """The runners' resume keys are generated from resume=(stage, ...) on the fields; the sets are
    the ones the runners listed by hand before."""
    from augment.generate import caso_runner
    from augment.generate import runner as generate_runner
    from augment.tokens import runner as tokens_runner

    assert tokens_runner.COMPAT_KEYS == compat_keys("tokens", after={"model": ["model_fingerprint"],
                                                                     "seed": ["class_names"]}, tail=("sampler",))
    assert set(tokens_runner.COMPAT_KEYS) == {
        "model", "model_fingerprint", "classifier", "seed", "class_names", "tokens.prompts", "tokens.grad_steps",
        "tokens.lr", "tokens.step_size", "tokens.trust_radius", "tokens.lr_schedule", "tokens.steps",
        "tokens.guidance_scale", "tokens.batch_size", "tokens.n_vectors", "tokens.negative_confusers",
        "tokens.val_seeds", "resolution",
        # issue 24: every setting that changes a token (max_steps used to be missing)
        "tokens.init_token", "tokens.init_fallback", "tokens.weight_decay", "tokens.max_steps", "tokens.val_every",
        "tokens.patience", "tokens.acc_threshold", "tokens.fresh_seeds", "tokens.grad_clip", "scheduler", "sampler"}
    assert set(generate_runner.COMPAT_KEYS) == {
        "model", "model_fingerprint", "classifier", "seed", "class_names", "classes", "resolution", "scheduler",
        "generate.prompts", "generate.negative_prompt", "generate.steps", "generate.guidance_scale",
        "generate.shard_size", "generate.image_format", "generate.min_confidence", "generate.max_attempts",
        "generate.soft_labels", "generate.batch_size", "baseline"}
    assert generate_runner.COMPAT_KEYS[-1] == "baseline"
    assert caso_runner.COMPAT_KEYS == ["model", "classifier", "seed", "class_names", "classes", "caso"]
    declared = {key for key, s in settings_of() if s.resume}
    assert declared == {k for keys in (tokens_runner.COMPAT_KEYS, generate_runner.COMPAT_KEYS, caso_runner.COMPAT_KEYS)
                        for k in keys} - {"model_fingerprint", "class_names", "baseline", "sampler"}


def test_recorded_settings_are_the_run_json_layer(tmp_path):
    """The config reads no run folder: the caller passes what run.json records (io.rundir.run_settings)."""
    from augment.io.rundir import RunDir, run_settings, write_run_json

    run = RunDir(tmp_path / "run")
    assert run_settings(run.path) is None
    recorded = resolve_config().to_dict()
    recorded["tokens"]["max_steps"] = 9
    write_run_json(run, recorded, "tokens")
    found = run_settings(run.path)
    assert found is not None and found[1] == run.run_json
    cfg = resolve_config(overrides={"seed": 3}, run=run.path, recorded=found)
    assert cfg.tokens.max_steps == 9 and cfg.seed == 3 and cfg.out == str(run.path)
    with pytest.raises(AugmentError, match=r"unknown config key 'nope' in .*run.json"):
        resolve_config(recorded=({"nope": 1}, run.run_json))


def _float_keys() -> list[str]:
    """Every dotted key of the config whose field holds a number (or numbers) by default."""
    import dataclasses

    from augment.config import Config

    cfg, keys = Config(), []
    for prefix, obj in [("", cfg), *((f"{n}.", getattr(cfg, n)) for n in ("tokens", "generate", "train", "caso"))]:
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if isinstance(v, float) and not isinstance(v, bool):
                keys.append(prefix + f.name)
    return keys


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_no_number_takes_nan_or_infinity(key, bad):
    """Wherever a number is taken, NaN and infinity are refused with one line naming the key."""
    with pytest.raises(AugmentError, match=rf"{key}.* must be"):
        resolve_config(overrides={key: bad})


def test_the_sampler_choices_are_the_backbones():
    """config.SAMPLERS (what a config accepts) and models.backbone.SCHEDULERS (what loads) agree."""
    from augment.config import SAMPLERS
    from augment.models.backbone import SCHEDULERS

    assert set(SAMPLERS) == set(SCHEDULERS)
