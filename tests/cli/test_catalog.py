"""`augment config`: the resolved settings as YAML, which is also how precedence is proven:
defaults < preset < --config < run.json (--run) < flags."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from augment.cli import cli
from augment.io.rundir import RunDir, write_run_json


def config(*args: str) -> dict:
    r = CliRunner().invoke(cli, ["config", *args])
    assert r.exit_code == 0, r.output
    return yaml.safe_load(r.output)


def test_preset_over_defaults():
    cfg = config("--dataset", "digits")
    assert cfg["tokens"]["grad_steps"] == "all" and cfg["generate"]["image_format"] == "png"  # preset
    assert cfg["tokens"]["weight_decay"] == 0.01  # built-in default the preset leaves alone
    assert cfg["out"] == "runs/digits"


def test_precedence_file_run_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 5\ntokens:\n  lr: 0.5\n  max_steps: 3\ngenerate:\n  per_class: 7\n")
    assert config("--config", str(f))["tokens"]["lr"] == 0.5  # file beats preset
    run = RunDir(tmp_path / "run")
    recorded = config("--dataset", "digits")
    recorded["tokens"]["max_steps"] = 9
    recorded["generate"]["per_class"] = 11
    write_run_json(run, recorded, "tokens")
    cfg = config("--config", str(f), "--run", str(run), "--per-class", "13", "--set", "train.epochs=2")
    assert cfg["tokens"]["max_steps"] == 9  # run.json beats the file
    assert cfg["generate"]["per_class"] == 13  # a flag beats run.json
    assert cfg["train"]["epochs"] == 2 and cfg["out"] == str(run.path)


def test_unknown_dataset_names_the_presets():
    r = CliRunner().invoke(cli, ["config", "--dataset", "nosuch"])
    assert r.exit_code == 2
    assert "no preset for dataset 'nosuch'" in r.output and "digits" in r.output


def test_bad_set():
    r = CliRunner().invoke(cli, ["config", "--set", "tokens.lr"])
    assert r.exit_code == 2 and "KEY=VALUE" in r.output
    r = CliRunner().invoke(cli, ["config", "--set", "tokens.nope=1"])
    assert r.exit_code == 2 and "unknown config key 'nope'" in r.output
