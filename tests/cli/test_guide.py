"""`augment guide`: a guidance classifier from the k-shot reals, for users who have none; what it
prints is a `--classifier` value the stages take as it is."""

from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from augment.cli import cli
from augment.datasets import get_dataset
from augment.errors import AugmentError

SMALL_TOKENS = "workers: 0\ntokens:\n  max_steps: 1\n  batch_size: 2\n  steps: 3\n  val_seeds: 2\n  val_every: 1\n"
#: a guide as small as a test allows: one short epoch of timm's tiny ResNet
QUICK = ("--epochs", "1", "--samples-per-epoch", "32", "--batch-size", "16")


def _classifier_value(output: str) -> str:
    found = re.search(r"--classifier (\S+)", output)
    assert found, output
    return found.group(1)


@pytest.mark.slow
def test_guide_then_tokens_with_the_printed_classifier(tmp_path):
    runner = CliRunner()
    r = runner.invoke(cli, ["guide", "--k", "3", *QUICK, "--epochs", "2", "--out", str(tmp_path / "guide")])
    assert r.exit_code == 0, r.output
    spec = _classifier_value(r.output)
    assert spec == f"timm:test_resnet@{tmp_path / 'guide' / 'best.safetensors'}"
    side = json.loads((tmp_path / "guide" / "best.json").read_text())
    assert side["class_names"] == get_dataset("digits").class_names
    metrics = json.loads((tmp_path / "guide" / "metrics.json").read_text())
    assert metrics["data"]["real"] == 30 and metrics["data"]["synthetic"] == 0  # 3 per class, reals only
    # the checkpoint is the last epoch, not one picked on the test split (tested only after it)
    assert metrics["best"]["epoch"] == metrics["final"]["epoch"] == 2
    assert [h["test_top1"] is None for h in metrics["history"]] == [True, False]

    (tmp_path / "small.yaml").write_text(SMALL_TOKENS)
    out = tmp_path / "run"
    r = runner.invoke(cli, ["tokens", "--config", str(tmp_path / "small.yaml"), "--classifier", spec,
                            "--classes", "0", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "run.json").read_text())["config"]["classifier"] == spec
    assert list((out / "tokens").glob("*"))


def test_guide_is_train_on_the_k_shot_reals(tmp_path, monkeypatch):
    """The guide is `augment train` with no synthetic set: the same k-shot draw for the same seed."""
    from augment import pipeline
    from augment.config import resolve_config

    seen = []
    monkeypatch.setattr(pipeline, "train", lambda cfg, request, log: seen.append((cfg.seed, request))
                        if cfg.train.eval_every == 0 else pytest.fail("the guide must test only its last epoch"))
    cfg = resolve_config(dataset="digits", overrides={"seed": 4})
    pipeline.guide(cfg, pipeline.GuideRequest(k=5, out=tmp_path / "g"))
    pipeline.guide(cfg, pipeline.GuideRequest())
    (seed, request), (_, default) = seen
    assert (seed, request.real_k, request.synthetic, request.split, request.test_split) == (4, 5, (), "train", "test")
    assert request.out == tmp_path / "g" and default.real_k == max(cfg.train.k_values)
    assert str(default.out) == f"guides/digits-k{default.real_k}-seed4"
    with pytest.raises(AugmentError, match="give at least 1 per class"):
        pipeline.guide(cfg, pipeline.GuideRequest(k=0))


def test_linear_probe_moves_only_the_head(tmp_path, mixed_folder):
    """--linear-probe on planted pretrained weights: every body tensor is the pretrained one after
    training, the head is not; the folder has no test split, which the guide says."""
    weights = tmp_path / "w.safetensors"
    body = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    save_file({k: v.contiguous() for k, v in body.state_dict().items()}, str(weights))
    args = ["guide", "--dataset", "folder", "--data-root", str(mixed_folder), "--k", "2", "--arch", "test_resnet",
            "--pretrained", f"timm:test_resnet@{weights}", "--input-size", "32", "--linear-probe", "--lr", "0.1",
            "--device", "cpu", *QUICK, "--out", str(tmp_path / "probe")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert "no test split" in r.output
    trained, start = load_file(str(tmp_path / "probe" / "best.safetensors")), load_file(str(weights))
    head = [k for k in trained if k.startswith("fc.")]
    assert head and all(trained[k].shape != start[k].shape or not torch.equal(trained[k], start[k]) for k in head)
    assert all(torch.equal(trained[k], start[k]) for k in trained if k not in head)


def test_linear_probe_without_weights_is_one_line(tmp_path):
    r = CliRunner().invoke(cli, ["guide", "--linear-probe", "--out", str(tmp_path / "g")])
    assert r.exit_code == 2 and "--linear-probe freezes all but the head" in r.output, r.output
    assert r.output.strip().count("\n") == 0
