"""Tests of augment.report (contact sheets, eval figures, the HTML page).

``make_report_run`` writes a run folder holding everything ``augment report`` reads, without a
model: token and baseline arms of real digit images (``tests.downstream.make_digit_run``),
run.json, token histories, acceptance.json, and optionally eval.json, benchmark.json and a caso arm.
"""

from __future__ import annotations

from pathlib import Path

from augment.datasets.digits import DIGIT_NAMES
from augment.downstream.benchmark_result import BenchmarkCell, BenchmarkResult, SummaryRow, Treatment
from augment.downstream.eval_result import Accuracy, Distance, EvalArm, EvalResult
from augment.io.atomic import atomic_write_json
from augment.io.rundir import RunDir, write_run_json
from tests.downstream import make_digit_run

CLASSES = (0, 1, 2)
GUIDE = "embedded:digits-guide"


def history(c: int, steps: int = 4) -> dict:
    """A token's training record as the tokens stage writes it (``TokenResult.history_json``)."""
    return {"class_index": c, "class_name": DIGIT_NAMES[c], "token": f"<c{c:04d}>", "init_token": DIGIT_NAMES[c],
            "negative_prompt": None, "best_step": steps // 2, "status": "ok", "error": None, "seconds": 1.0,
            "steps": [{"step": i + 1, "loss": 1.0 / (i + 1), "accuracy": 0.5 + 0.1 * i, "lr": 0.01}
                      for i in range(steps)],
            "validations": [{"step": s, "accuracy": 0.5 + 0.1 * s, "loss": 1.0 - 0.1 * s} for s in range(0, steps + 1, 2)]}


def accuracy(images: str, top1: dict[str, float]) -> Accuracy:
    mean = sum(top1.values()) / len(top1)
    return Accuracy(images=images, dir=f"/run/{images}", classifier=GUIDE, n=4 * len(top1), top1=mean, top5=1.0,
                    top5_k=3, mean_class_top1=mean, mean_class_top5=1.0, per_class_top1=top1,
                    per_class_top5=dict.fromkeys(top1, 1.0))


def eval_result() -> EvalResult:
    names = [DIGIT_NAMES[c] for c in CLASSES]
    return EvalResult(
        run="/run", dataset="digits", split="test", classifiers=[GUIDE], feature_classifier=GUIDE,
        arms={"token": EvalArm("/run", 12), "baseline": EvalArm("/run/baseline", 12)},
        accuracy=[accuracy("token", dict(zip(names, (0.75, 1.0, 0.5), strict=True))),
                  accuracy("baseline", dict(zip(names, (0.25, 1.0, 0.5), strict=True)))],
        distances=[Distance("token", 12, 450, 100.0, 1.5, 0.5)], notes=["a note"], created="2025-01-01T00:00:00+00:00")


def benchmark_result() -> BenchmarkResult:
    real, token = Treatment("real"), Treatment("token", prob=0.5, weight=1.0, min_confidence=0.0)
    summary = [SummaryRow.of(t, k, [0.5 + 0.1 * k + 0.01 * s for s in range(2)]) for t in (real, token) for k in (1, 2)]
    cells = [BenchmarkCell(f"key{i}", "real", real, 1, 0, 0.6, 0.9, 0.6, 10, 0, 1.0) for i in range(1)]
    return BenchmarkResult(run="/run", dataset="digits", test_split="test", test_images=450, k_values=[1, 2],
                           seeds=[0, 1], arms=[real, token], metric="top1", settings={"arch": "resnet18"},
                           workers=1, summary=summary, cells=cells, seconds=1.0, created="2025-01-01T00:00:00+00:00")


def make_report_run(out: Path, eval_json: bool = True, benchmark: bool = True, caso: bool = False) -> Path:
    """A run folder of ``CLASSES`` with all a report reads (eval.json, benchmark.json, caso: optional)."""
    run = RunDir(out)
    make_digit_run(out, per_class=4, classes=CLASSES)
    make_digit_run(out / "baseline", per_class=4, classes=CLASSES, confidence=lambda c, i: 0.4)
    write_run_json(out, {"dataset": "digits", "seed": 0, "generate": {"per_class": 4}}, "generate",
                   extra={"class_names": list(DIGIT_NAMES)})
    for c in CLASSES:
        atomic_write_json(run.token_history(c, DIGIT_NAMES[c]), history(c))
    classes = [{"class_index": c, "class_name": DIGIT_NAMES[c], "slots": 4, "accepted": 4, "attempts": 4 + c,
                "rate": 4 / (4 + c)} for c in CLASSES]
    atomic_write_json(run.acceptance_json, {"min_confidence": 0.5, "max_attempts": 5, "classes": classes,
                                            "total": {"slots": 12, "accepted": 12, "attempts": 15, "rate": 0.8}})
    if caso:
        make_digit_run(out / "caso", per_class=2, classes=CLASSES)
    if eval_json:
        atomic_write_json(run.eval_json, eval_result().to_json())
    if benchmark:
        atomic_write_json(run.benchmark_files()["json"], benchmark_result().to_json())
    return out
