"""Check a run folder's files against each other: shards vs manifests vs ``_info.json`` vs tokens.

:func:`verify_run` reads every shard completely and returns a :class:`VerifyReport`; it never
raises for a problem in the data (only the report says what is wrong) and never modifies
anything. What it checks:

* every tar has its Parquet and vice versa; no leftover temp files; file names follow
  ``synth-NNNNNN``;
* per shard: the manifest has the manifest schema's columns, its ``shard`` column names the file,
  and the tar holds the same keys in the same order, each sample's files contiguous and exactly
  ``<key>.<image_format>``, ``<key>.cls``, ``<key>.json``; the image's sha256 and size match,
  PIL decodes it at the manifest's width x height; ``.cls`` equals ``class_index``; the JSON
  sidecar parses and its ``class_name`` (and ``key``/``class_index`` when present) match;
* keys are unique across shards and each class index has one class name;
* ``shards/_info.json`` lists exactly the complete shards with their true lengths and total;
* against the plan: the arm's run.json ``generate`` entry gives, through the stage's own
  :func:`augment.generate.plan.plan_shards`, the shards, keys, classes, seeds, prompts and tokens
  the arm should hold: a missing shard, a relabelled sample, a swapped arm, an edited seed are
  named; every sidecar field agrees with its manifest row, and the guide's fields with each other;
* a run whose lock another process holds is reported incomplete (a writer is running);
* ``tokens/*.safetensors`` against ``tokens/tokens.parquet``: every listed file matches its row's
  sha256 whatever the row's status; each ``ok`` row's file exists, has
  the recorded sha256 and exactly one tensor, keyed by the token string, shaped [D] or [n, D] (n > 1: a multi-vector CASO embedding);
  no unlisted token files; manifests' ``token_sha256`` agree with the tokens table.

An arm that was generated into must hold shards: it counts as present when its ``run.json``
records a generating stage (generate or caso: the stage writes run.json before its first unit) or
its ``shards/`` or ``manifests/`` folder exists, and a present arm without one complete shard is a
problem (a generate whose every unit failed once printed "verify: ok"). A run folder where only the
tokens stage ran verifies its tokens and passes.

:func:`verify_arms` verifies the token arm and every other present arm of a run folder and returns
a :class:`VerifySummary`, whose ``exit_code`` the CLI returns (1 when any arm has a problem).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from augment.config import config_from_dict
from augment.datasets.selection import select_classes
from augment.errors import AugmentError
from augment.generate.plan import ShardUnit, plan_shards, sample_prompt, sample_seed
from augment.generate.rejection import plain_seed_fits
from augment.io.atomic import is_temp_name, sha256_file
from augment.io.jsonsafe import json_safe
from augment.io.lock import holder, is_locked
from augment.io.manifest import ADDED_COLUMNS, MANIFEST_SCHEMA, TOKENS_SCHEMA
from augment.io.rundir import ARMS, ArmDir, RunDir, parse_shard_name, read_run_json, shard_name
from augment.io.shards import JSON_EXCLUDE, manifest_path, sample_key, shard_path
from augment.stage import StageSummary
from augment.tokens.textual_inversion import token_string

__all__ = ["VerifyCounts", "VerifyReport", "VerifySummary", "arm_present", "verify_arms", "verify_run"]

#: at most this many problems are listed per shard (then a count of the rest)
MAX_PROBLEMS_PER_SHARD = 20
#: stages whose entry in an arm's run.json means shards were meant to be written there
GENERATING_STAGES = ("generate", "caso")
#: the command that (re)writes each arm's shards, for the "no shards" line
_RESUME = {"token": "augment generate", "baseline": "augment generate --baseline", "caso": "augment caso"}


def arm_present(arm: ArmDir) -> bool:
    """Whether ``arm`` was generated into: its run.json records a generating stage, or its
    ``shards/`` or ``manifests/`` folder exists. Such an arm must hold shards."""
    try:
        record = read_run_json(arm)
    except AugmentError:  # an unreadable run.json: the folders still tell
        record = None
    generated = record is not None and any(s in record.stages for s in GENERATING_STAGES)
    return generated or arm.shards.is_dir() or arm.manifests.is_dir()


def _no_shards_line(out_dir: Path) -> str:
    """``<arm>: no shards ...``, naming the command that resumes it."""
    run, name = RunDir.locate(out_dir)
    command = _RESUME.get(name, "the stage that writes this arm")
    return (f"{name}: no shards in {ArmDir(out_dir).shards} (generate did not finish? re-run `{command} "
            f"--out {run}` with the same settings, or the same `augment build`, to resume)")


@dataclass
class VerifyCounts:
    """What one arm holds, as :func:`verify_run` counted it: complete shards, samples, classes,
    samples per class index, the class names by index, the images' bytes, the rows of
    tokens.parquet (``tokens``), the token files, and the problems found."""

    shards: int = 0
    samples: int = 0
    classes: int = 0
    per_class: dict[int, int] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    image_bytes: int = 0
    tokens: int = 0
    token_files: int = 0
    problems: int = 0

    def to_json(self) -> dict[str, Any]:
        """The counts as ``augment verify --json`` prints them (this order)."""
        return {"shards": self.shards, "samples": self.samples, "classes": self.classes,
                "per_class": dict(self.per_class), "class_names": dict(self.class_names),
                "image_bytes": self.image_bytes, "tokens": self.tokens, "token_files": self.token_files,
                "problems": self.problems}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VerifyCounts:
        """Counts from their JSON (class indices may be strings there, as JSON keys are)."""
        return cls(**{**data, "per_class": {int(k): int(v) for k, v in data.get("per_class", {}).items()},
                      "class_names": {int(k): v for k, v in data.get("class_names", {}).items()}})


@dataclass
class VerifyReport:
    """``problems``: one line each, empty when the run is consistent; ``summary``: the arm's
    :class:`VerifyCounts`."""

    problems: list[str] = field(default_factory=list)
    summary: VerifyCounts = field(default_factory=VerifyCounts)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "problems": list(self.problems), "summary": self.summary.to_json()}


class _Problems:
    """Collects problem lines, capping how many one shard may add."""

    def __init__(self, out: list[str], limit: int | None = None) -> None:
        self.out, self.limit, self.count, self.extra = out, limit, 0, 0

    def add(self, msg: str) -> None:
        if self.limit is not None and self.count >= self.limit:
            self.extra += 1
        else:
            self.out.append(msg)
            self.count += 1

    def close(self, where: str) -> None:
        if self.extra:
            self.out.append(f"{where}: ... and {self.extra} more problems")


def _schema_problems(schema: pa.Schema, expected: pa.Schema, where: str) -> list[str]:
    out = []
    # columns added later are absent from older manifests: that is not a problem
    missing = [n for n in expected.names if n not in schema.names and n not in ADDED_COLUMNS]
    if missing:
        out.append(f"{where}: missing columns {', '.join(missing)}")
    for f in expected:
        if f.name in schema.names and not schema.field(f.name).type.equals(f.type):
            out.append(f"{where}: column {f.name} is {schema.field(f.name).type}, expected {f.type}")
    extra = [n for n in schema.names if n not in expected.names]
    if extra:
        out.append(f"{where}: unexpected columns {', '.join(extra)}")
    return out


def _indices(folder: Path, suffix: str, problems: list[str]) -> set[int]:
    out: set[int] = set()
    if not folder.is_dir():
        return out
    for p in sorted(folder.iterdir()):
        if is_temp_name(p.name):
            problems.append(f"{p}: leftover temporary file of an interrupted write (a re-run removes it)")
        elif p.name.endswith(suffix):
            i = parse_shard_name(p.name[: -len(suffix)])
            if i is None or p.name != f"{shard_name(i)}{suffix}":
                problems.append(f"{p}: not a shard name (expected synth-NNNNNN{suffix})")
            else:
                out.add(i)
    return out


def _read_tar(path: Path, probs: _Problems) -> list[tuple[str, dict[str, bytes]]] | None:
    """The samples of a tar in order: (key, {extension: bytes}); None when unreadable."""
    samples: list[tuple[str, dict[str, bytes]]] = []
    seen: set[str] = set()
    try:
        with tarfile.open(path, "r|") as tf:
            for m in tf:
                if not m.isfile():
                    probs.add(f"{path.name}: member {m.name!r} is not a regular file")
                    continue
                if "/" in m.name or "." not in m.name:
                    probs.add(f"{path.name}: member {m.name!r} is not <key>.<ext>")
                    continue
                key, ext = m.name.split(".", 1)
                f = tf.extractfile(m)
                data = f.read() if f is not None else b""
                if samples and samples[-1][0] == key:
                    if ext in samples[-1][1]:
                        probs.add(f"{path.name}: {m.name} appears twice")
                    samples[-1][1][ext] = data
                else:
                    if key in seen:
                        probs.add(f"{path.name}: the files of sample {key} are not contiguous")
                    seen.add(key)
                    samples.append((key, {ext: data}))
    except (tarfile.TarError, OSError, EOFError) as e:
        probs.add(f"{path.name}: cannot read the tar ({e})")
        return None
    return samples


def _check_sample(
    shard: str, key: str, files: dict[str, bytes], row: dict[str, Any], probs: _Problems, decode: bool
) -> None:
    fmt = row.get("image_format")
    expected = {str(fmt), "cls", "json"}
    if set(files) != expected:
        probs.add(f"{shard}: sample {key} has files {sorted(files)}, expected {sorted(expected)}")
    image = files.get(str(fmt))
    if image is not None:
        if hashlib.sha256(image).hexdigest() != row.get("image_sha256"):
            probs.add(
                f"{shard}: sample {key}: image sha256 differs from the manifest (changed bytes; "
                f"{len(image)} bytes, manifest says {row.get('bytes')})"
            )
        elif len(image) != row.get("bytes"):
            probs.add(f"{shard}: sample {key}: image is {len(image)} bytes, manifest says {row.get('bytes')}")
        if decode:
            try:
                with Image.open(io.BytesIO(image)) as im:
                    im.load()
                    size = im.size
                if size != (row.get("width"), row.get("height")):
                    probs.add(
                        f"{shard}: sample {key}: image is {size[0]}x{size[1]}, manifest says "
                        f"{row.get('width')}x{row.get('height')}"
                    )
            except Exception as e:  # PIL raises many types for corrupt data
                probs.add(f"{shard}: sample {key}: PIL cannot read the image ({type(e).__name__}: {e})")
    cls = files.get("cls")
    if cls is not None:
        try:
            value = int(cls.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            probs.add(f"{shard}: sample {key}: .cls is not an ASCII integer ({cls[:20]!r})")
        else:
            if value != row.get("class_index"):
                probs.add(
                    f"{shard}: sample {key}: .cls is {value}, manifest class_index {row.get('class_index')}"
                )
    side = files.get("json")
    if side is not None:
        try:
            doc = json.loads(side.decode("utf-8"))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
        except (UnicodeDecodeError, ValueError) as e:
            probs.add(f"{shard}: sample {key}: .json does not parse ({e})")
        else:
            if doc.get("class_name") != row.get("class_name"):
                probs.add(
                    f"{shard}: sample {key}: .json class_name {doc.get('class_name')!r} != manifest "
                    f"{row.get('class_name')!r}"
                )
            for name in ("key", "class_index"):
                if name in doc and doc[name] != row.get(name):
                    probs.add(
                        f"{shard}: sample {key}: .json {name} {doc[name]!r} != manifest {row.get(name)!r}"
                    )
            # every other field the sidecar copies from the row (guide_confidence, soft_classes,
            # seed, prompt ... what `train --min-confidence` and `--distill` read) agrees with it
            for name, value in row.items():
                if name in JSON_EXCLUDE or name in ("key", "class_index", "class_name") or name not in doc:
                    continue
                if not _same(doc[name], json_safe(value)):
                    probs.add(f"{shard}: sample {key}: .json {name} {_short(doc[name])} != manifest {_short(value)}")
    _check_guide(shard, key, row, probs)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _same(a: Any, b: Any) -> bool:
    """Equal as stored: a float32 column read back against the sidecar's float (7.3 vs 7.300000190734863)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float | int) and isinstance(b, float | int) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or abs(float(a) - float(b)) <= 1e-6 * max(1.0, abs(float(a)), abs(float(b)))
    return a == b


def _check_guide(shard: str, key: str, row: dict[str, Any], probs: _Problems) -> None:
    """The guide's fields agree with each other: ``guide_pred`` is the top of ``soft_classes``
    (up to the 6-decimal rounding of ``soft_probs``) and ``guide_confidence`` is the class's
    soft probability when listed, so a field edited in both the manifest and the sidecar shows."""
    classes, soft, pred, conf = (row.get(n) for n in ("soft_classes", "soft_probs", "guide_pred", "guide_confidence"))
    if not classes or not soft or len(classes) != len(soft):
        return
    p = dict(zip(classes, soft, strict=True))
    if pred is not None and (pred not in p and len(p) > 1 or pred in p and p[pred] < max(soft) - 2e-6):
        probs.add(f"{shard}: sample {key}: guide_pred {pred} is not the top of soft_classes {_short(classes)}")
    c = row.get("class_index")
    if conf is not None and c in p and abs(p[c] - conf) > 2e-6:
        probs.add(f"{shard}: sample {key}: guide_confidence {conf:.6f} != its soft probability {p[c]:.6f}")


def _check_shard(out_dir: Path, i: int, problems: list[str], decode: bool) -> pa.Table | None:
    name = shard_name(i)
    probs = _Problems(problems, MAX_PROBLEMS_PER_SHARD)
    try:
        table = pq.read_table(manifest_path(out_dir, i))
    except Exception as e:  # corrupt Parquet: ArrowInvalid, OSError, ...
        probs.add(f"{name}: cannot read manifests/{name}.parquet ({e})")
        probs.close(name)
        return None
    for p in _schema_problems(table.schema, MANIFEST_SCHEMA, f"manifests/{name}.parquet"):
        probs.add(p)
    rows = table.to_pylist()
    if any(r.get("shard") != name for r in rows):
        probs.add(f"{name}: manifest rows name another shard in their 'shard' column")
    if not rows:
        probs.add(f"{name}: manifest has no rows")
    samples = _read_tar(shard_path(out_dir, i), probs)
    if samples is not None:
        tar_keys = [k for k, _ in samples]
        man_keys = [r.get("key") for r in rows]
        if tar_keys != man_keys:
            first = next(
                (j for j, (a, b) in enumerate(zip(tar_keys, man_keys, strict=False)) if a != b),
                min(len(tar_keys), len(man_keys)),
            )
            probs.add(
                f"{name}: tar has {len(tar_keys)} samples, manifest {len(man_keys)} rows; keys differ "
                f"from position {first} (tar {tar_keys[first] if first < len(tar_keys) else None!r}, "
                f"manifest {man_keys[first] if first < len(man_keys) else None!r})"
            )
        by_key = {r.get("key"): r for r in rows}
        for key, files in samples:
            if key in by_key:
                _check_sample(name, key, files, by_key[key], probs, decode)
    probs.close(name)
    return table


def _check_info(out_dir: Path, complete: list[int], lengths: dict[int, int], problems: list[str]) -> None:
    path = ArmDir(out_dir).info_json
    if not complete:
        return
    if not path.exists():
        problems.append(f"{path}: missing (timm's wds reader needs it; a re-run of generate rebuilds it)")
        return
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        split = info["splits"]["train"]
        filenames, shard_lengths, num = (
            list(split["filenames"]),
            list(split["shard_lengths"]),
            split["num_samples"],
        )
        if "name" not in info or split.get("name") != "train":
            raise KeyError("name")
    except (OSError, ValueError, KeyError, TypeError) as e:
        problems.append(f"{path}: not timm's wds info format ({type(e).__name__}: {e})")
        return
    expected_files = [f"{shard_name(i)}.tar" for i in complete]
    if filenames != expected_files:
        missing = sorted(set(expected_files) - set(filenames))
        extra = sorted(set(filenames) - set(expected_files))
        problems.append(
            f"{path}: filenames do not match the shards (missing {missing}, not on disk or "
            f"incomplete {extra}, or another order)"
        )
    if len(shard_lengths) != len(filenames):
        problems.append(f"{path}: {len(filenames)} filenames but {len(shard_lengths)} shard_lengths")
    else:
        by_name = {f"{shard_name(i)}.tar": lengths.get(i) for i in complete}
        for fname, n in zip(filenames, shard_lengths, strict=True):
            if fname in by_name and by_name[fname] is not None and by_name[fname] != n:
                problems.append(
                    f"{path}: shard_lengths says {fname} has {n} samples, it has {by_name[fname]}"
                )
    total = sum(lengths.get(i, 0) for i in complete)
    if num != total:
        problems.append(f"{path}: num_samples is {num}, the shards hold {total}")


def _check_tokens(out_dir: Path, problems: list[str], summary: VerifyCounts) -> dict[int, str]:
    """Check tokens/; returns class index -> token sha256 of the ok rows."""
    folder = ArmDir(out_dir).tokens
    table_path = ArmDir(out_dir).tokens_parquet
    files = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if is_temp_name(p.name):
                problems.append(f"{p}: leftover temporary file of an interrupted write")
    summary.token_files = len(files)
    if not table_path.exists():
        summary.tokens = 0
        if files:
            problems.append(f"{folder}: {len(files)} token files but no tokens.parquet listing them")
        return {}
    try:
        table = pq.read_table(table_path)
    except Exception as e:
        problems.append(f"{table_path}: cannot read ({e})")
        return {}
    problems.extend(_schema_problems(table.schema, TOKENS_SCHEMA, str(table_path)))
    rows = table.to_pylist()
    summary.tokens = len(rows)
    listed: set[str] = set()
    shas: dict[int, str] = {}
    for r in rows:
        where = f"tokens.parquet class {r.get('class_index')} ({r.get('class_name')})"
        if r.get("token_file"):
            listed.add(r["token_file"])
        if r.get("status") != "ok":
            # a file it lists must still be the one it records (a replaced vector behind a "failed" row)
            other = folder / r["token_file"] if r.get("token_file") else None
            if other is not None and other.is_file() and sha256_file(other) != r.get("token_sha256"):
                problems.append(f"{where}: {other.name} does not match the row's token_sha256 "
                                f"({str(r.get('token_sha256'))[:12]}) (file changed)")
            continue
        fname, token = r.get("token_file"), r.get("token")
        if not fname:
            problems.append(f"{where}: status ok but no token_file")
            continue
        path = folder / fname
        if not path.is_file():
            problems.append(f"{where}: token file {fname} is missing")
            continue
        sha = sha256_file(path)
        if sha != r.get("token_sha256"):  # a nulled sha256 hides nothing
            problems.append(f"{where}: {fname} sha256 differs from tokens.parquet "
                            f"({str(r.get('token_sha256'))[:12]}) (file changed)")
        if r.get("class_index") is not None and r.get("token_sha256"):
            shas[int(r["class_index"])] = r["token_sha256"]
        try:
            from safetensors import safe_open

            with safe_open(str(path), framework="numpy") as st:
                keys = list(st.keys())
                shape = st.get_slice(keys[0]).get_shape() if len(keys) == 1 else None
        except Exception as e:
            problems.append(f"{where}: {fname} is not a readable safetensors file ({e})")
            continue
        if keys != [token]:
            problems.append(f"{where}: {fname} holds keys {keys}, expected exactly [{token!r}]")
        elif shape is not None and not (len(shape) == 1 or (len(shape) == 2 and shape[0] >= 1)):
            problems.append(f"{where}: {fname} tensor has shape {list(shape)}, expected [D] or [n, D]")
    for name in files:
        if name not in listed:
            problems.append(f"{folder / name}: token file not listed in tokens.parquet")
    return shas


@dataclass
class _ArmPlan:
    """What run.json says the arm should hold: its shards (index -> planned entries), the run
    seed, class names, prompt templates, the arm (baseline: no token), rejection sampling, and
    each class's token sha256 as the token files hold it now (None on the baseline arm)."""

    units: dict[int, ShardUnit]
    seed: int
    names: list[str]
    templates: list[str]
    baseline: bool
    rejection: bool
    token_shas: dict[int, str | None]
    per_class: int
    max_attempts: int = 1  # generate.max_attempts: how far a NaN/inf redraw may reach into its stream


def _plan_of(arm: ArmDir, problems: list[str]) -> _ArmPlan | None:
    """The arm's plan, recomputed from what its run.json's ``generate`` entry records (the same
    :func:`augment.generate.plan.plan_shards` the stage runs); None for an arm with no such entry
    (a caso arm, a folder from before run.json kept each stage's settings)."""
    try:
        record = read_run_json(arm)
    except AugmentError as e:
        problems.append(f"run.json: {e.message}")
        return None
    settings = record.stage_settings("generate") if record is not None else None
    if not isinstance(settings, dict) or not isinstance(settings.get("config"), dict):
        return None
    try:
        cfg = config_from_dict(settings["config"])
        names = list(settings.get("class_names") or record.class_names or [])
        classes = select_classes(cfg.classes, len(names), names)
    except (AugmentError, TypeError, ValueError) as e:
        problems.append(f"{arm.run_json}: its generate settings give no plan ({getattr(e, 'message', e)})")
        return None
    g, baseline = cfg.generate, bool(settings.get("baseline", False))
    shas: dict[int, str | None] = {}
    for c in classes:
        path = arm.token_file(c, names[c])
        shas[c] = None if baseline or not path.is_file() else sha256_file(path)
    units = {u.index: u for u in plan_shards(classes, g.per_class, g.shard_size)}
    return _ArmPlan(units, cfg.seed, names, list(g.prompts), baseline, g.min_confidence > 0, shas, g.per_class,
                    g.max_attempts)


def _check_plan(plan: _ArmPlan, complete: list[int], tables: dict[int, pa.Table], problems: list[str]) -> None:
    """Every planned shard is there and holds what the plan puts in it: its keys, each key's class
    (a relabelled sample), name, seed and prompt (without rejection sampling: both follow the draws
    under it), and the token this arm's samples are made with (a swapped arm, retrained tokens)."""
    missing = sorted(set(plan.units) - set(complete))
    if missing:
        shown = ", ".join(shard_name(i) for i in missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        problems.append(f"{len(missing)} of the {len(plan.units)} planned shards are missing ({shown}; run.json plans "
                        f"{plan.per_class} per class): re-run the same generate or build to finish them")
    for i in sorted(set(plan.units) & set(tables)):
        name, unit, probs = shard_name(i), plan.units[i], _Problems(problems, MAX_PROBLEMS_PER_SHARD)
        planned = {sample_key(c, j): (c, j) for c, j in unit.entries}
        rows = tables[i].to_pylist()
        if not plan.rejection and [r.get("key") for r in rows] != list(planned):
            probs.add(f"{name}: holds {len(rows)} samples, not the {len(planned)} its plan lists in order")
        for r in rows:
            key = r.get("key")
            if key not in planned:
                probs.add(f"{name}: sample {key} is not in this shard's plan")
                continue
            c, j = planned[key]
            token = "" if plan.baseline else token_string(c)
            checks = [("class_index", c), ("class_name", plan.names[c]), ("sample_index", j),
                      ("token_sha256", plan.token_shas.get(c))]
            if not plan.rejection:
                # a slot redrawn after a NaN/inf image holds a draw of its class's attempt stream
                if not plain_seed_fits(plan.seed, c, j, unit, r.get("seed"), r.get("attempts"), plan.max_attempts):
                    checks.append(("seed", sample_seed(plan.seed, c, j)))
                checks.append(("prompt", sample_prompt(plan.templates, j, token, plan.names[c])))
            for field_name, want in checks:
                if field_name in r and r[field_name] != want:
                    probs.add(f"{name}: sample {key}: {field_name} {_short(r[field_name])}, the plan of run.json "
                              f"says {_short(want)}")
        probs.close(name)


def verify_run(out_dir: str | os.PathLike[str], decode_images: bool = True) -> VerifyReport:
    """Check the run folder ``out_dir`` (see the module doc); ``decode_images=False`` skips the
    PIL decode of every image (the sha256 check still catches changed bytes)."""
    out_dir = Path(out_dir)
    report = VerifyReport()
    problems, summary = report.problems, report.summary
    if not out_dir.is_dir():
        problems.append(f"{out_dir}: no such folder")
        summary.problems = len(problems)
        return report

    tars = _indices(ArmDir(out_dir).shards, ".tar", problems)
    pqs = _indices(ArmDir(out_dir).manifests, ".parquet", problems)
    for i in sorted(tars - pqs):
        problems.append(
            f"{shard_path(out_dir, i)}: tar without its manifest (an interrupted shard; a re-run redoes it)"
        )
    for i in sorted(pqs - tars):
        problems.append(f"{manifest_path(out_dir, i)}: manifest without its tar (the shard is missing)")
    complete = sorted(tars & pqs)
    if not complete and arm_present(ArmDir(out_dir)):
        problems.append(_no_shards_line(out_dir))

    lengths: dict[int, int] = {}
    tables: list[pa.Table] = []
    by_index: dict[int, pa.Table] = {}
    for i in complete:
        table = _check_shard(out_dir, i, problems, decode_images)
        if table is not None:
            lengths[i] = table.num_rows
            tables.append(table)
            by_index[i] = table
    _check_info(out_dir, complete, lengths, problems)
    token_shas = _check_tokens(out_dir, problems, summary)
    plan = _plan_of(ArmDir(out_dir), problems)
    if plan is not None:
        _check_plan(plan, complete, by_index, problems)

    per_class: dict[int, int] = {}
    names: dict[int, str] = {}
    seen_keys: dict[str, str] = {}
    image_bytes = 0
    sha_mismatch: set[int] = set()
    for table in tables:
        cols = [
            c
            for c in ("key", "shard", "class_index", "class_name", "bytes", "token_sha256")
            if c in table.column_names
        ]
        for r in table.select(cols).to_pylist():
            key, ci, cn = r.get("key"), r.get("class_index"), r.get("class_name")
            if key in seen_keys:
                problems.append(f"sample key {key} appears in {seen_keys[key]} and {r.get('shard')}")
            else:
                seen_keys[key] = r.get("shard")
            if ci is None:
                continue
            per_class[ci] = per_class.get(ci, 0) + 1
            if ci in names and names[ci] != cn:
                problems.append(f"class {ci} is named both {names[ci]!r} and {cn!r} in the manifests")
            names.setdefault(ci, cn)
            image_bytes += r.get("bytes") or 0
            t = r.get("token_sha256")
            if t and ci in token_shas and token_shas[ci] != t and ci not in sha_mismatch:
                sha_mismatch.add(ci)
                problems.append(
                    f"class {ci}: samples were made with token sha256 {t[:12]}..., tokens.parquet "
                    f"has {token_shas[ci][:12]}... (tokens retrained after generating?)"
                )
    summary.shards, summary.samples, summary.classes = len(complete), sum(per_class.values()), len(per_class)
    summary.per_class, summary.class_names = dict(sorted(per_class.items())), dict(sorted(names.items()))
    summary.image_bytes = image_bytes
    if not complete and not summary.tokens and not summary.token_files and not problems:
        problems.append(f"{out_dir}: no shards and no tokens to verify (is this a run folder?)")
    summary.problems = len(problems)
    return report


@dataclass
class VerifySummary(StageSummary):
    """:func:`verify_arms`' result: the arms checked (by name, in ``ARMS`` order) and each one's
    report; ``done`` counts the consistent arms, ``failed`` has one line per arm with problems."""

    arms: dict[str, ArmDir] = field(default_factory=dict)
    reports: dict[str, VerifyReport] = field(default_factory=dict)


def _token_arm_present(run: RunDir) -> bool:
    """The token arm (the run folder itself) counts when it was generated into or holds tokens or a
    run.json; a folder made by ``augment generate --baseline`` alone holds none of them."""
    return arm_present(run) or run.tokens.is_dir() or run.run_json.exists()


def verify_arms(out: str | os.PathLike[str], decode_images: bool = True) -> VerifySummary:
    """:func:`verify_run` on every arm of the run folder ``out`` that is present (:func:`arm_present`;
    the token arm also with only tokens), so an arm whose generate started but wrote nothing fails
    instead of being skipped; a folder with no arm at all is checked as the token arm (and fails).
    Every problem starts with the name of its arm (``baseline: ...``)."""
    start = time.perf_counter()
    run = RunDir(out)
    arms = {name: run.arm_dir(name) for name in ARMS
            if (_token_arm_present(run) if name == "token" else arm_present(run.arm_dir(name)))}
    arms = arms or {"token": run.arm_dir("token")}
    reports = {name: verify_run(arm.path, decode_images=decode_images) for name, arm in arms.items()}
    if is_locked(run.path):  # what it holds now is a moment of a run still being written
        who = holder(run.path) or {}
        first = next(iter(reports))
        reports[first].problems.insert(0, f"incomplete: a writer is running (PID {who.get('pid', '?')} on "
                                          f"{who.get('host', '?')}); verify again once it ends")
    for name, r in reports.items():
        r.problems[:] = [p if p.startswith(f"{name}: ") else f"{name}: {p}" for p in r.problems]
    failed = [f"{arms[name]}: {len(r.problems)} problems" for name, r in reports.items() if not r.ok]
    return VerifySummary(stage="verify", out=run.path, done=len(reports) - len(failed), skipped=0, failed=failed,
                         seconds=time.perf_counter() - start, arms=arms, reports=reports)
