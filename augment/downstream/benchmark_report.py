"""How a :class:`~augment.downstream.benchmark_result.BenchmarkResult` is shown: the terminal
table, ``benchmark.md``, ``benchmark.csv``, the accuracy-vs-k plot, and :func:`write_reports`,
which writes all of them where :class:`~augment.io.rundir.RunDir` says they go.

Renderers only read the typed result, so they work the same on a grid just run and on a
``benchmark.json`` read back with ``BenchmarkResult.from_json``.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from augment.downstream.benchmark_result import BenchmarkResult, SummaryRow
from augment.io.atomic import atomic_path, atomic_write_json, atomic_write_text
from augment.io.rundir import RunDir

__all__ = ["plot", "render_csv", "render_markdown", "render_text", "table_rows", "write_reports"]


def _fmt(cell: SummaryRow) -> str:
    if cell.mean is None:
        return "–"
    if cell.n > 1:
        return f"{100 * cell.mean:.1f} ± {100 * (cell.std or 0.0):.1f}"
    return f"{100 * cell.mean:.1f}"


def table_rows(result: BenchmarkResult) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the treatment x k table of mean ± std top-1 (%)."""
    ks = result.k_values
    header = ["arm"] + [f"k={k}" for k in ks]
    rows = []
    for treatment in result.arms:
        cells = result.summary_of(treatment)
        rows.append([treatment.label] + [_fmt(cells[k]) for k in ks])
    return header, rows


def render_markdown(result: BenchmarkResult) -> str:
    header, rows = table_rows(result)
    seeds = result.seeds
    lines = [f"# Few-shot benchmark: {result.run}", "",
             f"Real {result.test_split} top-1 (%) of a `{result.settings['arch']}` trained "
             f"{result.settings['epochs']} epochs on k real images per class plus synthetic images; "
             f"mean ± std over {len(seeds)} seed{'s' if len(seeds) != 1 else ''} ({', '.join(map(str, seeds))}), "
             "accuracy after the last epoch.", "",
             "| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += ["", "k=0 real only has no training data (–)."]
    if any(a.min_confidence for a in result.arms):
        lines.append("conf ≥ x keeps the synthetic images whose guide_confidence (the guidance classifier's "
                     "probability of the intended class, from the manifests) is at least x. That classifier "
                     "was trained on its own real data (for the embedded default: the whole digits train "
                     "split), so the filtered arms use knowledge from more than k real images per class.")
    return "\n".join(lines) + "\n"


def render_text(result: BenchmarkResult) -> str:
    header, rows = table_rows(result)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def render_csv(result: BenchmarkResult) -> str:
    """One line per summary row: treatment (column ``arm``), k, number of seeds, mean and std top-1, the values."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["arm", "k", "n_seeds", "mean_top1", "std_top1", "values"])
    for c in result.summary:
        w.writerow([c.arm, c.k, c.n, "" if c.mean is None else f"{c.mean:.4f}",
                    "" if c.std is None else f"{c.std:.4f}", " ".join(f"{v:.4f}" for v in c.values)])
    return buf.getvalue()


def plot(result: BenchmarkResult, path: Path) -> Path:
    """Accuracy vs k, one line per treatment with ±std error bars (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for treatment in result.arms:
        pts = [c for c in result.summary_of(treatment).values() if c.mean is not None]
        if pts:
            ax.errorbar([c.k for c in pts], [100 * c.mean for c in pts], yerr=[100 * (c.std or 0) for c in pts],
                        marker="o", capsize=3, label=treatment.label)
    ax.set_xlabel("real images per class (k)")
    ax.set_ylabel(f"real {result.test_split} top-1 (%)")
    ax.set_xticks(result.k_values)
    ax.set_title(f"{result.dataset}: few-shot classifier with synthetic data")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def write_reports(run: RunDir, result: BenchmarkResult) -> dict[str, Path]:
    """Write benchmark.json, .csv, .md and .png into the run's report folder; their paths by format."""
    paths = run.benchmark_files()
    atomic_write_json(paths["json"], result.to_json())
    atomic_write_text(paths["csv"], render_csv(result))
    atomic_write_text(paths["md"], render_markdown(result))
    plot(result, paths["png"])
    return paths
