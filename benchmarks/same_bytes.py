"""Fingerprint a run folder's outputs, so two builds of the same commands can be compared byte for byte.

A refactor that promises "same commands, same bytes" is checked by running the same small build +
caso + benchmark before and after it, and diffing this script's listings::

    python benchmarks/same_bytes.py run OUT          # build, caso, eval and benchmark into OUT (small sizes)
    python benchmarks/same_bytes.py print OUT > a.txt # one line per file: sha256, path
    diff a.txt b.txt

What is not expected to repeat is left out of the digest, and only that: wall-clock times
(``seconds``, ``created_at``, ``created``/``updated`` stamps, ``*_seconds``), benchmark cells' cache keys
(they hash the run folder's path), run.json's package
versions and git sha, and the lock file. Parquet files are digested by their rows (the
``created_at`` column dropped) and their key-value metadata, not their bytes, since Parquet
embeds the writer's version; everything else is digested as bytes (token files, shards, PNGs),
JSON after dropping the time fields above.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

#: JSON keys whose values are clocks, hosts or versions, not results
VOLATILE = {"seconds", "created_at", "started", "finished", "started_at", "finished_at", "time", "elapsed",
            "versions", "git_sha", "host", "hostname", "pid", "stage_seconds", "times", "stages", "when",
            "created", "updated"}
#: cache keys of benchmark cells hash the run folder's path, which differs between two runs
PATH_KEYED = {"benchmark.json": "key", "benchmark-cells.jsonl": "key"}
#: report/index.html (augment report, written by build) quotes the folder's path and stamps: a view, not a result
SKIP_NAMES = {".lock", "run.lock", ".augment.lock", "index.html"}

TINY = """\
tokens: {max_steps: 2, batch_size: 4, steps: 5, val_seeds: 4, val_every: 1}
generate: {per_class: 4, steps: 10, shard_size: 2, batch_size: 4}
caso: {k: 2, max_steps: 2, edit_steps: 5}
train: {epochs: 1, samples_per_epoch: 64, k_values: [0, 3], seeds: [0]}
"""


def _strip(obj: Any, drop: str | None = None) -> Any:
    if isinstance(obj, dict):
        return {k: _strip(v, drop) for k, v in obj.items()
                if k not in VOLATILE and k != drop and not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [_strip(v, drop) for v in obj]
    return obj


def digest(path: Path, root: Path | None = None) -> str:
    """The sha256 of what in ``path`` is a result (see the module docstring); text naming the run
    folder ``root`` names it ``OUT`` (two runs are made in two folders)."""
    if root is not None and path.suffix in (".json", ".jsonl", ".md", ".csv", ".txt"):
        text = path.read_text(encoding="utf-8").replace(str(root.resolve()), "OUT").replace(str(root), "OUT")
        if path.suffix not in (".json", ".jsonl"):
            return hashlib.sha256(text.encode()).hexdigest()
        return _json_digest(text, path.suffix, PATH_KEYED.get(path.name))
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        table = table.drop([c for c in ("created_at", "seconds") if c in table.column_names])
        meta = {k.decode(): v.decode(errors="replace") for k, v in (table.schema.metadata or {}).items()
                if k != b"ARROW:schema"}
        body = json.dumps({"rows": table.to_pylist(), "meta": meta}, sort_keys=True, default=str)
        return hashlib.sha256(body.encode()).hexdigest()
    if path.suffix in (".json", ".jsonl"):
        return _json_digest(path.read_text(encoding="utf-8"), path.suffix)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_digest(text: str, suffix: str, drop: str | None = None) -> str:
    try:
        lines = [json.loads(text)] if suffix == ".json" else [json.loads(x) for x in text.splitlines() if x]
    except json.JSONDecodeError:
        return hashlib.sha256(text.encode()).hexdigest()
    return hashlib.sha256(json.dumps(_strip(lines, drop), sort_keys=True).encode()).hexdigest()


def listing(root: Path) -> list[str]:
    """``<sha256>  <relative path>`` for every file under ``root``, sorted by path."""
    out = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name not in SKIP_NAMES and not p.name.endswith(".log"):
            out.append(f"{digest(p, root)}  {p.relative_to(root)}")
    return out


def run_small(out: Path) -> None:
    """The small build + caso + eval + benchmark the comparison is made on (inline, 2 classes)."""
    out.mkdir(parents=True, exist_ok=True)
    cfg = out.parent / f"{out.name}-tiny.yaml"
    cfg.write_text(TINY, encoding="utf-8")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled", "TQDM_DISABLE": "1"}
    exe = [os.environ.get("AUGMENT_EXE") or str(Path(sys.executable).with_name("augment"))]
    common = ["--classes", "0,1", "--config", str(cfg), "--workers", "0", "--out", str(out), "-q"]
    for cmd in (["build", "--baseline"], ["caso"], ["eval"], ["benchmark", "--arm", "real", "--arm", "token",
                                                                "--arm", "baseline", "--arm", "token:conf=0.5"]):
        print("+ augment", " ".join(cmd + common), flush=True)
        subprocess.run(exe + cmd + common, check=True, env=env)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("run", "print"):
        print(__doc__)
        return 2
    root = Path(argv[1])
    if argv[0] == "run":
        run_small(root)
    print("\n".join(listing(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
