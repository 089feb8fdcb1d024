"""``augment report OUT``: a run at a glance, as one self-contained HTML page (``OUT/report/index.html``).

The results of a run are otherwise files to open one by one (contact sheets, JSON and Markdown
tables, a per-class PNG). The page puts them together, read only from what the run folder holds:

- the run's settings and provenance (``run.json``, through :class:`~augment.io.run_record.RunRecord`);
- an overview row per class: the token's validation score (first and kept), the acceptance under
  ``--min-confidence``, and Table 1's top-1 on the token arm next to the baseline's;
- a section per class: the token arm's images beside the baseline arm's for the *same keys* (same
  seeds, no token; chosen as :mod:`augment.report.contact` chooses them), CASO edits when present,
  and the token's training curve from ``tokens/history/`` (loss, batch accuracy, validation score,
  the kept step; inline SVG);
- Table 1 per class (``report/eval.json``; the page says how to make it when absent), FID/KID;
- the acceptance per class (``acceptance.json`` of each arm);
- Table 2 with its spread and the accuracy-vs-k plot with error bars (``report/benchmark.json``).

Every image is inlined (a ``data:`` URI, or SVG) and there is no script, so the page opens from any disk
with no network, and can be mailed as one file. It is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from augment.downstream.benchmark_result import BenchmarkResult
from augment.downstream.eval_result import FID_MIN_IMAGES, EvalResult
from augment.errors import AugmentError
from augment.io.atomic import atomic_write_text
from augment.io.rundir import ArmDir, RunDir, RunRecord, read_run_json
from augment.report.contact import SHEET_ARMS, _load_images, _pick, _read_arm, _read_eval

__all__ = ["PAGE_NAME", "ClassView", "RunView", "render_page", "read_run", "write_report_page"]

PAGE_NAME = "index.html"
#: images larger than this are shrunk (and JPEG-encoded) before inlining, so a 512 px run stays light
THUMB = 128


@dataclass
class ClassView:
    """Everything the page shows about one class."""

    index: int
    name: str
    images: dict[str, list[tuple[str, Image.Image | None, dict[str, Any] | None]]] = field(default_factory=dict)
    history: dict[str, Any] | None = None
    acceptance: dict[str, dict[str, Any]] = field(default_factory=dict)  # arm -> its acceptance.json entry


@dataclass
class RunView:
    """What the page is made of, read from the run folder (no rendering)."""

    out: Path
    record: RunRecord | None
    classes: list[ClassView]
    arms: list[str]  # arms whose images are shown, in ARMS order
    acceptance: dict[str, dict[str, Any]]  # arm -> acceptance.json (without its classes)
    eval: EvalResult | None
    benchmark: BenchmarkResult | None
    notes: list[str]


# ------------------------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise AugmentError(f"cannot read {path}: {e}; re-run the stage that wrote it") from None


def _histories(arm: ArmDir) -> dict[int, dict[str, Any]]:
    """Class index -> its token's training record (``tokens/history/*.json``)."""
    folder = arm.tokens / "history"
    out: dict[int, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        doc = _read_json(path)
        if isinstance(doc, dict) and isinstance(doc.get("class_index"), int):
            out[doc["class_index"]] = doc
    return out


def _acceptance(arm: ArmDir) -> dict[str, Any] | None:
    return _read_json(arm.acceptance_json) if arm.acceptance_json.is_file() else None


def _benchmark(run: RunDir, notes: list[str]) -> BenchmarkResult | None:
    path = run.benchmark_files()["json"]
    if not path.is_file():
        return None
    try:
        return BenchmarkResult.from_json(_read_json(path))
    except (ValueError, TypeError) as e:
        notes.append(f"{path} is not a benchmark.json this version reads ({e}); re-run `augment benchmark {run}`")
        return None


def read_run(out_dir: Path, per_class: int = 4, max_classes: int | None = None) -> RunView:
    """Gather the page's content from ``out_dir``. AugmentError when the folder is missing or holds
    neither generated images nor trained tokens."""
    out_dir = Path(out_dir)
    if per_class < 1:
        raise AugmentError(f"--per-class must be at least 1, got {per_class}")
    if not out_dir.is_dir():
        raise AugmentError(f"run folder {out_dir} does not exist; pass the --out of `augment build`")
    run = RunDir(out_dir)
    record = read_run_json(run)
    notes: list[str] = []
    arms = {name: a for name in (*SHEET_ARMS, "caso") if (a := _read_arm(run.arm_dir(name))) is not None}
    histories = _histories(run)
    if not arms and not histories:
        raise AugmentError(f"{out_dir} holds no generated samples and no trained tokens; "
                           f"run `augment build --out {out_dir}` first")
    acceptance = {name: doc for name in SHEET_ARMS if (doc := _acceptance(run.arm_dir(name))) is not None}

    names: dict[int, str] = dict(enumerate(record.class_names or [])) if record else {}
    picks = {name: _pick(arm, per_class) for name, arm in arms.items()}
    if "baseline" in picks and "token" in picks:
        picks["baseline"] = picks["token"]  # the same keys: same seeds, with and without the token
    for arm in arms.values():
        for r in arm.rows.values():
            names.setdefault(int(r["class_index"]), r.get("class_name") or str(r["class_index"]))
    for c, h in histories.items():
        names.setdefault(c, str(h.get("class_name", c)))
    shown = sorted({c for p in picks.values() for c in p} | set(histories))
    if max_classes is not None:
        shown = shown[:max_classes]

    views = {c: ClassView(c, names.get(c, str(c)), history=histories.get(c)) for c in shown}
    for name, arm in arms.items():
        keys = [k for c in shown for k in picks[name].get(c, [])]
        loaded = _load_images(arm, keys)
        for c in shown:
            if picks[name].get(c):
                views[c].images[name] = [(k, loaded.get(k), arm.rows.get(k)) for k in picks[name][c]]
    for arm_name, doc in acceptance.items():
        for entry in doc.get("classes", []):
            if entry.get("class_index") in views:
                views[entry["class_index"]].acceptance[arm_name] = entry
    result = _read_eval(run, out_dir, notes.append)
    return RunView(out=out_dir, record=record, classes=[views[c] for c in shown], arms=list(arms),
                   acceptance={a: {k: v for k, v in d.items() if k != "classes"} for a, d in acceptance.items()},
                   eval=result, benchmark=_benchmark(run, notes), notes=notes)


# ------------------------------------------------------------------------------------------- pictures


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def image_uri(im: Image.Image) -> str:
    """A tile as a data URI: small images as lossless PNG (scaled up by the browser, pixelated),
    large ones shrunk to :data:`THUMB` px and JPEG-encoded."""
    buf = io.BytesIO()
    if max(im.size) <= THUMB:
        im.save(buf, "PNG")
        return _data_uri(buf.getvalue(), "image/png")
    ImageOps.contain(im.convert("RGB"), (THUMB, THUMB), Image.Resampling.LANCZOS).save(buf, "JPEG", quality=85)
    return _data_uri(buf.getvalue(), "image/jpeg")


_W, _H, _L, _R, _T, _B = 380, 190, 44, 40, 22, 26  # curve size and margins (px)


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _points(xs: list[float], ys: list[float], x_of: Callable[[float], float], y_of: Callable[[float], float]) -> str:
    return " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in zip(xs, ys, strict=True))


def curve_svg(history: Mapping[str, Any], class_index: int) -> str | None:
    """The token's training curve as inline SVG: per-step loss (red, left axis, its own range),
    batch accuracy (blue) and validation score (green dots; right axis, 0-1), a dashed line at the
    kept step; None when the record has neither steps nor validations. Drawn by hand rather than
    with matplotlib: a thousand classes take milliseconds, not minutes, and stay crisp."""
    steps = [(x, _num(s.get("loss")), _num(s.get("accuracy"))) for s in history.get("steps", [])
             if isinstance(s, dict) and (x := _num(s.get("step"))) is not None]
    vals = [(x, a) for v in history.get("validations", []) if isinstance(v, dict)
            and (x := _num(v.get("step"))) is not None and (a := _num(v.get("accuracy"))) is not None]
    if not steps and not vals:
        return None
    best = _num(history.get("best_step"))
    x_max = max([1.0] + [x for x, *_ in steps] + [x for x, _ in vals] + ([best] if best is not None else []))
    losses = [(x, loss) for x, loss, _ in steps if loss is not None]
    lo, hi = (min(v for _, v in losses), max(v for _, v in losses)) if losses else (0.0, 1.0)
    hi = hi if hi > lo else lo + 1.0

    def x_of(x: float) -> float:
        return _L + (_W - _L - _R) * x / x_max

    def y_acc(a: float) -> float:
        return _T + (_H - _T - _B) * (1.0 - a)

    def y_loss(v: float) -> float:
        return _T + (_H - _T - _B) * (hi - v) / (hi - lo)

    label = 'font-size="10" font-family="sans-serif"'
    parts = [f'<svg class="curve" role="img" aria-label="training curve of class {class_index}" width="{_W}" '
             f'height="{_H}" viewBox="0 0 {_W} {_H}">',
             f'<rect x="{_L}" y="{_T}" width="{_W - _L - _R}" height="{_H - _T - _B}" fill="none" stroke="#999"/>',
             f'<text x="{_L}" y="{_H - 10}" {label}>0</text>',
             f'<text x="{_W - _R}" y="{_H - 10}" {label} text-anchor="end">{x_max:g}</text>',
             f'<text x="{(_W + _L - _R) / 2}" y="{_H - 2}" {label} text-anchor="middle">step</text>',
             f'<text x="{_W - _R + 3}" y="{_T + 8}" {label}>1</text>',
             f'<text x="{_W - _R + 3}" y="{_H - _B}" {label}>0</text>']
    if losses:
        parts += [f'<text x="{_L - 3}" y="{_T + 8}" {label} text-anchor="end" fill="#d62728">{hi:.3g}</text>',
                  f'<text x="{_L - 3}" y="{_H - _B}" {label} text-anchor="end" fill="#d62728">{lo:.3g}</text>']
        parts.append(f'<polyline fill="none" stroke="#d62728" stroke-width="1.2" '
                     f'points="{_points(*map(list, zip(*losses, strict=True)), x_of, y_loss)}"/>')
    accs = [(x, a) for x, _, a in steps if a is not None]
    if accs:
        parts.append(f'<polyline fill="none" stroke="#1f77b4" stroke-opacity="0.6" '
                     f'points="{_points(*map(list, zip(*accs, strict=True)), x_of, y_acc)}"/>')
    parts += [f'<circle cx="{x_of(x):.1f}" cy="{y_acc(a):.1f}" r="2.5" fill="#2ca02c"/>' for x, a in vals]
    if best is not None:
        parts.append(f'<line x1="{x_of(best):.1f}" x2="{x_of(best):.1f}" y1="{_T}" y2="{_H - _B}" stroke="#000" '
                     f'stroke-dasharray="4 3"/>')
    legend = ('<tspan fill="#d62728">loss</tspan> · <tspan fill="#1f77b4">batch accuracy</tspan> · ' if steps
              else "no optimisation step · ") + '<tspan fill="#2ca02c">validation score</tspan>'
    legend += f" · kept step {best:g}" if best is not None else ""
    parts.append(f'<text x="{_L}" y="{_T - 8}" {label}>{legend}</text></svg>')
    return "".join(parts)


def benchmark_plot_uri(result: BenchmarkResult) -> str:
    """Table 2's accuracy-vs-k plot with ±std error bars, drawn by the benchmark's own renderer."""
    from augment.downstream.benchmark_report import plot

    with tempfile.TemporaryDirectory() as tmp:
        path = plot(result, Path(tmp) / "benchmark.png")
        return _data_uri(path.read_bytes(), "image/png")


# ------------------------------------------------------------------------------------------- html


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        key = f"{prefix}{k}"
        out += _flatten(v, key + ".") if isinstance(v, Mapping) and v else [(key, v)]
    return out


def _settings(view: RunView) -> str:
    r = view.record
    if r is None:
        return "<p>No run.json in this folder: its settings are unknown.</p>"
    facts = [("dataset", r.config.get("dataset")), ("model", r.model_id), ("classifier", r.classifier_id),
             ("classes in the run", len(view.classes)), ("classes of the dataset", len(r.class_names or [])), ("created", r.created), ("updated", r.updated),
             ("augment", r.augment_version), ("git sha", r.git_sha)]
    facts += [(f"stage {s}", t) for s, t in r.stages.items()]
    facts += [(f"package {p}", v) for p, v in r.packages.items()]
    out = _table(["", ""], [(_e(k), _e(v)) for k, v in facts], "facts")
    config = _table(["setting", "value"], [(_e(k), f"<code>{_e(json.dumps(v))}</code>") for k, v in _flatten(r.config)],
                    "settings")
    return out + f"<details><summary>all settings (run.json <code>config</code>)</summary>{config}</details>"


def _history_summary(h: Mapping[str, Any] | None) -> tuple[str, str]:
    """(validation score first -> kept, kept step) of a token's record."""
    if not h:
        return "–", "–"
    vals = {v.get("step"): v.get("accuracy") for v in h.get("validations", []) if isinstance(v, dict)}
    first = vals.get(0, next(iter(vals.values()), None))
    kept = vals.get(h.get("best_step"))
    status = "" if h.get("status") in (None, "ok") else f" ({_e(h.get('status'))})"
    score = f"{_pct(first)} → {_pct(kept)}" if vals else "–"
    return score + status, _e(h.get("best_step", "–"))


def _accept_cell(entry: Mapping[str, Any] | None) -> str:
    if not entry:
        return "–"
    return f"{entry.get('accepted')}/{entry.get('attempts')} ({_pct(entry.get('rate'))})"


def _eval_top1(view: RunView, arm: str, classifier: str, name: str) -> float | None:
    row = view.eval.row(arm, classifier) if view.eval else None
    return row.per_class_top1.get(name) if row else None


def _overview(view: RunView) -> str:
    judge = view.eval.classifiers[0] if view.eval and view.eval.classifiers else None
    header = ["class", "validation score (first → kept)", "kept step"]
    header += [f"acceptance ({a})" for a in view.acceptance]
    if judge:
        header += [f"top-1 tokens ({judge})", "top-1 baseline", "gain"]
    rows = []
    for c in view.classes:
        score, step = _history_summary(c.history)
        row = [f'<a href="#class-{c.index}">{c.index}: {_e(c.name)}</a>', score, step]
        row += [_accept_cell(c.acceptance.get(a)) for a in view.acceptance]
        if judge:
            tok, base = (_eval_top1(view, a, judge, c.name) for a in SHEET_ARMS)
            gain = "–" if tok is None or base is None else f"{100 * (tok - base):+.1f}"
            row += [_pct(tok), _pct(base), gain]
        rows.append(row)
    return _table(header, rows, "overview")


def _tiles(entries: list[tuple[str, Image.Image | None, dict[str, Any] | None]], class_index: int) -> str:
    out = []
    for key, im, row in entries:
        if im is None:
            out.append('<figure class="tile missing"><div class="blank"></div><figcaption>missing</figcaption></figure>')
            continue
        conf, pred = (row or {}).get("guide_confidence"), (row or {}).get("guide_pred")
        ok = "" if pred is None else (" ok" if int(pred) == class_index else " wrong")
        caption = "conf ?" if conf is None else f"{conf:.2f}"
        pix = " pixelated" if max(im.size) < 96 else ""
        out.append(f'<figure class="tile{ok}"><img class="{pix.strip()}" src="{image_uri(im)}" alt="{_e(key)}" '
                   f'title="{_e(key)}"><figcaption>{caption}</figcaption></figure>')
    return "".join(out)


_ARM_LABELS = {"token": "tokens", "baseline": "plain prompt (baseline, same seeds)", "caso": "CASO edits"}


def _class_section(view: RunView, c: ClassView) -> str:
    parts = [f'<section class="class" id="class-{c.index}"><h3>{c.index}: {_e(c.name)}</h3>']
    facts = []
    if c.history:
        score, step = _history_summary(c.history)
        facts.append(f"token <code>{_e(c.history.get('token'))}</code> (from <code>{_e(c.history.get('init_token'))}"
                     f"</code>): validation score {score}, kept step {step}")
    for arm, entry in c.acceptance.items():
        facts.append(f"acceptance ({arm}): {_accept_cell(entry)}")
    if view.eval:
        for spec in view.eval.classifiers:
            tok, base = (_eval_top1(view, a, spec, c.name) for a in SHEET_ARMS)
            facts.append(f"top-1 by <code>{_e(spec)}</code>: tokens {_pct(tok)}, baseline {_pct(base)}")
    if facts:
        parts.append("<ul>" + "".join(f"<li>{f}</li>" for f in facts) + "</ul>")
    parts.append('<div class="body"><div class="arms">')
    for arm in view.arms:
        if arm in c.images:
            parts.append(f'<div class="arm"><div class="label">{_e(_ARM_LABELS.get(arm, arm))}</div>'
                         f'{_tiles(c.images[arm], c.index)}</div>')
    parts.append("</div>")
    curve = curve_svg(c.history, c.index) if c.history else None
    if curve:
        parts.append(curve)
    parts.append("</div></section>")
    return "".join(parts)


def _eval_section(view: RunView) -> str:
    if view.eval is None:
        return (f"<p>No Table 1 yet (<code>report/eval.json</code> is absent): run <code>augment eval {_e(view.out)}"
                f"</code>, then <code>augment report {_e(view.out)}</code> again.</p>")
    r = view.eval
    overall = _table(["images", "n", "classifier", "top-1", "top-5", "mean class top-1"],
                     [(_e(a.images), a.n, f"<code>{_e(a.classifier)}</code>", _pct(a.top1), _pct(a.top5),
                       _pct(a.mean_class_top1)) for a in r.accuracy])
    cols = r.accuracy
    per_class = _table(["class"] + [f"{a.images} / {a.classifier}" for a in cols],
                       [[f"{c.index}: {_e(c.name)}"] + [_pct(a.per_class_top1.get(c.name)) for a in cols]
                        for c in view.classes], "per-class")
    out = overall + "<h3>per class (top-1)</h3>" + per_class
    if r.distances:
        rows = []
        for d in r.distances:
            fid = "–" if d.fid is None else f"{d.fid:.2f}"
            kid = "–" if d.kid is None else f"{1000 * d.kid:.2f} ± {1000 * (d.kid_std or 0):.2f}"
            rows.append((_e(d.images), d.n, d.n_real, fid, kid,
                         f'<span class="warn">fewer than {FID_MIN_IMAGES} images: unreliable</span>' if d.small_sample else ""))
        out += (f"<h3>FID / KID against real {_e(r.split)} images (features: <code>{_e(r.feature_classifier)}</code>)"
                "</h3>" + _table(["images", "n", "n real", "FID", "KID ×10³", ""], rows))
    if r.notes:
        out += "<ul>" + "".join(f"<li>{_e(n)}</li>" for n in r.notes) + "</ul>"
    return out


def _acceptance_section(view: RunView) -> str:
    if not view.acceptance:
        return ("<p>No rejection sampling: every generated image was kept (generated without "
                "<code>--min-confidence</code>, so no <code>acceptance.json</code>).</p>")
    out = []
    for arm, doc in view.acceptance.items():
        total = doc.get("total", {})
        out.append(f"<h3>{_e(_ARM_LABELS.get(arm, arm))}: guide confidence ≥ {_e(doc.get('min_confidence'))}, "
                   f"budget {_e(doc.get('max_attempts'))} draws per image; total {_accept_cell(total)}</h3>")
        out.append(_table(["class", "images wanted", "kept", "drawn", "rate"],
                          [(f"{c.index}: {_e(c.name)}", e.get("slots"), e.get("accepted"), e.get("attempts"),
                            _pct(e.get("rate"))) for c in view.classes if (e := c.acceptance.get(arm))]))
    return "".join(out)


def _benchmark_section(view: RunView) -> str:
    b = view.benchmark
    if b is None:
        return (f"<p>No Table 2 (<code>report/benchmark.json</code> is absent): <code>augment benchmark "
                f"{_e(view.out)}</code> trains the few-shot grid.</p>")
    from augment.downstream.benchmark_report import table_rows

    header, rows = table_rows(b)
    note = (f"<p>Real {_e(b.test_split)} top-1 (%) of a <code>{_e(b.settings.get('arch'))}</code>, mean ± std over "
            f"{len(b.seeds)} seed(s) ({', '.join(map(str, b.seeds))}).</p>")
    return (note + _table(header, [[_e(c) for c in r] for r in rows], "benchmark")
            + f'<img class="plot" src="{benchmark_plot_uri(b)}" alt="Table 2: accuracy vs k with error bars">')


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;background:#fff}
h1{font-size:1.4em}h2{border-bottom:1px solid #ccc;margin-top:1.6em}h3{font-size:1.05em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left;white-space:nowrap}code{font-size:.9em}
section.class{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.8em 0}
.body{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.arm{margin:.2em 0}
.label{font-size:.85em;color:#555}figure.tile{display:inline-block;margin:2px;text-align:center}
figure.tile img,.blank{width:96px;height:96px;object-fit:contain;display:block}.blank{background:#e1e1e1}
img.pixelated{image-rendering:pixelated}figcaption{font-size:11px}.ok figcaption{color:#070}
.wrong figcaption,.missing figcaption,.warn{color:#c00}svg.curve{border:1px solid #eee}
"""


def render_page(view: RunView) -> str:
    """The HTML page of a run (a string; no file is written)."""
    title = f"augment report: {view.out.resolve().name}"
    notes = "".join(f'<p class="warn">{_e(n)}</p>' for n in view.notes)
    sections = [
        ("settings", "Run settings", _settings(view)),
        ("overview", "Classes at a glance", _overview(view)),
        ("classes", "Per class: tokens next to the plain prompt, same seeds; training curve",
         "".join(_class_section(view, c) for c in view.classes)),
        ("table1", "Table 1: classifier accuracy on the generated images", _eval_section(view)),
        ("acceptance", "Acceptance per class", _acceptance_section(view)),
        ("table2", "Table 2: few-shot benchmark", _benchmark_section(view)),
    ]
    nav = " · ".join(f'<a href="#{i}">{_e(t.split(":")[0])}</a>' for i, t, _ in sections)
    body = "".join(f'<h2 id="{i}">{_e(t)}</h2>{s}' for i, t, s in sections)
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_e(title)}</h1><p>{_e(view.out.resolve())}</p>"
            f"<nav>{nav}</nav>{notes}{body}</body></html>\n")


def write_report_page(out_dir: Path, per_class: int = 4, max_classes: int | None = None,
                      log: Callable[[str], None] | None = None) -> Path:
    """Write ``OUT/report/index.html`` (atomically) and return its path; ``log`` gets each note
    (an eval.json or benchmark.json of another layout, skipped)."""
    view = read_run(Path(out_dir), per_class=per_class, max_classes=max_classes)
    for note in view.notes:
        (log or (lambda _m: None))(note)
    return atomic_write_text(RunDir(out_dir).report / PAGE_NAME, render_page(view))
