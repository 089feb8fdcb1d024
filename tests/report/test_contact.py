"""Contact sheets and eval figures, on runs written without a model (tests/io helpers)."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from augment.downstream.eval_result import Accuracy, EvalArm, EvalResult
from augment.errors import AugmentError
from augment.io.rundir import write_run_json
from augment.io.shards import write_info, write_shard
from augment.report.contact import (
    EVAL_FIGURE,
    EvalPanel,
    Layout,
    eval_panels,
    sheet_size,
    tile_size,
    write_contact_sheets,
    write_eval_figures,
)
from tests.io import make_run, make_sample

# make_run's default (3, 3, 2) shards hold, interleaved: classes 0 and 1 with samples 0-2, class 2 with 0-1
SAMPLES = {0: 3, 1: 3, 2: 2}


def token_colour(c: int, i: int) -> tuple[int, int, int]:
    return (40 + 60 * c, 10 * i % 256, 90)  # tests.io.encode


def baseline_colour(c: int, i: int) -> tuple[int, int, int]:
    return (230, 20 + 50 * i, 30 * c)


def make_baseline(out: Path, extra: int = 0) -> Path:
    """A baseline arm with the same keys (plus ``extra`` more samples per class), in other colours."""
    arm = out / "baseline"
    samples = []
    for i in range(max(SAMPLES.values()) + extra):
        for c in SAMPLES:
            if i < SAMPLES[c] + extra:
                s = make_sample(c, i, "png")
                buf = io.BytesIO()
                Image.new("RGB", (16, 16), baseline_colour(c, i)).save(buf, "PNG")
                samples.append(dataclasses.replace(s, image=buf.getvalue()))
    write_shard(arm, 0, samples)
    write_info(arm, "synth")
    return arm


def tile_centre(layout: Layout, per_class: int, arm: int, row: int, col: int) -> tuple[int, int]:
    block = per_class * (layout.tile + layout.gap)
    x = layout.label + arm * (block + layout.arm_gap) + layout.gap + col * (layout.tile + layout.gap)
    y = layout.header + row * layout.row
    return x + layout.tile // 2, y + layout.tile // 2


def test_tile_size_upscales_tiny_and_caps_large():
    assert tile_size(16, 16) == 64
    assert tile_size(32, 32) == 64
    assert tile_size(24, 24) == 72  # integer factor, so NEAREST keeps square pixels
    assert tile_size(100, 80) == 100
    assert tile_size(512, 512) == 128


def test_token_arm_only(tmp_path):
    out = make_run(tmp_path / "run", fmt="png")
    paths = write_contact_sheets(out, per_class=8)
    assert paths == [out / "report" / "contact-000.png"]
    with Image.open(paths[0]) as im:
        sheet = im.convert("RGB")
    layout = Layout(tile=64)
    assert sheet.size == sheet_size(3, 8, 1, layout)
    for c, n in SAMPLES.items():
        for i in range(n):
            assert sheet.getpixel(tile_centre(layout, 8, 0, c, i)) == token_colour(c, i)
        # no sample there: background, not a stretched neighbour
        assert sheet.getpixel(tile_centre(layout, 8, 0, c, n)) == (255, 255, 255)


def test_baseline_shows_the_same_keys_beside_the_tokens(tmp_path):
    out = make_run(tmp_path / "run", fmt="png")
    make_baseline(out, extra=2)  # the baseline has more samples: only the token arm's keys are shown
    paths = write_contact_sheets(out, per_class=2)
    with Image.open(paths[0]) as im:
        sheet = im.convert("RGB")
    layout = Layout(tile=64)
    assert sheet.size == sheet_size(3, 2, 2, layout)
    assert sheet.size[0] > sheet_size(3, 2, 1, layout)[0]
    for c in SAMPLES:
        for i in range(2):
            assert sheet.getpixel(tile_centre(layout, 2, 0, c, i)) == token_colour(c, i)
            assert sheet.getpixel(tile_centre(layout, 2, 1, c, i)) == baseline_colour(c, i)


def test_missing_baseline_sample_is_a_blank_tile(tmp_path):
    out = make_run(tmp_path / "run", fmt="png")
    arm = out / "baseline"
    write_shard(arm, 0, [make_sample(0, 0, "png")])  # only c0_s0 in the baseline
    with Image.open(write_contact_sheets(out, per_class=3)[0]) as im:
        sheet = im.convert("RGB")
    layout = Layout(tile=64)
    assert sheet.getpixel(tile_centre(layout, 3, 1, 0, 0)) == token_colour(0, 0)
    assert sheet.getpixel(tile_centre(layout, 3, 1, 0, 1)) == (225, 225, 225)


def test_max_classes_and_chunks(tmp_path):
    out = make_run(tmp_path / "run", fmt="png")
    layout = Layout(tile=64)
    paths = write_contact_sheets(out, per_class=4, classes_per_sheet=2)
    assert [p.name for p in paths] == ["contact-000.png", "contact-001.png"]
    with Image.open(paths[0]) as a, Image.open(paths[1]) as b:
        assert a.size == sheet_size(2, 4, 1, layout)
        assert b.size == sheet_size(1, 4, 1, layout)
        assert b.convert("RGB").getpixel(tile_centre(layout, 4, 0, 0, 0)) == token_colour(2, 0)
    # a smaller show removes the sheets it no longer writes
    paths = write_contact_sheets(out, per_class=4, max_classes=2)
    assert [p.name for p in paths] == ["contact-000.png"]
    assert sorted(p.name for p in (out / "report").glob("contact-*.png")) == ["contact-000.png"]
    with Image.open(paths[0]) as im:
        assert im.size == sheet_size(2, 4, 1, layout)
    assert not [p for p in (out / "report").iterdir() if p.name.startswith(".")]  # no temp files left


def test_jpeg_run_is_read(tmp_path):
    out = make_run(tmp_path / "run", fmt="jpg")
    with Image.open(write_contact_sheets(out)[0]) as im:
        assert im.size == sheet_size(3, 8, 1, Layout(tile=64))


def test_missing_or_empty_run_folder_raises(tmp_path):
    with pytest.raises(AugmentError, match="does not exist"):
        write_contact_sheets(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AugmentError, match="no generated samples"):
        write_contact_sheets(tmp_path / "empty")
    out = make_run(tmp_path / "run")
    with pytest.raises(AugmentError, match="per-class"):
        write_contact_sheets(out, per_class=0)


def test_broken_shard_raises_augment_error(tmp_path):
    out = make_run(tmp_path / "run")
    (out / "shards" / "synth-000000.tar").write_bytes(b"not a tar")
    with pytest.raises(AugmentError, match="augment verify"):
        write_contact_sheets(out)


def accuracy(images: str, classifier: str, per_class: dict[str, float]) -> Accuracy:
    mean = sum(per_class.values()) / len(per_class)
    return Accuracy(images=images, dir=None if images.startswith("real") else f"/run/{images}", classifier=classifier,
                    n=10 * len(per_class), top1=mean, top5=1.0, top5_k=3, mean_class_top1=mean,
                    mean_class_top5=1.0, per_class_top1=per_class, per_class_top5=dict.fromkeys(per_class, 1.0))


JUDGE, GUIDE = "embedded:digits-judge", "embedded:digits-guide"
EVAL = EvalResult(
    run="/run", dataset="digits", split="test", classifiers=[JUDGE, GUIDE], feature_classifier=GUIDE,
    arms={"token": EvalArm("/run", 30), "baseline": EvalArm("/run/baseline", 30)},
    accuracy=[
        accuracy("token", JUDGE, {"zero": 0.7, "one": 0.9, "two": 0.8}),
        accuracy("baseline", JUDGE, {"zero": 0.2, "one": 0.5, "two": 0.8}),
        accuracy("real test", JUDGE, {"zero": 1.0, "one": 1.0, "two": 1.0}),
        accuracy("token", GUIDE, {"two": 0.6, "zero": 0.4, "one": 0.5}),
        accuracy("baseline", GUIDE, {"zero": 0.1, "two": 0.3, "one": 0.2}),
    ],
    distances=[], notes=[], created="2025-01-02T03:04:05+00:00",
)


def test_eval_panels():
    panels = eval_panels(EVAL, ["zero", "one", "two"])
    assert [p.classifier for p in panels] == [JUDGE, GUIDE]
    assert panels[1] == EvalPanel(GUIDE, ["zero", "one", "two"], [0.1, 0.2, 0.3], [0.4, 0.5, 0.6])
    assert panels[0].tokens == [0.7, 0.9, 0.8]
    # without the run's class list the classes keep eval.json's order; no baseline arm: no panel
    assert eval_panels(EVAL)[1].classes == ["two", "zero", "one"]
    token_only = dataclasses.replace(EVAL, accuracy=[r for r in EVAL.accuracy if r.images != "baseline"])
    assert eval_panels(token_only) == []


def test_eval_figure(tmp_path):
    out = make_run(tmp_path / "run")
    assert write_eval_figures(out) == []  # no eval.json yet
    write_run_json(out, {}, "generate", extra={"class_names": ["zero", "one", "two"]})
    (out / "report").mkdir(exist_ok=True)
    (out / "report" / "eval.json").write_text(json.dumps(EVAL.to_json()))
    paths = write_eval_figures(out)
    assert paths == [out / "report" / EVAL_FIGURE]
    with Image.open(paths[0]) as im:
        assert im.format == "PNG" and im.size[1] > 400  # two panels
    messages: list[str] = []
    (out / "report" / "eval.json").write_text(json.dumps({"accuracy": 0.9}))  # another layout: skipped, said once
    assert write_eval_figures(out, log=messages.append) == []
    assert len(messages) == 1 and "re-run `augment eval" in messages[0] and "'run'" in messages[0]
    with pytest.warns(UserWarning, match="no eval figure"):
        assert write_eval_figures(out) == []
    (out / "report" / "eval.json").write_text("{not json")
    with pytest.raises(AugmentError, match="eval.json"):
        write_eval_figures(out)
