"""``augment report``'s page (augment.report.page) on run folders written without a model."""

from __future__ import annotations

import base64
import io
import json
from html.parser import HTMLParser

import pytest
from PIL import Image

from augment.datasets.digits import DIGIT_NAMES
from augment.errors import AugmentError
from augment.io.rundir import RunDir
from augment.report.page import PAGE_NAME, THUMB, curve_svg, image_uri, read_run, write_report_page
from tests.report import CLASSES, history, make_report_run


class Page(HTMLParser):
    """The page's structure: per class section, per arm block, the tiles' keys; every img src,
    every link, every script tag, the text."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.sections: dict[str, dict[str, list[str]]] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self.scripts = 0
        self.text: list[str] = []
        self._section: str | None = None
        self._arm: str | None = None
        self._in_label = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section" and "class" in (a.get("class") or ""):
            self._section = a["id"]
            self.sections[self._section] = {}
        elif tag == "div" and a.get("class") == "label":
            self._in_label = True
        elif tag == "img":
            self.srcs.append(a.get("src") or "")
            if self._section and self._arm and a.get("alt", "").startswith("c"):
                self.sections[self._section][self._arm].append(a["alt"])
        elif tag == "a":
            self.hrefs.append(a.get("href") or "")
        elif tag in ("script", "link", "iframe"):
            self.scripts += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._section = self._arm = None
        elif tag == "div" and self._in_label:
            self._in_label = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._in_label and self._section:
            self._arm = data.split()[0]
            self.sections[self._section][self._arm] = []


def page_of(out) -> tuple[Page, str]:
    text = write_report_page(out).read_text(encoding="utf-8")
    return Page(text), text


def test_page_shows_every_class_its_images_curve_and_tables(tmp_path):
    out = make_report_run(tmp_path / "run")
    path = write_report_page(out)
    assert path == RunDir(out).report / PAGE_NAME
    page, text = page_of(out)
    assert sorted(page.sections) == [f"class-{c}" for c in CLASSES]
    for c in CLASSES:
        arms = page.sections[f"class-{c}"]
        assert list(arms) == ["tokens", "plain"]  # token arm first, the baseline beside it
        assert arms["tokens"] == [f"c{c:04d}_s{i:06d}" for i in range(4)]
        assert arms["plain"] == arms["tokens"]  # the same keys: same seeds, without the token
        assert f"training curve of class {c}" in text
        assert f"{c}: {DIGIT_NAMES[c]}" in text
    # self-contained: every image inlined, no script, no link out of the page
    assert page.srcs and all(s.startswith("data:image/") for s in page.srcs)
    assert page.scripts == 0
    assert all(h.startswith("#") for h in page.hrefs)
    body = " ".join(page.text)
    assert "embedded:digits-guide" in body and "+50.0" in body  # Table 1: class zero 75% vs 25%
    assert "4/6 (66.7%)" in body  # acceptance of class two: 4 kept of 6 drawn
    assert "± 0.7" in body  # Table 2's spread (std of 0.5+0.1k+0.01s over two seeds, in %)
    assert "Table 2: accuracy vs k with error bars" in text
    assert "fewer than 50 images" in body  # FID of 12 images flagged
    assert "run.json" in body and "generate.per_class" in body  # the settings, flattened


def test_page_without_eval_benchmark_or_acceptance_says_how_to_make_them(tmp_path):
    out = make_report_run(tmp_path / "run", eval_json=False, benchmark=False)
    RunDir(out).acceptance_json.unlink()
    page, _ = page_of(out)
    body = " ".join(page.text)
    assert f"augment eval {out}" in body and f"augment benchmark {out}" in body
    assert "--min-confidence" in body
    assert len(page.sections) == len(CLASSES)


def test_caso_edits_are_shown_when_present(tmp_path):
    out = make_report_run(tmp_path / "run", caso=True)
    page, _ = page_of(out)
    for c in CLASSES:
        assert page.sections[f"class-{c}"]["CASO"] == [f"c{c:04d}_s{i:06d}" for i in range(2)]


def test_per_class_and_max_classes(tmp_path):
    out = make_report_run(tmp_path / "run")
    view = read_run(out, per_class=2, max_classes=2)
    assert [c.index for c in view.classes] == [0, 1]
    assert all(len(entries) == 2 for c in view.classes for entries in c.images.values())


def test_tokens_only_run_has_curves_and_no_images(tmp_path):
    out = tmp_path / "run"
    run = RunDir(out)
    from augment.io.atomic import atomic_write_json

    atomic_write_json(run.token_history(1, "one"), history(1))
    page, text = page_of(out)
    assert list(page.sections) == ["class-1"] and page.sections["class-1"] == {}
    assert "training curve of class 1" in text and "No run.json" in text


def test_other_layouts_are_notes_not_failures(tmp_path):
    out = make_report_run(tmp_path / "run")
    (RunDir(out).eval_json).write_text(json.dumps({"accuracy": 0.9}))
    (RunDir(out).benchmark_files()["json"]).write_text(json.dumps({"k": 1}))
    notes: list[str] = []
    write_report_page(out, log=notes.append)
    assert len(notes) == 2 and "augment eval" in notes[0] and "augment benchmark" in notes[1]


def test_missing_or_empty_folder_raises(tmp_path):
    with pytest.raises(AugmentError, match="does not exist"):
        write_report_page(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AugmentError, match="no generated samples and no trained tokens"):
        write_report_page(tmp_path / "empty")
    with pytest.raises(AugmentError, match="per-class"):
        read_run(make_report_run(tmp_path / "run"), per_class=0)


def decode(uri: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_image_uri_keeps_small_images_and_shrinks_large_ones():
    small = image_uri(Image.new("RGB", (32, 32), (10, 20, 30)))
    assert small.startswith("data:image/png;") and decode(small).size == (32, 32)
    large = image_uri(Image.new("RGB", (512, 384), (10, 20, 30)))
    assert large.startswith("data:image/jpeg;") and decode(large).size == (THUMB, 96)


def test_curve_svg():
    svg = curve_svg(history(0), 0)
    assert svg is not None and svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'aria-label="training curve of class 0"' in svg and "kept step 2" in svg
    assert svg.count("<polyline") == 2 and svg.count("<circle") == 3  # loss, batch accuracy; validations 0, 2, 4
    assert curve_svg({"steps": [], "validations": []}, 0) is None
    only_init = {"steps": [], "validations": [{"step": 0, "accuracy": 1.0, "loss": 0.1}], "best_step": 0}
    assert "no optimisation step" in curve_svg(only_init, 0)
    failed = {"steps": [{"step": 1, "loss": None, "accuracy": 0.5}], "validations": []}  # a failed class's NaN loss
    assert curve_svg(failed, 0).count("<polyline") == 1
