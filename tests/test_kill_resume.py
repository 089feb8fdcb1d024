"""kill -9 at random moments: every stage resumes to the bytes of an uninterrupted run (issue 13).

A seeded harness: ``tokens``, ``generate``, ``caso`` and a small ``benchmark`` grid are started
through the real ``augment`` executable and SIGKILLed at moments drawn from a seeded RNG within
the duration of the same command uninterrupted (inline, and on 2 Ray workers for tokens and
generate). The kills are chained, as a user would meet them: each killed run resumes what the
previous one left, then the same command runs to the end and its outputs must equal the
uninterrupted run's (token files and shards byte for byte, table rows but for their timings,
benchmark cells but for theirs), ``augment verify`` must pass and no temp file may be left. A run
that finishes before its moment is checked the same way, and the chain starts again.

Also: the same outputs whatever ``--workers`` (the uninterrupted Ray runs are compared with the
inline ones), and a ``ray::UnitActor`` process killed mid-unit costs nothing (exit 0, same bytes).

Settings are tiny (2 classes, 2 optimisation steps, 4 images per class, shards of 2) so that the
module stays within a few minutes on 2 cores. ``KILL_REPORT`` (a path in the environment) gets
the figures docs/reliability.md ("What survives what") quotes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pyarrow.parquet as pq
import pytest

from augment.io.atomic import is_temp_name
from augment.verify import verify_arms
from tests.test_e2e import AUGMENT, _env

pytestmark = pytest.mark.slow

SEED = 13
KILLS = 5
TINY = """
tokens: {max_steps: 2, batch_size: 4, steps: 5}
generate: {per_class: 4, steps: 10, shard_size: 2, batch_size: 4}
caso: {k: 2, max_steps: 2, batch_size: 2, edit_steps: 5, edits_per_image: 1}
"""
COMMON = ["--classes", "3,8", "--config", "tiny.yaml"]
COMMANDS: dict[str, list[str]] = {
    "tokens": ["tokens", *COMMON],
    "generate": ["generate", *COMMON],
    "caso": ["caso", *COMMON],
    "benchmark": ["benchmark", *COMMON, "--k", "0,3", "--seeds", "1", "--epochs", "1", "--samples-per-epoch", "64",
                  "--arm", "real", "--arm", "token", "--no-build"],
}
#: what each command finds in its run folder before it starts: the reference run as it was after
#: ``tokens`` (caso gets the tokens too: `augment verify` fails a folder holding only a caso arm,
#: the verify owner's matter, not a kill's), or after ``generate`` (benchmark)
NEEDS = {"tokens": (), "generate": ("tokens", "run.json"), "caso": ("tokens", "run.json"),
         "benchmark": ("tokens", "shards", "manifests", "run.json")}
AFTER = {"generate": "after-tokens", "caso": "after-tokens", "benchmark": "reference"}
#: columns that record when or how long, not what: left out of the comparison
TIMING = {"created_at", "seconds"}
FIGURES: dict[str, dict[str, Any]] = {}


# --------------------------------------------------------------------------- running the CLI


def _cli(args: list[str], out: Path, workers: int) -> list[str]:
    return [*AUGMENT, *args, "--out", str(out), "--workers", str(workers)]


@contextlib.contextmanager
def _started(cmd: list[str], cwd: Path):
    """The command running in its own session and Ray temp folder (so that it never joins a Ray
    head a killed run left); every process it started is killed when the block ends."""
    ray_tmp = tempfile.mkdtemp(prefix="kr-", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = dict(_env(), RAY_TMPDIR=ray_tmp, TQDM_DISABLE="1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    family: list[psutil.Process] = []
    try:
        yield proc, family
    finally:
        with contextlib.suppress(psutil.Error):
            family += psutil.Process(proc.pid).children(recursive=True)
        for p in [*family, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None:
                with contextlib.suppress(psutil.Error):
                    p.kill()
        proc.communicate()
        psutil.wait_procs([p for p in family if p.is_running()], timeout=30)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _run(cmd: list[str], cwd: Path) -> tuple[int, str, float]:
    """Run to the end: (exit code, output, seconds)."""
    start = time.perf_counter()
    with _started(cmd, cwd) as (proc, _):
        output, _ = proc.communicate(timeout=600)
    return proc.returncode, output, time.perf_counter() - start


def _killed(cmd: list[str], cwd: Path, at: float) -> int | None:
    """Start ``cmd`` and SIGKILL it (the driver: Ray's processes die with it) ``at`` seconds later:
    None; or its exit code when it finished first."""
    with _started(cmd, cwd) as (proc, family):
        try:
            proc.wait(timeout=at)
            return proc.returncode
        except subprocess.TimeoutExpired:
            with contextlib.suppress(psutil.Error):
                family += psutil.Process(proc.pid).children(recursive=True)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            return None


def _unit_actor(family: list[psutil.Process]) -> psutil.Process | None:
    """A ray::UnitActor process of the run, one running a unit if there is one."""
    actors = []
    for p in family:
        with contextlib.suppress(psutil.Error):
            title = " ".join(p.cmdline())
            if title.startswith("ray::UnitActor"):
                actors.append((".run" not in title, p))
    return min(actors, key=lambda a: a[0])[1] if actors else None


def _actor_killed(cmd: list[str], cwd: Path, at: float) -> tuple[int, str, bool]:
    """Run ``cmd``; ``at`` seconds in, kill -9 one of its UnitActor processes (the first busy one
    that shows up from then on). (exit code, output, whether an actor was killed)."""
    with _started(cmd, cwd) as (proc, family):
        deadline, killed = time.monotonic() + at, False
        while proc.poll() is None and not killed:
            time.sleep(0.1)
            if time.monotonic() < deadline:
                continue
            with contextlib.suppress(psutil.Error):
                actor = _unit_actor(psutil.Process(proc.pid).children(recursive=True))
                if actor is not None and ".run" in " ".join(actor.cmdline()):
                    actor.kill()
                    killed = True
        output, _ = proc.communicate(timeout=600)
    return proc.returncode, output, killed


# --------------------------------------------------------------------------- what a run left


def _rows(path: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in pq.read_table(path).to_pylist()]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _arm(folder: Path) -> dict[str, Any]:
    """An arm's outputs as compared: file bytes, table rows without their timings."""
    seen: dict[str, Any] = {}
    for p in sorted(folder.glob("tokens/*.safetensors")) + sorted(folder.glob("shards/*")):
        seen[str(p.relative_to(folder))] = _sha(p)
    for p in sorted(folder.glob("tokens/*.parquet")) + sorted(folder.glob("manifests/*.parquet")):
        seen[str(p.relative_to(folder))] = _rows(p)
    return seen


def _outputs(name: str, out: Path) -> dict[str, Any]:
    if name == "tokens":
        return {k: v for k, v in _arm(out).items() if k.startswith("tokens/")}
    if name == "generate":
        return {k: v for k, v in _arm(out).items() if not k.startswith("tokens/")}
    if name == "caso":
        return _arm(out / "caso")
    result = json.loads((out / "report" / "benchmark.json").read_text())  # the cells, cached or trained now
    cells = sorted(({k: v for k, v in c.items() if k not in TIMING} for c in result["cells"]), key=lambda c: c["key"])
    return {"cells": cells, "summary": result["summary"]}


def _temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if is_temp_name(p.name)]


def _check_finished(name: str, out: Path, expected: dict[str, Any]) -> None:
    got = _outputs(name, out)
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == expected[key], f"{name}: {key} differs from the uninterrupted run"
    assert _temp_files(out) == []
    checked = verify_arms(out)  # `augment verify`, without one more process start
    assert checked.exit_code == 0, [p for r in checked.reports.values() for p in r.problems][:5]


# --------------------------------------------------------------------------- references


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict[str, Any]:
    """Each command once, uninterrupted and inline, in one run folder: its outputs and duration."""
    cwd = tmp_path_factory.mktemp("kills")
    (cwd / "tiny.yaml").write_text(TINY)
    out = cwd / "reference"
    ref: dict[str, Any] = {"cwd": cwd, "out": out, "seconds": {}, "outputs": {}}
    for name in COMMANDS:
        rc, output, seconds = _run(_cli(COMMANDS[name], out, 0), cwd)
        assert rc == 0, output[-3000:]
        ref["seconds"][name, 0] = seconds
        ref["outputs"][name] = _outputs(name, out)
        if name == "tokens":
            shutil.copytree(out, cwd / "after-tokens")
    return ref


def _fresh(ref: dict[str, Any], name: str, label: str) -> Path:
    """A run folder holding what ``name`` needs (from the reference run) and nothing else."""
    out = ref["cwd"] / label
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    for item in NEEDS[name]:
        src = ref["cwd"] / AFTER[name] / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, out / item)
    return out


def _kill_and_resume(ref: dict[str, Any], name: str, workers: int, seconds: float) -> None:
    """KILLS kills at seeded random moments within ``seconds``, chained (each run resumes what the
    killed one left), then the same command to the end. A run that finishes before its moment
    resumed the previous kills: it is checked too, and the chain starts again from scratch."""
    rng = random.Random(f"{SEED}-{name}-{workers}")
    out = _fresh(ref, name, f"{name}-killed-w{workers}")
    cmd, cwd = _cli(COMMANDS[name], out, workers), ref["cwd"]
    moments, finished_first = [], 0
    while len(moments) < KILLS:
        assert finished_first <= 2 * KILLS, f"{name} keeps finishing before the kill moment"
        at = rng.uniform(0, seconds)
        rc = _killed(cmd, cwd, at)
        if rc is None:
            moments.append(at)
            continue
        assert rc == 0, f"{name} exited {rc}"
        _check_finished(name, out, ref["outputs"][name])
        finished_first += 1
        _fresh(ref, name, out.name)
    rc, output, _ = _run(cmd, cwd)
    assert rc == 0, output[-3000:]
    _check_finished(name, out, ref["outputs"][name])
    FIGURES[f"{name} --workers {workers}"] = {"kills": KILLS, "identical": True, "finished_before_a_kill": finished_first,
                                               "moments_s": [round(m, 1) for m in moments],
                                               "uninterrupted_s": round(seconds, 1)}


@pytest.fixture(scope="module", autouse=True)
def _report():
    yield
    if os.environ.get("KILL_REPORT") and FIGURES:
        Path(os.environ["KILL_REPORT"]).write_text(json.dumps(FIGURES, indent=2) + "\n")


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize("name", ["tokens", "generate"])
def test_the_workers_do_not_change_the_bytes(reference, name):
    """--workers 2 (Ray actors) writes what --workers 0 wrote (issue 13, defect 9: the same torch
    threads per unit everywhere). Its duration sizes the Ray kill moments."""
    out = _fresh(reference, name, f"{name}-ray")
    rc, output, seconds = _run(_cli(COMMANDS[name], out, 2), reference["cwd"])
    assert rc == 0, output[-3000:]
    reference["seconds"][name, 2] = seconds
    assert _outputs(name, out) == reference["outputs"][name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_inline_kills_resume_to_the_same_outputs(reference, name):
    _kill_and_resume(reference, name, 0, reference["seconds"][name, 0])


@pytest.mark.parametrize("name", ["tokens", "generate"])
def test_ray_kills_resume_to_the_same_outputs(reference, name):
    seconds = reference["seconds"].get((name, 2)) or 3 * reference["seconds"][name, 0]
    _kill_and_resume(reference, name, 2, seconds)


@pytest.mark.parametrize("name", ["tokens", "generate"])
def test_a_killed_unit_actor_costs_nothing(reference, name):
    """kill -9 of a busy ray::UnitActor: Ray restarts it, its unit runs again, exit 0, same bytes
    (issue 13, defect 4)."""
    seconds = reference["seconds"].get((name, 2)) or 3 * reference["seconds"][name, 0]
    at = random.Random(f"{SEED}-{name}-actor").uniform(0, seconds / 2)
    out = _fresh(reference, name, f"{name}-actor")
    rc, output, killed = _actor_killed(_cli(COMMANDS[name], out, 2), reference["cwd"], at)
    assert killed, "no busy UnitActor was found to kill"
    assert rc == 0, output[-3000:]
    _check_finished(name, out, reference["outputs"][name])
    FIGURES[f"{name} --workers 2, a UnitActor killed"] = {"kills": 1, "identical": True, "moment_s": round(at, 1)}


def test_sigterm_of_a_ray_build_is_one_line_and_leaves_no_empty_folder(tmp_path):
    """SIGTERM to ``augment build --workers 1`` once its first token is written (Ray's driver is
    up): one line and exit 143, not Ray's C++ stack and abort (-6); no empty folder left; the same
    command then finishes (the lock was released)."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    cmd = _cli(["build", *COMMON], out, workers=1)
    with _started(cmd, tmp_path) as (proc, _):
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline and not list(out.glob("tokens/*.safetensors")):
            time.sleep(0.2)
        assert proc.poll() is None, "build finished before the SIGTERM"
        os.kill(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate(timeout=120)
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert proc.returncode == 143, output
    assert lines[-1] == "terminated; re-run the same command to resume", output
    assert "SIGTERM received" not in output and "Traceback" not in output, output
    empty = [p for p in out.rglob("*") if p.is_dir() and not any(p.iterdir())]
    assert not empty, empty
    code, output, _ = _run(cmd, tmp_path)
    assert code == 0, output
    assert verify_arms(out).exit_code == 0 and _temp_files(out) == []
