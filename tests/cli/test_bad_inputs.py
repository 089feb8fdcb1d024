"""Every command, fed bad input, fails the same way: exit 2, one line on stderr naming the problem
(and the fix), no traceback, and no run folder created or left half-written.

One table, one assertion routine. Each case runs the real CLI: in-process with click's CliRunner
(the entry point's own group, so click's parsing and augment's error mapping are both exercised),
or as a subprocess where the process itself must be limited (a full disk is RLIMIT_FSIZE, which
only a child can be given). Nearly every case fails in preflight, before a model loads, so the
table runs in seconds; the few that must get further are marked ``slow``.

"Nothing written" is checked byte for byte: the whole working folder (cwd, config files, data
roots, an existing run folder) is hashed before and after the command and must be identical. A
full disk cannot be refused in advance; there the run folder must be resumable: no temporary file
left and no shard without its manifest.
"""

from __future__ import annotations

import errno
import hashlib
import os
import resource
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from augment.cli import cli
from augment.io.rundir import LOCK_NAME
from tests.fixtures.datasets import make_fake_cub, save_image

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------ case set-ups
# Each writes what its case needs into the working folder ``w`` (before the snapshot).

def _config(text: str | bytes) -> Callable[[Path], None]:
    def setup(w: Path) -> None:
        data = text if isinstance(text, bytes) else text.encode()
        (w / "c.yaml").write_bytes(data)
    return setup


def _a_file(w: Path) -> None:
    (w / "file.txt").write_text("x")


def _folder_data(w: Path) -> None:
    for c in ("bird", "cat", "dog"):
        for j in range(2):
            save_image(w / "data" / c / f"{j}.png", j)


def _symlink_out_of_root(w: Path) -> None:
    _folder_data(w)
    save_image(w / "elsewhere" / "secret.png", 7)
    os.symlink(w / "elsewhere" / "secret.png", w / "data" / "cat" / "link.png")


def _cub_line_escapes(w: Path) -> None:
    """A CUB tree whose images.txt sends image 1 outside the data root."""
    root = make_fake_cub(w)
    lines = (root / "images.txt").read_text().splitlines()
    lines[0] = "1 ../../elsewhere/x.jpg"
    (root / "images.txt").write_text("\n".join(lines) + "\n")
    save_image(w / "elsewhere" / "x.jpg", 3)


def _corrupt_reals(w: Path) -> None:
    for c in ("bird", "cat", "dog"):  # the micro classifier's 3 classes: the only problem is the image
        (w / "data" / c).mkdir(parents=True)
        (w / "data" / c / "0.jpg").write_bytes(b"not a jpeg at all")


def _corrupt_test_split(w: Path) -> None:
    for c in ("cat", "dog"):
        save_image(w / "data" / "train" / c / "0.png", 1)
        save_image(w / "data" / "test" / c / "0.png", 2)
    (w / "data" / "test" / "dog" / "1.jpg").write_bytes(b"\xff\xd8 truncated")


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header:
    PIL refuses it on open, before allocating anything)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def _huge_real(w: Path) -> None:
    for c in ("bird", "cat", "dog"):
        (w / "data" / c).mkdir(parents=True)
        (w / "data" / c / "0.png").write_bytes(_png_claiming(40000, 40000))


def _empty_data(w: Path) -> None:
    (w / "data").mkdir()


def _token_file(tensors: Callable[[str], dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    """A run folder whose class-0 token file holds ``tensors(token)`` (digits' width is 32)."""
    def setup(w: Path) -> None:
        from safetensors.torch import save_file

        from augment.datasets import get_dataset
        from augment.io.rundir import RunDir
        from augment.tokens.textual_inversion import token_string

        name = get_dataset("digits").class_names[0]
        path = RunDir(w / "run").arm_dir("token").token_file(0, name)
        path.parent.mkdir(parents=True)
        save_file(tensors(token_string(0)), str(path))
    return setup


#: a few hundred bytes that stand for 9**9 (387 million) strings once YAML's aliases are expanded
_LAUGHS = "".join(f"    {a}: &{a} [{', '.join(['*' + b] * 9)}]\n" for b, a in zip("abcdefgh", "bcdefghi", strict=True))
_BOMB = "  lol: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + _LAUGHS.replace("    ", "  ")
#: the same in YAML's flow style, for --set
_FLOW_BOMB = "{" + ", ".join(line.strip() for line in _BOMB.splitlines()) + "}"


def _bomb_under(section: str) -> Callable[[Path], None]:
    """A --config whose ``section`` (``dataset_options`` or ``train: arch_kwargs``) holds the bomb."""
    if section == "dataset_options":
        return _config("dataset_options:\n" + _BOMB)
    return _config("train:\n  arch_kwargs:\n" + _BOMB.replace("\n  ", "\n    ").replace("  lol:", "    lol:", 1))


def _presets(files: dict[str, bytes | None]) -> Callable[[Path], None]:
    """A folder ``{w}/pipes`` for AUGMENT_PIPELINES: name -> bytes (None: a folder of that name)."""
    def setup(w: Path) -> None:
        (w / "pipes").mkdir()
        for name, data in files.items():
            if data is None:
                (w / "pipes" / name).mkdir()
            else:
                (w / "pipes" / name).write_bytes(data)
    return setup


def _digit_run_with_file(name: str) -> Callable[[Path], None]:
    """A small digits run folder ``{w}/run`` (shards + manifests) with a file where ``name`` (a
    folder augment writes) goes: ``touch OUT/report``."""
    def setup(w: Path) -> None:
        from tests.downstream import make_digit_run

        make_digit_run(w / "run", per_class=1)
        (w / "run" / name).write_text("in the way\n")
    return setup


def _folder_data_and_file(name: str) -> Callable[[Path], None]:
    """The micro folder data and an empty run folder with a file where ``name`` goes."""
    def setup(w: Path) -> None:
        _folder_data(w)
        (w / "run").mkdir()
        (w / "run" / name).write_text("in the way\n")
    return setup


#: a path component one byte over what Linux file systems allow
_LONG = "x" * 256


# ------------------------------------------------------------------------------------ the table

@dataclass
class Case:
    """``args`` may use {w} (the working folder), {pipe} (a micro SD pipeline), {clf} (a 3-class
    micro classifier spec); ``fragment`` must appear in the one error line."""

    args: list[str]
    fragment: str
    setup: Callable[[Path], None] | None = None
    fsize_limit: int | None = None  # bytes: run as a subprocess under RLIMIT_FSIZE (a full disk)
    env: dict[str, str] = field(default_factory=dict)  # environment variables ({w} substituted)
    marks: list = field(default_factory=list)


def case(id: str, *args: str, fragment: str, **kw) -> pytest.param:
    c = Case(list(args), fragment, **kw)
    return pytest.param(c, id=id, marks=c.marks)


FAST = "--workers", "0"
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
#: a generate run on the micro models (3 classes: the folder data of _folder_data) that gets to its writes
MICRO_RUN = ("generate", "--baseline", "--dataset", "folder", "--data-root", "{w}/data", "--model", "{pipe}",
             "--classifier", "{clf}", "--out", "{w}/run", "--per-class", "2", "--steps", "2", "--workers", "0")

CASES = [
    # --- config files: every value typed, ranges, nesting, encoding, syntax -------------------------
    case("cfg-per-class-abc", "generate", "--config", "{w}/c.yaml", setup=_config("generate:\n  per_class: abc\n"),
         fragment="config key generate.per_class = 'abc' in config file"),
    case("cfg-min-confidence-high", "generate", "--config", "{w}/c.yaml",
         setup=_config('generate:\n  min_confidence: "high"\n'), fragment="generate.min_confidence = 'high'"),
    case("cfg-seed-abc", "tokens", "--config", "{w}/c.yaml", setup=_config("seed: abc\n"),
         fragment="config key seed = 'abc'"),
    case("cfg-workers-bool", "tokens", "--config", "{w}/c.yaml", setup=_config("workers: yes\n"),
         fragment="workers = True"),
    case("cfg-negative-steps", "generate", "--config", "{w}/c.yaml", setup=_config("generate:\n  steps: -5\n"),
         fragment="generate.steps (--steps) must be from 1 to 10,000, got -5"),
    case("cfg-lr-nan", "tokens", "--config", "{w}/c.yaml", setup=_config("tokens:\n  lr: .nan\n"),
         fragment="tokens.lr (--lr) must be a finite number (no NaN or infinity), got nan"),
    case("cfg-section-not-mapping", "tokens", "--config", "{w}/c.yaml", setup=_config("tokens: 5\n"),
         fragment="must be a mapping of tokens settings"),
    case("cfg-key-at-wrong-level", "generate", "--config", "{w}/c.yaml", setup=_config("per_class: 10\n"),
         fragment="did you mean generate.per_class"),
    case("cfg-unknown-key", "tokens", "--config", "{w}/c.yaml", setup=_config("tokens:\n  lrr: 1\n"),
         fragment="unknown config key 'lrr'"),
    case("cfg-not-utf8", "tokens", "--config", "{w}/c.yaml", setup=_config(b"seed: 1\n# caf\xe9\n"),
         fragment="is not UTF-8 text"),
    case("cfg-malformed-yaml", "tokens", "--config", "{w}/c.yaml", setup=_config("seed: 1\ntokens:\n  lr: [1, 2\n"),
         fragment="c.yaml: "),
    case("cfg-is-a-folder", "tokens", "--config", "{w}", fragment="is a directory"),
    case("cfg-prompts-not-strings", "tokens", "--config", "{w}/c.yaml", setup=_config("tokens:\n  prompts: [1, 2]\n"),
         fragment="tokens.prompts = [1, 2] in config file"),
    # --- prompt templates: refused with the config, before any model loads ------------------------
    case("prompt-unknown-placeholder", "generate", "--config", "{w}/c.yaml",
         setup=_config("generate:\n  prompts: ['a {bogus} {token} {name}']\n"), fragment="placeholder {bogus}"),
    case("prompt-list-empty", "tokens", "--config", "{w}/c.yaml", setup=_config("tokens:\n  prompts: []\n"),
         fragment="tokens.prompts must list at least one prompt template"),
    case("generate-prompt-without-token", "generate", "--config", "{w}/c.yaml",
         setup=_config("generate:\n  prompts: ['a photo of a {name}']\n"), fragment="has no {token} placeholder"),
    case("prompt-without-token", "tokens", "--config", "{w}/c.yaml",
         setup=_config("tokens:\n  prompts: ['a photo of a {name}']\n"), fragment="has no {token} placeholder"),
    case("prompt-bad-braces", "generate", "--config", "{w}/c.yaml",
         setup=_config("generate:\n  prompts: ['a {token {name}']\n"), fragment="cannot be filled"),
    # --- bounded YAML: aliases, sizes, nesting; one line, at once ------------------------------------
    case("cfg-alias-bomb-dataset-options", "tokens", "--config", "{w}/c.yaml", setup=_bomb_under("dataset_options"),
         fragment="expands to more than 100,000 values"),
    case("cfg-alias-bomb-arch-kwargs", "train", "--config", "{w}/c.yaml", setup=_bomb_under("train"),
         fragment="expands to more than 100,000 values"),
    case("set-alias-bomb", "config", "--set", "dataset_options=" + _FLOW_BOMB,
         fragment="--set dataset_options expands to more than"),
    case("cfg-recursive-alias", "config", "--config", "{w}/c.yaml", setup=_config("dataset_options: &a {x: *a}\n"),
         fragment="contains itself"),
    case("cfg-too-large", "config", "--config", "{w}/c.yaml", setup=_config("seed: 1\n" + "#" * 2_000_000 + "\n"),
         fragment="more than a config holds"),
    case("cfg-nested-too-deep", "config", "--config", "{w}/c.yaml", setup=_config("x: " + "[" * 50_000 + "]" * 50_000),
         fragment="c.yaml"),
    case("set-section-then-key", "config", "--set", "tokens=2", "--set", "tokens.lr=1",
         fragment="tokens.lr cannot be set: tokens was given a value (2)"),
    case("pipelines-missing", "config", env={"AUGMENT_PIPELINES": "{w}/nope"},
         fragment="AUGMENT_PIPELINES={w}/nope does not exist"),
    case("pipelines-a-file", "config", setup=_a_file, env={"AUGMENT_PIPELINES": "{w}/file.txt"},
         fragment="AUGMENT_PIPELINES={w}/file.txt is a file"),
    case("pipelines-preset-not-utf8", "config", setup=_presets({"digits.yaml": b"seed: 1 # caf\xe9\n"}),
         env={"AUGMENT_PIPELINES": "{w}/pipes"}, fragment="preset {w}/pipes/digits.yaml is not UTF-8"),
    case("pipelines-preset-is-a-folder", "config", setup=_presets({"digits.yaml": None}),
         env={"AUGMENT_PIPELINES": "{w}/pipes"}, fragment="no preset for dataset 'digits' (presets: none)"),
    # --- every value range-checked, NaN and infinity refused wherever a number is taken ---------------
    case("generate-guidance-nan", "generate", "--baseline", "--config", "{w}/c.yaml", *FAST,
         setup=_config("generate:\n  guidance_scale: .nan\n"),
         fragment="generate.guidance_scale (--guidance-scale) must be a finite number (no NaN or infinity), got nan"),
    case("generate-guidance-flag-inf", "generate", "--guidance-scale", "inf", *FAST,
         fragment="generate.guidance_scale (--guidance-scale) must be a finite number"),
    case("generate-guidance-huge", "build", "--set", "generate.guidance_scale=5000",
         fragment="generate.guidance_scale (--guidance-scale) must be from 0 to 100, got 5000"),
    case("train-lr-nan", "train", "--config", "{w}/c.yaml", setup=_config("train:\n  lr: .nan\n"),
         fragment="train.lr (--lr) must be a finite number"),
    case("train-lr-negative", "train", "--lr", "-1", fragment="train.lr (--lr) must be at least 0, got -1"),
    case("train-std-zero", "train", "--config", "{w}/c.yaml", setup=_config("train:\n  std: [0, 0, 0]\n"),
         fragment="train.std must be 3 numbers, each greater than 0, got [0, 0, 0]"),
    case("train-mean-two", "train", "--set", "train.mean=[0.5, 0.5]", fragment="train.mean must be 3 numbers"),
    case("train-label-smoothing-7", "train", "--set", "train.label_smoothing=7",
         fragment="train.label_smoothing must be from 0 and below 1, got 7"),
    case("train-warmup-negative", "train", "--set", "train.warmup_epochs=-3",
         fragment="train.warmup_epochs must be from 0 to 100,000, got -3"),
    case("train-input-size-huge", "train", "--set", "train.input_size=100000",
         fragment="train.input_size (--input-size) must be from 8 to 2,048, got 100000"),
    case("train-opt-bogus", "train", "--set", "train.opt=bogus", fragment="train.opt must be an optimizer timm knows"),
    case("train-sched-bogus", "benchmark", "--set", "train.sched=bogus", fragment="train.sched 'bogus' is not one of"),
    case("train-scale-backwards", "train", "--set", "train.scale=[1.2, 0.8]", fragment="train.scale must be [low, high]"),
    case("train-weight-decay-negative", "train", "--set", "train.weight_decay=-1", fragment="train.weight_decay must be"),
    case("train-degrees-inf", "train", "--set", "train.degrees=.inf", fragment="train.degrees must be a finite number"),
    case("train-seeds-negative", "benchmark", "--set", "train.seeds=[-1]", fragment="train.seeds must be one or more"),
    case("caso-guided-step-negative", "caso", "--set", "caso.guided_step=-7",
         fragment="caso.guided_step (--guided-step) must be from 0 to 10,000, got -7"),
    case("caso-split-nosuch", "config", "--set", "caso.split=nosuch", fragment="caso.split 'nosuch' is not one of"),
    case("caso-edit-guidance-nan", "caso", "--edit-guidance", "nan", fragment="caso.edit_guidance (--edit-guidance)"),
    case("tokens-acc-threshold-inf", "tokens", "--set", "tokens.acc_threshold=.inf",
         fragment="tokens.acc_threshold must be a finite number"),
    case("dataset-options-nan", "config", "--set", "dataset_options={x: .nan}",
         fragment="dataset_options must be a finite number"),
    case("scheduler-unknown", "generate", "--set", "scheduler=heun", fragment="scheduler 'heun' is not one of"),
    case("config-set-seed-abc", "config", "--set", "seed=abc", fragment="config key seed = 'abc'"),
    case("config-set-train-epochs-zero", "config", "--set", "train.epochs=0", fragment="--epochs must be at least 1, got 0"),
    case("config-set-train-hflip-3", "config", "--set", "train.hflip=3", fragment="--hflip must be a probability in [0, 1]"),
    case("tokens-set-unknown-key", "tokens", "--out", "{w}/run", "--set", "tokens.nope=1",
         fragment="unknown config key 'nope' in command-line options [tokens]"),
    case("generate-set-bad-steps", "generate", "--out", "{w}/run", "--set", "generate.steps=0",
         fragment="generate.steps (--steps) must be from 1 to 10,000, got 0"),
    # --- sizes and counts: checked before anything is allocated -------------------------------------
    case("classes-huge-range", "tokens", "--classes", "0-99999999999", *FAST,
         fragment="class 99999999999 is out of range"),
    case("classes-duplicated", "tokens", "--classes", "3,3", *FAST, fragment="class 3 is selected twice"),
    case("classes-unknown-name", "generate", "--classes", "zebra", "--baseline", *FAST,
         fragment="cannot read 'zebra'"),
    case("classes-backwards", "caso", "--classes", "5-2", *FAST, fragment="runs backwards"),
    case("per-class-billion", "generate", "--per-class", "1000000000", *FAST,
         fragment="generate.per_class (--per-class) must be from 1 to 10,000,000"),
    case("per-class-times-classes", "generate", "--per-class", "5000000", "--baseline", *FAST,
         fragment="is 50,000,000 samples, more than one run plans"),
    case("per-class-negative", "build", "--per-class", "-5", fragment="got -5"),
    case("shard-size-zero", "generate", "--shard-size", "0", fragment="generate.shard_size (--shard-size)"),
    case("workers-negative", "tokens", "--workers", "-1", fragment="workers (--workers) must be from 0"),
    case("steps-zero", "generate", "--steps", "0", fragment="generate.steps (--steps)"),
    case("batch-size-zero", "generate", "--batch-size", "0", fragment="generate.batch_size (--batch-size)"),
    case("max-attempts-zero", "generate", "--max-attempts", "0", fragment="generate.max_attempts"),
    case("min-confidence-above-1", "generate", "--min-confidence", "1.5", fragment="generate.min_confidence"),
    case("max-steps-negative", "tokens", "--max-steps", "-1", fragment="tokens.max_steps (--max-steps)"),
    case("grad-steps-zero", "tokens", "--grad-steps", "0", fragment="--grad-steps must be a positive integer"),
    case("caso-k-zero", "caso", "--k", "0", fragment="caso.k (--k) must be from 1"),
    case("caso-strength-zero", "caso", "--strength", "0", fragment="caso.strength (--strength) must be above 0"),
    case("caso-target-out-of-range", "caso", "--target", "99", *FAST, fragment="'99' is not a class index 0-9"),
    case("gpus-per-worker-1.5", "tokens", "--gpus-per-worker", "1.5", fragment="gpus_per_worker must be"),
    # --- flags click checks, in one line --------------------------------------------------------------
    case("image-format-gif", "generate", "--image-format", "gif", fragment="'gif' is not one of 'jpg', 'png', 'webp'"),
    case("dtype-float8", "tokens", "--dtype", "float8", fragment="Invalid value for '--dtype'"),
    case("seed-not-int", "build", "--seed", "abc", fragment="'abc' is not a valid integer"),
    case("option-typo", "generate", "--per-clas", "3", fragment="Did you mean"),
    case("unknown-command", "frobnicate", fragment="No such command 'frobnicate'"),
    # --- devices ----------------------------------------------------------------------------------------
    case("device-cuda-without-gpu", "tokens", "--device", "cuda", *FAST, fragment="no GPU is visible",
         marks=[NO_CUDA]),
    case("device-unknown", "generate", "--device", "tpu9", "--workers", "2", fragment="'tpu9' is not a device"),
    # --- datasets, data roots, real images --------------------------------------------------------------
    case("dataset-unknown", "tokens", "--dataset", "nosuch", fragment="nosuch"),
    case("data-root-missing", "tokens", "--dataset", "folder", "--data-root", "{w}/nope",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         fragment="data root {w}/nope for dataset 'folder' does not exist"),
    case("data-root-is-a-file", "caso", "--dataset", "folder", "--data-root", "{w}/file.txt",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         setup=_a_file,
         fragment="is a file, not a folder; check --data-root"),
    case("data-root-empty", "tokens", "--dataset", "folder", "--data-root", "{w}/data",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         setup=_empty_data,
         fragment="has no class folders with images"),
    case("data-root-symlink-leaves", "caso", "--dataset", "folder", "--data-root", "{w}/data",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         setup=_symlink_out_of_root, fragment="outside the data root {w}/data"),
    case("cub-images-txt-leaves-root", "caso", "--dataset", "cub", "--data-root", "{w}/CUB_200_2011", "--k", "4",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         setup=_cub_line_escapes, fragment="outside the data root {w}/CUB_200_2011"),
    case("reals-corrupt", "caso", "--dataset", "folder", "--data-root", "{w}/data", "--k", "1",
         "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         setup=_corrupt_reals, fragment="cannot read image {w}/data/bird/0.jpg"),
    case("reals-decompression-bomb", "caso", "--dataset", "folder", "--data-root", "{w}/data", "--k", "1",
         "--model", "{pipe}", "--classifier", "{clf}",
         *FAST, setup=_huge_real, fragment="cannot read image {w}/data/bird/0.png"),
    case("datasets-show-unknown", "datasets", "show", "nosuch", fragment="unknown dataset 'nosuch'"),
    # --- model and classifier specs -----------------------------------------------------------------------
    case("model-spec-unreadable", "tokens", "--model", "not a spec!", fragment="cannot read model spec"),
    case("model-not-cached", "generate", "--model", "someone/not-cached", "--baseline", *FAST,
         fragment="not in the local Hugging Face cache"),
    case("classifier-spec-unknown", "tokens", "--model", "{pipe}", "--classifier", "resnet18", *FAST,
         fragment="cannot read classifier spec"),
    case("classifier-checkpoint-missing", "caso", "--model", "{pipe}",
         "--classifier", "timm:test_resnet@{w}/none.safetensors", *FAST, fragment="does not exist"),
    case("classifier-size-disagrees", "tokens", "--model", "{pipe}", "--classifier", "{clf}", *FAST,
         fragment="3 outputs but the dataset has 10 classes"),
    case("models-show-unknown", "models", "show", "embedded:nope", fragment="no embedded model"),
    # --- the run folder ---------------------------------------------------------------------------------
    case("out-is-a-file", "tokens", "--out", "{w}/file.txt", *FAST, setup=_a_file,
         fragment="--out {w}/file.txt is a file, not a folder"),
    case("out-read-only", "generate", "--baseline", "--out", "/sys/augment-run", "--per-class", "1", *FAST,
         fragment="--out /sys/augment-run is not writable"),
    case("token-file-extra-key", "generate", "--out", "{w}/run", "--classes", "0", *FAST,
         setup=_token_file(lambda t: {t: torch.zeros(1, 32), "<other>": torch.zeros(1, 32)}), fragment="holds 2 keys; a token file holds exactly one"),
    case("token-file-scalar", "generate", "--out", "{w}/run", "--classes", "0", *FAST,
         setup=_token_file(lambda t: {t: torch.tensor(1.0)}), fragment="0000"),
    # --- write paths: a file in the way, a name too long: one line, nothing written ----------------------
    case("tokens-file-in-the-way", "tokens", "--dataset", "folder", "--data-root", "{w}/data", "--model", "{pipe}",
         "--classifier", "{clf}", "--out", "{w}/run", "--max-steps", "1", *FAST, setup=_folder_data_and_file("tokens"),
         fragment="{w}/run/tokens is a file where augment keeps a folder; move it aside"),
    case("generate-report-in-the-way", *MICRO_RUN, setup=_folder_data_and_file("report"),
         fragment="{w}/run/report is a file where augment keeps a folder"),
    case("eval-report-in-the-way", "eval", "{w}/run", "--device", "cpu", setup=_digit_run_with_file("report"),
         fragment="{w}/run/report is a file where augment keeps a folder"),
    case("report-report-in-the-way", "report", "{w}/run", setup=_digit_run_with_file("report"),
         fragment="cannot write {w}/run/report: File exists"),
    case("tokens-out-name-too-long", "tokens", "--out", "{w}/" + _LONG + "/run", *FAST,
         fragment="File name too long"),
    case("train-out-name-too-long", "train", "--out", "{w}/" + _LONG, "--epochs", "1",
         fragment="File name too long"),
    case("train-out-is-a-file", "train", "--out", "{w}/file.txt", "--epochs", "1", setup=_a_file,
         fragment="--out {w}/file.txt is a file, not a folder"),
    # --- commands that read a run ---------------------------------------------------------------------
    case("verify-missing-folder", "verify", "{w}/nope", fragment="Directory '{w}/nope' does not exist"),
    case("show-a-file", "show", "{w}/file.txt", setup=_a_file, fragment="is a file"),
    case("show-per-class-zero", "show", "{w}", "--per-class", "0", fragment="Invalid value for '--per-class': 0 is not"),
    case("datasets-show-limit-negative", "datasets", "show", "digits", "--limit", "-1", fragment="'--limit'"),
    case("eval-missing-run", "eval", "{w}/nope", fragment="run folder {w}/nope does not exist"),
    case("train-corrupt-test-image", "train", "--dataset", "folder", "--data-root", "{w}/data", "--real-k", "1",
         "--epochs", "1", setup=_corrupt_test_split, fragment="cannot read image {w}/data/test/dog/1.jpg"),
    case("train-epochs-zero", "train", "--epochs", "0", fragment="--epochs must be at least 1"),
    case("train-arch-kwargs-list", "train", "--arch-kwargs", "[1]", fragment="--arch-kwargs must be a JSON object"),
    case("train-synthetic-prob-2", "train", "--synthetic-prob", "2", fragment="--synthetic-prob must be in [0, 1]"),
    case("benchmark-k-not-ints", "benchmark", "--out", "{w}/run", "--k", "abc", fragment="--k 'abc'"),
    case("benchmark-seeds-zero", "benchmark", "--out", "{w}/run", "--seeds", "0", fragment="--seeds 0"),
    # --- a full disk: the write fails; one line, and the folder stays resumable -------------------------
    # --- the initialiser word: checked on the driver with the tokenizer alone, before run.json (issue 19)
    case("tokens-init-not-one-token", "tokens", "--dataset", "folder", "--data-root", "{w}/data", "--model", "{pipe}",
         "--classifier", "{clf}", "--out", "{w}/run", "--workers", "0", "--set", "tokens.init_token=zzqx",
         setup=_folder_data, fragment="initialiser 'zzqx' is not a single token"),
    case("disk-full-at-run-json", *MICRO_RUN, setup=_folder_data, fsize_limit=1024,
         fragment="cannot write run.json in {w}/run/baseline: [Errno 27] File too large; free space",
         marks=[pytest.mark.slow]),
    case("disk-full-at-shard", *MICRO_RUN, setup=_folder_data, fsize_limit=16 * 1024,
         fragment="cannot write shard 0 in {w}/run/baseline: [Errno 27] File too large; free space",
         marks=[pytest.mark.slow]),
]


# ---------------------------------------------------------------------------------------- running

def _snapshot(root: Path) -> dict[str, str]:
    """Every path below ``root`` with its content's sha256 (folders and links marked as such).

    The run folder's lock file is left out: a command that takes the lock of an existing folder
    before it refuses bad input records itself there, which changes no data."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + [f for f in filenames if f != LOCK_NAME]:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _run_limited(args: list[str], cwd: Path, env: dict[str, str], fsize: int) -> tuple[int, str]:
    """The real entry point in a child whose files may not exceed ``fsize`` bytes (EFBIG: a full
    disk as the process sees it; Python ignores SIGXFSZ, so the write raises instead of killing)."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.run([sys.executable, "-m", "augment", *args], cwd=cwd,
                          env={**env, "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}, preexec_fn=limit,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stderr


def _assert_resumable(run: Path) -> None:
    """A run folder a write failed in: no temporary file left, no shard without its manifest."""
    from augment.io.atomic import is_temp_name

    leftovers = [p for p in run.rglob("*") if is_temp_name(p.name)]
    assert not leftovers, leftovers
    shards = {p.stem for p in run.rglob("shards/*.tar")}
    manifests = {p.stem for p in run.rglob("manifests/*.parquet")}
    assert shards <= manifests, shards - manifests


@pytest.mark.parametrize("c", CASES)
def test_bad_input(c: Case, tmp_path, micro_pipeline_dir, micro_classifier_path, monkeypatch):
    w = tmp_path / "w"
    w.mkdir()
    monkeypatch.chdir(w)  # the default --out (runs/<dataset>) would land here
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # outside w: a cache is not a run folder
    if c.setup:
        c.setup(w)
    subs = {"{w}": str(w), "{pipe}": str(micro_pipeline_dir), "{clf}": f"timm:test_resnet@{micro_classifier_path}"}
    args = list(c.args)
    fragment = c.fragment
    for key, value in subs.items():
        args = [a.replace(key, value) for a in args]
        fragment = fragment.replace(key, value)
    for key, value in c.env.items():
        monkeypatch.setenv(key, value.replace("{w}", str(w)))
    before = _snapshot(w)

    if c.fsize_limit is None:
        result = CliRunner().invoke(cli, args, prog_name="augment")
        code, stderr, stdout = result.exit_code, result.stderr, result.stdout
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
            repr(result.exception)
    else:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        code, stderr = _run_limited(args, w, env, c.fsize_limit)
        stdout = ""

    assert code == 2, (code, stdout, stderr)
    assert "Traceback" not in stderr + stdout
    # the one informational line a stage that reached its workers prints first (`device: cpu, ...`)
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("device: ")]
    assert len(lines) == 1, lines
    assert lines[0].startswith("Error: ") and fragment in lines[0], lines[0]
    if c.fsize_limit is None:
        assert _snapshot(w) == before  # nothing created, nothing changed
    else:
        _assert_resumable(w / "run")


def test_the_table_covers_every_command():
    """At least 30 cases, and every command that takes input appears in the table."""
    assert len(CASES) >= 30
    used = {p.values[0].args[0] for p in CASES}
    commands = {"tokens", "generate", "caso", "build", "verify", "show", "train", "eval", "benchmark",
                "config", "datasets", "models"}
    assert commands <= used, commands - used


def test_case_ids_are_unique():
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_full_disk_mid_run_keeps_the_folder_resumable(tmp_path, micro_pipeline_dir, micro_classifier_path):
    """The disk fills while a shard is written: exit 2 with the one error line last (the progress
    bar may precede it until it honours TQDM_DISABLE), no traceback, no temp file, no shard
    without its manifest."""
    w = tmp_path / "w"
    w.mkdir()
    _folder_data(w)
    args = [a.replace("{w}", str(w)).replace("{pipe}", str(micro_pipeline_dir))
            .replace("{clf}", f"timm:test_resnet@{micro_classifier_path}") for a in MICRO_RUN]
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"),
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code, stderr = _run_limited(args, w, env, 16 * 1024)
    assert code == 2 and "Traceback" not in stderr, stderr
    last = [ln for ln in stderr.splitlines() if ln.strip()][-1]
    assert last.startswith("Error: cannot write shard 0 in ") and "re-run the same command to resume" in last, last
    assert (w / "run" / "baseline" / "run.json").is_file()
    _assert_resumable(w / "run")


# --------------------------------------------------- a full disk anywhere: every write is the atomic helper's

def _no_space(path) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


TRAIN_TINY = ["--arch", "test_resnet", "--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "32",
              "--device", "cpu", "--real-k", "1"]


@pytest.mark.parametrize("command", ["eval", "report", "train"])
def test_a_full_disk_is_one_line_and_loses_nothing(command, tmp_path, monkeypatch):
    """ENOSPC at the atomic writer's flush (where every output passes): exit 2, one line naming the
    file and the fix, no temporary file left and every file that was there unchanged."""
    from tests.downstream import make_digit_run

    run = make_digit_run(tmp_path / "run", per_class=1)
    before = _snapshot(run)
    monkeypatch.setattr("augment.io.atomic._fsync_file", _no_space)
    args = {"eval": ["eval", str(run), "--device", "cpu"], "report": ["report", str(run)],
            "train": ["train", *TRAIN_TINY, "--synthetic", str(run), "--out", str(tmp_path / "t")]}[command]
    result = CliRunner().invoke(cli, args, prog_name="augment")
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("Error:")]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "free space" in lines[0], result.stderr
    assert "Traceback" not in result.output
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers, leftovers
    after = _snapshot(run)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing that was there changed


def test_train_ctrl_c_does_not_promise_a_resume(tmp_path, monkeypatch):
    """train does not resume: Ctrl-C must not say it does (the stages still say "resume")."""
    from tests.downstream import make_digit_run

    run = make_digit_run(tmp_path / "run", per_class=1)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr("augment.downstream.train.train_classifier", interrupted)
    result = CliRunner().invoke(cli, ["train", *TRAIN_TINY, "--synthetic", str(run), "--out", str(tmp_path / "t")],
                                prog_name="augment")
    assert result.exit_code == 130, result.output
    assert "to resume" not in result.output and "trains again from the start" in result.output, result.output


def test_train_lock_refusal_comes_before_the_data_loads(tmp_path, monkeypatch):
    """A locked run refuses train at once: the reals and shards are never read."""
    from tests.downstream import make_digit_run
    from tests.io.test_lock import hold_lock

    run = make_digit_run(tmp_path / "run", per_class=1)

    def must_not_load(*a, **k):
        raise AssertionError("train loaded its data before taking the lock")

    monkeypatch.setattr("augment.downstream.mixing.make_mixed_dataset", must_not_load)
    holder = hold_lock(run)
    try:
        result = CliRunner().invoke(cli, ["train", *TRAIN_TINY, "--synthetic", str(run)], prog_name="augment")
    finally:
        holder.kill()
        holder.wait()
    assert result.exit_code == 2, (result.output, result.exception)
    assert f"is being written by PID {holder.pid}" in result.output


def test_train_writes_its_checkpoint_like_every_other_output(tmp_path):
    """best.safetensors gets the mode of the other outputs (0644 under umask 022), and best.json is
    written before it (a kill between the two leaves no checkpoint without its sidecar)."""
    from unittest import mock

    from augment.io import atomic
    from tests.downstream import make_digit_run

    run = make_digit_run(tmp_path / "run", per_class=1)
    order: list[str] = []
    real = atomic.atomic_write_bytes

    def recording(path, data):
        order.append(Path(path).name)
        return real(path, data)

    old = os.umask(0o022)
    try:
        with mock.patch("augment.io.atomic.atomic_write_bytes", recording), \
                mock.patch("augment.downstream.train.atomic_write_bytes", recording, create=True):
            result = CliRunner().invoke(cli, ["train", *TRAIN_TINY, "--synthetic", str(run), "--out", str(tmp_path / "t")],
                                        prog_name="augment")
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    out = tmp_path / "t"
    modes = {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()}
    assert modes["best.safetensors"] == modes["metrics.json"] == 0o644, modes
    assert order.index("best.json") < order.index("best.safetensors"), order


def test_sigterm_after_ray_is_one_line(tmp_path, monkeypatch):
    """Once Ray's driver is up, SIGTERM is Terminated again (not Ray's C++ dump and abort), and the
    CLI says one line with exit 143, as a shell reports a SIGTERM."""
    import signal

    from augment.distributed.connection import take_back_sigterm
    from augment.errors import Terminated

    old = signal.getsignal(signal.SIGTERM)
    try:
        take_back_sigterm()
        with pytest.raises(Terminated):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):  # the handler runs at the next bytecode boundary
                pass
    finally:
        signal.signal(signal.SIGTERM, old)

    from tests.downstream import make_digit_run

    run = make_digit_run(tmp_path / "run", per_class=1)

    def terminated(*a, **k):
        raise Terminated(signal.SIGTERM)

    monkeypatch.setattr("augment.downstream.train.train_classifier", terminated)
    result = CliRunner().invoke(cli, ["train", *TRAIN_TINY, "--synthetic", str(run), "--out", str(tmp_path / "t")],
                                prog_name="augment")
    assert result.exit_code == 143, result.output
    assert [ln for ln in result.stderr.splitlines() if ln.strip()] == [
        "terminated; training does not resume: re-running the same command trains again from the start "
        "(the best epoch so far is in OUT/best.safetensors)"], result.stderr


def test_object_store_fits_an_address_space_limit(monkeypatch):
    """Under ``ulimit -v`` the private Ray's object store is an eighth of the limit (every Ray
    process maps all of it; Ray's default of 30% of the memory aborted the driver); none: Ray's own."""
    from augment.distributed import connection

    monkeypatch.setattr(resource, "getrlimit", lambda which: (10 * 2**30, resource.RLIM_INFINITY))
    assert connection.object_store_bytes() == 10 * 2**30 // 8
    monkeypatch.setattr(resource, "getrlimit", lambda which: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert connection.object_store_bytes() is None


@pytest.mark.slow
def test_generate_on_ray_under_an_address_space_limit(tmp_path):
    """``prlimit --as=10G augment generate --baseline --workers 1`` once aborted on a native plasma
    ``mmap failed`` dump, leaving an empty baseline/: now it runs to the end."""
    w = tmp_path / "w"
    w.mkdir()
    (w / "tiny.yaml").write_text("generate: {per_class: 2, steps: 2, shard_size: 2, batch_size: 2}\n")
    limit = 10 * 2**30

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="as-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {**os.environ, "TQDM_DISABLE": "1", "RAY_TMPDIR": ray_tmp,
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    try:
        proc = subprocess.run([sys.executable, "-m", "augment", "generate", "--baseline", "--classes", "0",
                               "--config", "tiny.yaml", "--workers", "1", "--out", "run"], cwd=w, env=env,
                              preexec_fn=limited, capture_output=True, text=True, timeout=500)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "mmap failed" not in proc.stderr
    assert sorted(p.name for p in (w / "run" / "baseline" / "shards").glob("*.tar")) == ["synth-000000.tar"]
