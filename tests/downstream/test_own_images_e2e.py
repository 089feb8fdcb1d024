"""The path a user with their own images takes, through the real `augment` executable, on a
folder of mixed sizes and modes (grey, CMYK, palette PNG with transparency, 16-bit, EXIF-rotated,
17x31 to 640x480): a guide trained on the reals (`augment guide --dataset folder`), then `build`,
`eval`, `train` and `benchmark` with it, all exit 0. Tiny sizes (embedded diffusion model, a few
steps); the classifier trains at 72 px, so timm's train transform is on the path too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.datasets import make_mixed_folder

REPO = Path(__file__).resolve().parents[2]
SMALL = """\
model: embedded:tiny-digits
workers: 0
tokens: {max_steps: 2, batch_size: 4, val_seeds: 4, val_every: 1, steps: 5}
generate: {per_class: 4, steps: 10, shard_size: 8, batch_size: 8}
train: {arch: test_resnet, pretrained: null, input_size: 72, epochs: 1, samples_per_epoch: 16, batch_size: 8,
        k_values: [0, 2], seeds: [0]}
"""


def _augment(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled", PYTHONUNBUFFERED="1",
               AUGMENT_PIPELINES=str(REPO / "pipelines"))
    env.pop("RAY_ADDRESS", None)
    r = subprocess.run([sys.executable, "-m", "augment", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"augment {args[0]} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.mark.slow
def test_own_folder_of_mixed_images(tmp_path):
    for split in ("train", "test"):
        make_mixed_folder(tmp_path / "data" / split)
    (tmp_path / "small.yaml").write_text(SMALL)
    data = ("--dataset", "folder", "--data-root", "data", "--config", "small.yaml")

    r = _augment("guide", *data, "--k", "4", "--out", "guide", cwd=tmp_path)
    assert "--classifier timm:test_resnet@guide/best.safetensors" in r.stdout
    guide = "timm:test_resnet@guide/best.safetensors"

    r = _augment("build", *data, "--classifier", guide, "--out", "run", cwd=tmp_path)
    assert "verify:    ok" in r.stdout
    _augment("eval", "--out", "run", "--data-root", "data", cwd=tmp_path)
    assert (tmp_path / "run" / "report" / "eval.json").is_file()
    _augment("train", *data, "--real-k", "2", "--synthetic", "run", "--out", "trained", cwd=tmp_path)
    assert (tmp_path / "trained" / "best.safetensors").is_file()
    _augment("benchmark", "--out", "run", "--data-root", "data", "--config", "small.yaml", "--arm", "real",
             "--arm", "token", cwd=tmp_path)
    assert (tmp_path / "run" / "report" / "benchmark.md").is_file()
