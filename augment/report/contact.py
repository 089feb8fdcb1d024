"""Contact sheets and eval figures for ``augment show OUT``: see what a run made before trusting it.

A contact sheet puts one class per row: the token arm's images on the left and, when ``OUT/baseline``
exists, the baseline arm's images of the *same keys* (same seeds, no token) on the right, so the
effect of the token is visible at a glance. Each tile is captioned with the guidance classifier's
confidence in the target class (green when the classifier's top guess is the target, red when
not). Tiny images (the embedded 32 px digits) are upscaled with NEAREST so the pixels stay sharp.

Sheets are ``OUT/report/contact-000.png``, ``contact-001.png``, ... (one per chunk of classes, so a
1000-class run gives readable pages rather than one giant PNG); the eval figure is
``OUT/report/eval-per-class.png``, drawn from the :class:`~augment.downstream.eval_result.EvalResult`
that ``augment eval`` wrote. Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from augment.downstream.eval_result import EvalResult
from augment.errors import AugmentError
from augment.io.atomic import atomic_path
from augment.io.manifest import read_manifests
from augment.io.rundir import ARMS, ArmDir, RunDir, parse_shard_name, recorded_class_names

__all__ = [
    "CLASSES_PER_SHEET",
    "EVAL_FIGURE",
    "EvalPanel",
    "Layout",
    "eval_panels",
    "sheet_size",
    "tile_size",
    "write_contact_sheets",
    "write_eval_figures",
]

CLASSES_PER_SHEET = 25
SHEET_PREFIX = "contact-"
EVAL_FIGURE = "eval-per-class.png"
#: the arms side by side on a sheet and in the eval figure, left to right (names in augment.io.rundir.ARMS);
#: the first is the one whose samples are picked, the second shows the same keys
SHEET_ARMS = ("token", "baseline")

_BG = (255, 255, 255)
_BLANK = (225, 225, 225)
_TEXT = (0, 0, 0)
_OK = (0, 120, 0)
_WRONG = (200, 0, 0)


@dataclass(frozen=True)
class Layout:
    """Pixel geometry of a sheet; fixed so that a sheet's size follows from its row/column counts."""

    tile: int = 64  # side of one image tile
    caption: int = 14  # text strip under each tile (the confidence)
    label: int = 120  # class-name column on the left
    header: int = 34  # title + arm names at the top
    gap: int = 4  # between tiles
    arm_gap: int = 16  # between the token block and the baseline block

    @property
    def row(self) -> int:
        return self.tile + self.caption + self.gap


def tile_size(width: int, height: int, min_tile: int = 64, max_tile: int = 128) -> int:
    """Side of a tile for images of this size: tiny images grow by an integer factor (NEAREST keeps
    pixels crisp), big ones shrink to ``max_tile`` so a row of 512 px images stays viewable."""
    side = max(width, height, 1)
    if side < min_tile:
        return side * math.ceil(min_tile / side)
    return min(side, max_tile)


def sheet_size(n_classes: int, per_class: int, arms: int, layout: Layout) -> tuple[int, int]:
    """(width, height) of a sheet with ``n_classes`` rows and ``arms`` blocks of ``per_class`` tiles."""
    block = per_class * (layout.tile + layout.gap)
    width = layout.label + arms * block + (arms - 1) * layout.arm_gap + layout.gap
    height = layout.header + n_classes * layout.row + layout.gap
    return width, height


# ----------------------------------------------------------------------------------------- reading


@dataclass
class _Arm:
    label: str
    folder: ArmDir
    rows: dict[str, dict[str, Any]]  # key -> manifest row


def _read_arm(folder: ArmDir) -> _Arm | None:
    """An arm's manifest rows by key, or None when the arm has no manifests."""
    try:
        table = read_manifests(folder.manifests)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a broken file
        raise AugmentError(
            f"cannot read the manifests in {folder.manifests}: {e}; run `augment verify {folder}`"
        ) from None
    if table.num_rows == 0:
        return None
    wanted = [c for c in ("key", "shard", "class_index", "class_name", "sample_index", "image_format",
                          "guide_confidence", "guide_pred") if c in table.column_names]
    rows = {r["key"]: r for r in table.select(wanted).to_pylist()}
    return _Arm(folder.spec.label, folder, rows)


def _pick(arm: _Arm, per_class: int) -> dict[int, list[str]]:
    """Class index -> the keys of its first ``per_class`` samples by sample_index (then key)."""
    by_class: dict[int, list[tuple[int, str]]] = {}
    for key, r in arm.rows.items():
        idx = r.get("sample_index")
        by_class.setdefault(int(r["class_index"]), []).append((idx if idx is not None else 1 << 62, key))
    return {c: [k for _, k in sorted(v)[:per_class]] for c, v in sorted(by_class.items())}


def _load_images(arm: _Arm, keys: Iterable[str]) -> dict[str, Image.Image]:
    """Decode the images of ``keys`` from the arm's shards, opening each needed tar once."""
    by_shard: dict[str, dict[str, str]] = {}
    for key in keys:
        r = arm.rows.get(key)
        if r is not None:
            by_shard.setdefault(r["shard"], {})[f"{key}.{r.get('image_format') or 'jpg'}"] = key
    images: dict[str, Image.Image] = {}
    for shard, members in sorted(by_shard.items()):
        index = parse_shard_name(shard)
        if index is None:
            raise AugmentError(f"a manifest row of {arm.folder} names shard {shard!r}, which is not a shard "
                               f"name; run `augment verify {arm.folder}`")
        path = arm.folder.shard_path(index)
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    key = members.get(member.name)
                    if key is None:
                        continue
                    f = tar.extractfile(member)
                    if f is None:
                        continue
                    with Image.open(io.BytesIO(f.read())) as im:
                        images[key] = im.convert("RGB")
        except (OSError, tarfile.TarError) as e:
            raise AugmentError(f"cannot read shard {path}: {e}; run `augment verify {arm.folder}`") from None
    return images


# ----------------------------------------------------------------------------------------- drawing


def _font(size: int = 11) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no size argument
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    """Break ``text`` into lines narrower than ``width`` (by character: class names may have no
    spaces), at most ``max_lines`` of them, the last one ellipsised when cut."""
    lines: list[str] = []
    rest = text
    while rest and len(lines) < max_lines:
        n = len(rest)
        while n > 1 and draw.textlength(rest[:n], font=font) > width:
            n -= 1
        cut = rest[:n]
        if n < len(rest) and " " in cut[1:]:  # prefer a word boundary
            n = cut.rindex(" ")
            cut = rest[:n]
        lines.append(cut.strip())
        rest = rest[n:].lstrip()
    if rest and lines:
        last = lines[-1]
        while last and draw.textlength(last + "…", font=font) > width:
            last = last[:-1]
        lines[-1] = last + "…"
    return lines


def _tile(im: Image.Image, side: int) -> Image.Image:
    """``im`` fitted into a ``side`` square: NEAREST when enlarging, LANCZOS when shrinking."""
    method = Image.Resampling.NEAREST if max(im.size) <= side else Image.Resampling.LANCZOS
    fitted = ImageOps.contain(im, (side, side), method)
    if fitted.size == (side, side):
        return fitted
    canvas = Image.new("RGB", (side, side), _BG)
    canvas.paste(fitted, ((side - fitted.width) // 2, (side - fitted.height) // 2))
    return canvas


def _draw_sheet(
    title: str,
    classes: list[tuple[int, str, list[str]]],
    arms: list[_Arm],
    images: list[dict[str, Image.Image]],
    per_class: int,
    layout: Layout,
) -> Image.Image:
    size = sheet_size(len(classes), per_class, len(arms), layout)
    sheet = Image.new("RGB", size, _BG)
    draw = ImageDraw.Draw(sheet)
    font = _font(11)
    title = _wrap(draw, title, font, size[0] - 2 * layout.gap, max_lines=1)[0]
    draw.text((layout.gap, 2), title, fill=_TEXT, font=font)
    block = per_class * (layout.tile + layout.gap)
    x0s = [layout.label + a * (block + layout.arm_gap) for a in range(len(arms))]
    for x0, arm in zip(x0s, arms, strict=True):
        draw.text((x0 + layout.gap, 18), arm.label, fill=_TEXT, font=font)
        if x0 > layout.label:  # a rule between the arms
            xs = x0 - layout.arm_gap // 2
            draw.line([(xs, layout.header - 2), (xs, size[1] - 1)], fill=(160, 160, 160), width=1)
    for row, (c, name, keys) in enumerate(classes):
        y = layout.header + row * layout.row
        label_lines = _wrap(draw, f"{c}: {name}", font, layout.label - 2 * layout.gap,
                            max_lines=max(1, layout.row // 13))
        for n, line in enumerate(label_lines):
            draw.text((layout.gap, y + 2 + 13 * n), line, fill=_TEXT, font=font)
        for x0, arm, imgs in zip(x0s, arms, images, strict=True):
            for col, key in enumerate(keys):
                x = x0 + layout.gap + col * (layout.tile + layout.gap)
                r = arm.rows.get(key)
                im = imgs.get(key)
                if im is None:
                    draw.rectangle([x, y, x + layout.tile - 1, y + layout.tile - 1], fill=_BLANK)
                    draw.text((x + 2, y + layout.tile + 1), "missing", fill=_WRONG, font=font)
                    continue
                sheet.paste(_tile(im, layout.tile), (x, y))
                conf = r.get("guide_confidence") if r else None
                pred = r.get("guide_pred") if r else None
                text = "conf ?" if conf is None else f"{conf:.2f}"
                colour = _TEXT if pred is None else (_OK if int(pred) == c else _WRONG)
                draw.text((x + 1, y + layout.tile + 1), text, fill=colour, font=font)
    return sheet


def _save_png(image: Image.Image, path: Path) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        image.save(f, "PNG", optimize=False)
        f.flush()
        os.fsync(f.fileno())
    return path


# ----------------------------------------------------------------------------------------- public


def write_contact_sheets(
    out_dir: Path,
    per_class: int = 8,
    max_classes: int | None = None,
    classes_per_sheet: int = CLASSES_PER_SHEET,
) -> list[Path]:
    """Write ``OUT/report/contact-NNN.png`` (token arm beside baseline arm, one class per row).

    ``per_class``: images per class and arm (the first by sample index; the baseline shows the
    same keys). ``max_classes``: at most this many classes (the lowest indices), None for all.
    ``classes_per_sheet``: rows per PNG. Sheets left from an earlier, larger ``show`` are removed.
    Raises AugmentError when the folder is missing or holds no generated samples.
    """
    out_dir = Path(out_dir)
    if per_class < 1:
        raise AugmentError(f"--per-class must be at least 1, got {per_class}")
    if max_classes is not None and max_classes < 1:
        raise AugmentError(f"--max-classes must be at least 1, got {max_classes}")
    if classes_per_sheet < 1:
        raise AugmentError(f"classes per sheet must be at least 1, got {classes_per_sheet}")
    if not out_dir.is_dir():
        raise AugmentError(f"run folder {out_dir} does not exist; pass the --out of `augment generate`")
    run = RunDir(out_dir)
    arms = [a for a in (_read_arm(run.arm_dir(name)) for name in SHEET_ARMS) if a is not None]
    if not arms:
        raise AugmentError(
            f"{out_dir} holds no generated samples (no manifests in "
            f"{' or '.join(str(run.arm_dir(name).manifests) for name in SHEET_ARMS)}); "
            f"run `augment generate --out {out_dir}` first"
        )
    picked = _pick(arms[0], per_class)  # the baseline shows the same keys as the token arm
    class_ids = sorted(picked)[:max_classes] if max_classes else sorted(picked)
    names = {int(r["class_index"]): r.get("class_name") or str(r["class_index"]) for r in arms[0].rows.values()}
    first = next(iter(_load_images(arms[0], picked[class_ids[0]][:1]).values()), None)
    side = tile_size(*first.size) if first is not None else 64
    layout = Layout(tile=side)
    report = run.report
    paths: list[Path] = []
    chunks = [class_ids[i : i + classes_per_sheet] for i in range(0, len(class_ids), classes_per_sheet)]
    for n, chunk in enumerate(chunks):
        keys = [k for c in chunk for k in picked[c]]
        images = [_load_images(arm, keys) for arm in arms]
        rows = [(c, names[c], picked[c]) for c in chunk]
        page = f", sheet {n + 1}/{len(chunks)}" if len(chunks) > 1 else ""
        title = (f"{out_dir.resolve().name}, classes {chunk[0]}-{chunk[-1]}{page}: "
                 "guide confidence (green: top-1 correct)")
        sheet = _draw_sheet(title, rows, arms, images, per_class, layout)
        paths.append(_save_png(sheet, report / f"{SHEET_PREFIX}{n:03d}.png"))
    written = {p.name for p in paths}
    for old in report.glob(f"{SHEET_PREFIX}[0-9][0-9][0-9].png"):
        if old.name not in written:
            old.unlink(missing_ok=True)
    return paths


# ----------------------------------------------------------------------------------------- eval


@dataclass(frozen=True)
class EvalPanel:
    """One classifier's per-class top-1 on the baseline and the token arm, classes aligned."""

    classifier: str
    classes: list[str]
    baseline: list[float]
    tokens: list[float]


def eval_panels(result: EvalResult, class_order: Sequence[str] = ()) -> list[EvalPanel]:
    """A panel per classifier in ``result`` that scored both arms, over the classes both arms have
    images of: in ``class_order`` (the run's class list) first, then any others as eval.json lists
    them. Empty when the run has no baseline arm."""
    token, baseline = SHEET_ARMS
    panels = []
    for spec in result.classifiers:
        tok, base = result.row(token, spec), result.row(baseline, spec)
        if tok is None or base is None:
            continue
        both = [c for c in tok.per_class_top1 if tok.per_class_top1[c] is not None
                and base.per_class_top1.get(c) is not None]
        order = {name: i for i, name in enumerate(class_order)}
        classes = sorted(both, key=lambda c: order.get(c, len(order)))  # stable: unknown ones keep their order
        if classes:
            panels.append(EvalPanel(spec, classes, [base.per_class_top1[c] for c in classes],
                                    [tok.per_class_top1[c] for c in classes]))
    return panels


def _read_eval(run: RunDir, out_dir: Path, log: Callable[[str], None]) -> EvalResult | None:
    """The run's eval.json as an EvalResult; None (saying why through ``log``) when it is absent or
    of a layout this version does not read; AugmentError when it is not JSON."""
    path = run.eval_json
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AugmentError(f"cannot read {path}: {e}; re-run `augment eval {out_dir}`") from None
    try:
        return EvalResult.from_json(doc)
    except ValueError as e:
        log(f"no eval figure: {path} is not an eval.json this version reads ({e}); re-run `augment eval {out_dir}`")
        return None


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=4)  # at the caller of write_eval_figures


def write_eval_figures(out_dir: Path, log: Callable[[str], None] | None = None) -> list[Path]:
    """Plot per-class top-1, baseline vs tokens, for each classifier in ``OUT/report/eval.json``.

    Writes ``OUT/report/eval-per-class.png`` (one grouped-bar panel per classifier) and returns
    ``[path]``; returns ``[]`` when there is no eval.json or no classifier scored both arms. An
    eval.json of another layout (an older augment) is skipped with one line through ``log``
    (default: a warning); one that is not JSON raises AugmentError.
    """
    out_dir = Path(out_dir)
    run = RunDir(out_dir)
    result = _read_eval(run, out_dir, log or _warn)
    if result is None:
        return []
    try:
        class_order = recorded_class_names(run)
    except AugmentError:
        class_order = []
    panels = eval_panels(result, [str(n) for n in class_order])
    if not panels:
        return []

    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no global backend state, renders with Agg

    token, baseline = (ARMS[name].label for name in SHEET_ARMS)
    width = max(6.0, 0.45 * max(len(p.classes) for p in panels) + 2)
    fig = Figure(figsize=(min(width, 60.0), 3.2 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        n = len(panel.classes)
        x = np.arange(n)
        base = [100.0 * v for v in panel.baseline]  # fractions -> percent
        tok = [100.0 * v for v in panel.tokens]
        ax.bar(x - 0.2, base, 0.4, label=f"{baseline}, mean {np.mean(base):.1f}", color="#999999")
        ax.bar(x + 0.2, tok, 0.4, label=f"{token}, mean {np.mean(tok):.1f}", color="#1f77b4")
        ax.set_xticks(x, panel.classes, rotation=60 if n > 12 else 0, ha="right" if n > 12 else "center",
                      fontsize=8)
        ax.set_ylabel("top-1 accuracy (%)")
        ax.set_ylim(0, 118)  # headroom for the legend
        ax.set_title(panel.classifier, fontsize=9)
        ax.legend(fontsize=8, loc="upper center", ncols=2, frameon=False)
    fig.suptitle("per-class accuracy on the generated images, baseline vs tokens", fontsize=10)
    fig.tight_layout()
    target = run.report / EVAL_FIGURE
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return [target]
