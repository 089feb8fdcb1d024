"""augment/io/rundir.py is the only module that knows the run folder's layout: no other module of
the package (or benchmark script) joins a run-folder name onto a path by hand. Adding an arm, or
moving a file inside a run, is then one edit in rundir.py."""

from __future__ import annotations

import ast
from pathlib import Path

import augment
from augment.io import rundir

ROOT = Path(augment.__file__).resolve().parents[1]
OWNER = Path(rundir.__file__).resolve()
#: the hostile probe edits run folders by their on-disk names, as a user with a shell would: the
#: written layout is the contract it attacks, so it spells the paths out on purpose
ATTACKERS = {(ROOT / "benchmarks" / "hostile_probe.py").resolve()}

#: every name rundir.py gives a file or folder of a run (arms included)
LAYOUT = {rundir.RUN_JSON, rundir.TOKENS_DIR, rundir.TOKENS_PARQUET, rundir.SHARDS_DIR, rundir.MANIFESTS_DIR,
          rundir.INFO_NAME, rundir.ACCEPTANCE_JSON, rundir.REPORT_DIR, rundir.TRAIN_DIR} | {a.folder for a in rundir.ARMS.values() if a.folder}


def _layout_name(value: object) -> bool:
    return isinstance(value, str) and value.strip("/").split("/")[0] in LAYOUT


def hand_built_paths(source: str) -> list[int]:
    """Line numbers where a layout name is joined onto a path: ``x / "shards"``, ``Path(x, "run.json")``,
    ``x.joinpath("tokens")``, ``os.path.join(x, "report")``, ``f"{x}/manifests/..."``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            if any(isinstance(s, ast.Constant) and _layout_name(s.value) for s in (node.left, node.right)):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            if name in ("Path", "joinpath", "join") and any(
                    isinstance(a, ast.Constant) and _layout_name(a.value) for a in node.args[1 if name != "joinpath" else 0:]):
                lines.append(node.lineno)
        elif isinstance(node, ast.JoinedStr):
            for part in node.values:
                if isinstance(part, ast.Constant) and isinstance(part.value, str):
                    if any(f"/{n}/" in part.value or part.value.startswith(f"/{n}") for n in LAYOUT):
                        lines.append(node.lineno)
    return sorted(set(lines))


def test_detector():
    assert hand_built_paths('p = out / "shards"\nq = Path(out, "run.json")\nr = f"{out}/baseline/x"\n') == [1, 2, 3]
    assert hand_built_paths('p = out / "images"\nmode = "baseline"\nq = ARMS["caso"]\n') == []


def test_only_rundir_builds_run_paths():
    offenders = []
    for path in sorted([*(ROOT / "augment").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        if path.resolve() == OWNER or path.resolve() in ATTACKERS:
            continue
        for line in hand_built_paths(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert not offenders, "run-folder paths built outside augment/io/rundir.py: " + ", ".join(offenders)
