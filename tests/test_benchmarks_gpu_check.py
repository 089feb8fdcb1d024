"""benchmarks/gpu_check.py --quick: the GPU check's whole code path on shrunken models on the CPU.

The figures mean nothing here (docs/gpu_check.md); this checks that the one script a GPU session
runs still runs every section to the end and writes the JSON and the Markdown it promises:
real_size's token rows beside memory.py's estimates, generation with and without the speed-ups and
compile, the downstream paths, and ``augment build --dataset cub`` through the CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # the real CLI's build, real_size.py's child process: a minute or two
def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "gc"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu_check.json").read_text())
    assert result["status"] == "ok" and result["config"]["quick"] and result["config"]["device"] == "cpu"
    s = result["sections"]
    assert set(s) == {"token_step", "cub_e2e", "downstream", "generation"}
    assert all(sec["status"] == "ok" for sec in s.values()), {k: v["status"] for k, v in s.items()}

    tok = s["token_step"]["rows"]
    assert sorted(r["checkpointing"] for r in tok) == [False, True]
    for r in tok:
        assert r["seconds"] > 0 and r["estimate_peak_gb"] > r["estimate_added_gb"] > 0
    est = {r["checkpointing"]: r["estimate_added_gb"] for r in tok}
    assert est[True] < est[False]  # the estimate itself says checkpointing keeps less

    gen = s["generation"]["rows"]
    variants = {r["variant"] for r in gen}
    assert variants == {"plain", "channels_last+fused_qkv", "channels_last+fused_qkv+compile"}
    assert all(r["images_per_s"] > 0 for r in gen)
    assert all(r["compile_s"] is not None for r in gen if r["variant"].endswith("compile"))

    down = s["downstream"]["rows"]
    assert [r["transfer_mb"] for r in down][0] == 4 * down[1]["transfer_mb"]  # uint8: a quarter of float32's bytes

    e2e = s["cub_e2e"]
    assert e2e["exit_code"] == 0 and e2e["tokens"] == 2
    assert e2e["arms"]["token"]["images"] == e2e["arms"]["baseline"]["images"] == e2e["images_per_arm"] > 0

    md = (out / "gpu_check.md").read_text()
    for title in ("Token step", "Generation", "Downstream", "CUB preset end to end"):
        assert f"## {title}" in md
    table_rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    # a header per table plus one line per row (the e2e table has one)
    assert len(table_rows) == 4 + len(tok) + len(gen) + len(down) + 1
    assert "augment build --dataset cub" in md
