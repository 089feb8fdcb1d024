"""The run folder (``--out DIR``): the one owner of its layout, ``run.json``, and the checks before
writing into it.

Every path inside a run folder comes from here: :class:`RunDir` (the run, its arms, ``report/``,
``train/``) and :class:`ArmDir` (one arm's ``tokens/``, ``shards/``, ``manifests/``). The arms are
listed once, in :data:`ARMS`; other modules ask for an arm by name and never spell its folder.

``run.json`` records what made the folder: the resolved config, package versions, augment's
version and git sha, the model/classifier ids and the class names, plus when each stage last
wrote to it. A later stage (or a re-run) calls :func:`check_compatible` so that it does not mix
its output with files made by another setup.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import augment
from augment.errors import AugmentError
from augment.io.atomic import atomic_write_json, temp_path_for
from augment.io.run_record import RECORD_FIELDS, RunRecord
from augment.io.slug import slugify

__all__ = [
    "ARMS",
    "RUN_JSON",
    "ArmDir",
    "RunRecord",
    "ArmSpec",
    "RunDir",
    "arm_spec",
    "parse_shard_name",
    "shard_name",
    "check_compatible",
    "check_contained",
    "check_out_in_ray_job",
    "check_creatable",
    "check_no_file_in_the_way",
    "check_writable",
    "git_sha",
    "package_versions",
    "read_run_json",
    "recorded_class_names",
    "write_run_json",
]

RUN_JSON = "run.json"
#: the run folder's write lock (augment.io.lock): hidden, so no reader of the folder lists it
LOCK_NAME = ".augment.lock"
TOKENS_DIR = "tokens"
TOKENS_PARQUET = "tokens.parquet"
SHARDS_DIR = "shards"
MANIFESTS_DIR = "manifests"
INFO_NAME = "_info.json"
ACCEPTANCE_JSON = "acceptance.json"
REPORT_DIR = "report"
TRAIN_DIR = "train"
SHARD_PREFIX = "synth-"
PACKAGES = ("torch", "diffusers", "transformers", "timm", "ray", "webdataset", "pyarrow")

#: Ray's job supervisor sets this in the environment of a ``ray job submit`` entrypoint (and only
#: there): ray/_private/runtime_env/constants.py, used by JobSupervisor._get_driver_env_vars.
#: Spelled out rather than imported, so that reading a run folder never imports Ray.
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
#: the folder of Ray's session dir that a job's ``--working-dir`` is unpacked into
#: (ray/_private/ray_constants.py DEFAULT_RUNTIME_ENV_DIR_NAME)
RAY_UPLOAD_DIR = "runtime_resources"

_SHARD_RE = re.compile(rf"^{SHARD_PREFIX}(\d{{6,}})$")


@dataclass(frozen=True)
class ArmSpec:
    """One arm of a run: a set of synthetic images made one way, in its own folder.

    ``folder`` is relative to the run folder ("" = the run folder itself). Every arm has the same
    inner layout (run.json, tokens/, shards/, manifests/), so readers treat them alike.
    """

    name: str
    folder: str
    label: str
    description: str


#: every arm augment writes; adding one here is all the run folder needs to know about it
ARMS: dict[str, ArmSpec] = {
    "token": ArmSpec("token", "", "tokens", "prompts with the learned class token (augment generate)"),
    "baseline": ArmSpec("baseline", "baseline", "baseline (no token)",
                        "the same prompts and seeds without the token (augment generate --baseline)"),
    "caso": ArmSpec("caso", "caso", "caso edits", "CASO edits of the few-shot real images (augment caso)"),
}


def shard_name(index: int) -> str:
    """``synth-000000``: the basename (no extension) of shard ``index`` and of its manifest."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{SHARD_PREFIX}{index:06d}"


def parse_shard_name(name: str) -> int | None:
    """Shard index of a basename like ``synth-000012`` (extension allowed), else None."""
    stem = name.split(".", 1)[0]
    m = _SHARD_RE.match(stem)
    return int(m.group(1)) if m else None


def arm_spec(name: str) -> ArmSpec:
    """The arm called ``name``; AugmentError naming the arms that exist otherwise."""
    try:
        return ARMS[name]
    except KeyError:
        raise AugmentError(f"unknown arm {name!r}; arms: {', '.join(ARMS)}") from None


@dataclass(frozen=True)
class ArmDir:
    """The folder of one arm: ``run.json``, ``tokens/``, ``shards/`` + ``_info.json``, ``manifests/``.

    Stages that write an arm and readers of shards take an ArmDir (or a path, which is the same
    layout), so no other module spells these names.
    """

    path: Path
    arm: str = "token"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    @property
    def spec(self) -> ArmSpec:
        return arm_spec(self.arm)

    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def tokens(self) -> Path:
        return self.path / TOKENS_DIR

    @property
    def tokens_parquet(self) -> Path:
        return self.tokens / TOKENS_PARQUET

    @property
    def shards(self) -> Path:
        return self.path / SHARDS_DIR

    @property
    def info_json(self) -> Path:
        return self.shards / INFO_NAME

    @property
    def manifests(self) -> Path:
        return self.path / MANIFESTS_DIR

    @property
    def acceptance_json(self) -> Path:
        """Per-class acceptance of rejection sampling (``generate --min-confidence``), rebuilt from
        the shards' manifests after every shard; absent when the arm was generated without it."""
        return self.path / ACCEPTANCE_JSON

    def shard_path(self, index: int) -> Path:
        return self.shards / f"{shard_name(index)}.tar"

    def manifest_path(self, index: int) -> Path:
        return self.manifests / f"{shard_name(index)}.parquet"

    def token_file(self, class_index: int, class_name: str, target: int | None = None) -> Path:
        """``tokens/NNNN-<slug>.safetensors`` (``-to-TTTT`` for an embedding towards another class)."""
        suffix = "" if target is None or target == class_index else f"-to-{target:04d}"
        return self.tokens / f"{class_index:04d}-{slugify(class_name)}{suffix}.safetensors"

    def token_history(self, class_index: int, class_name: str) -> Path:
        """``tokens/history/NNNN-<slug>.json``: one class's training record (per-step loss and batch
        accuracy, every validation score), written just before its token file."""
        return self.tokens / "history" / self.token_file(class_index, class_name).with_suffix(".json").name

    def has_manifests(self) -> bool:
        """Whether this arm has been generated into (its manifests folder exists)."""
        return self.manifests.is_dir()

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class RunDir(ArmDir):
    """A run folder (``--out DIR``): the token arm at its top, the other arms in sub-folders
    (:data:`ARMS`), and ``report/`` and ``train/`` for what is computed from them.

    Nothing is created until :meth:`make` (or a stage) writes.
    """

    def arm_dir(self, name: str) -> ArmDir:
        """The folder of arm ``name`` (``token`` is the run folder itself)."""
        spec = arm_spec(name)
        return ArmDir(self.path / spec.folder if spec.folder else self.path, spec.name)

    def caso_draw(self, k: int, seed: int) -> ArmDir:
        """The caso arm made from one (k, seed) draw of reals, for the benchmark's cells of that draw:
        ``caso/draws/k<K>-seed<S>`` (the same layout as every arm)."""
        return ArmDir(self.arm_dir("caso").path / "draws" / f"k{k}-seed{seed}", "caso")

    def arms(self) -> dict[str, ArmDir]:
        """The arms that have been generated into, in :data:`ARMS` order."""
        found = {name: self.arm_dir(name) for name in ARMS}
        return {name: a for name, a in found.items() if a.has_manifests()}

    @property
    def report(self) -> Path:
        return self.path / REPORT_DIR

    @property
    def lock_file(self) -> Path:
        """The file whose ``flock`` makes one process the folder's only writer (:mod:`augment.io.lock`)."""
        return self.path / LOCK_NAME

    @property
    def eval_json(self) -> Path:
        return self.report / "eval.json"

    @property
    def eval_md(self) -> Path:
        return self.report / "eval.md"

    @property
    def benchmark_cells(self) -> Path:
        """The benchmark's cache of finished cells (one JSON object per line)."""
        return self.report / "benchmark-cells.jsonl"

    def benchmark_files(self) -> dict[str, Path]:
        """Where ``augment benchmark`` writes its table, by format."""
        return {ext: self.report / f"benchmark.{ext}" for ext in ("json", "csv", "md", "png")}

    def train_dir(self, k: int, arms: list[str], seed: int) -> Path:
        """Default output of ``augment train``: ``train/k<K>-<arms>-seed<S>`` (arms "real" if none)."""
        return self.path / TRAIN_DIR / f"k{k}-{'-'.join(arms) or 'real'}-seed{seed}"

    @classmethod
    def locate(cls, path: str | os.PathLike[str]) -> tuple[RunDir, str]:
        """The run folder and arm of ``path``: ``OUT`` -> (OUT, token), ``OUT/baseline`` -> (OUT, baseline)."""
        path = Path(path)
        for spec in ARMS.values():
            if spec.folder and path.name == spec.folder:
                return cls(path.parent), spec.name
        return cls(path), "token"

    def make(self) -> RunDir:
        """Create the folder and its sub-folders (tokens/, shards/, manifests/, report/)."""
        for p in (self.path, self.tokens, self.shards, self.manifests, self.report):
            p.mkdir(parents=True, exist_ok=True)
        return self


def _as_path(run_dir: ArmDir | str | os.PathLike[str]) -> Path:
    return run_dir.path if isinstance(run_dir, ArmDir) else Path(run_dir)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that shape the output (None when not installed)."""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _git(args: list[str], cwd: Path) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
    ).stdout.strip()


def git_sha() -> str | None:
    """The commit of the git checkout augment runs from (``-dirty`` when tracked files are
    modified), or None when augment is not run from a checkout (an installed wheel), the
    checkout has no commit yet, or git is missing. Never raises."""
    package = Path(augment.__file__).resolve().parent
    try:
        top = Path(_git(["rev-parse", "--show-toplevel"], package)).resolve()
        if (top / "augment").resolve() != package:  # e.g. installed in a venv inside some other repo
            return None
        sha = _git(["rev-parse", "HEAD"], top)
        if not sha:
            return None
        dirty = _git(["status", "--porcelain", "--untracked-files=no"], top)
        return f"{sha}-dirty" if dirty else sha
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def read_run_json(run_dir: ArmDir | str | os.PathLike[str]) -> RunRecord | None:
    """The folder's ``run.json`` as a :class:`RunRecord`, or None when there is none; AugmentError
    when it is unreadable."""
    path = _as_path(run_dir) / RUN_JSON
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise AugmentError(f"cannot read {path}: {e.strerror}; check its permissions") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AugmentError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno}); "
            "use another --out or pass --force to overwrite it"
        ) from None
    if not isinstance(data, dict):
        raise AugmentError(f"{path} does not hold a JSON object; use another --out or pass --force")
    return RunRecord.from_json(data)


def recorded_class_names(run_dir: ArmDir | str | os.PathLike[str]) -> list[str]:
    """The class names the folder's run.json records; empty without run.json or class names.
    AugmentError when run.json is unreadable, as :func:`read_run_json`."""
    record = read_run_json(run_dir)
    return list(record.class_names or []) if record is not None else []


def run_settings(run: str | os.PathLike[str]) -> tuple[dict[str, Any], Path] | None:
    """The ``config`` recorded in a run folder's run.json (the token arm's, else the first other arm
    that has one) and that file's path, or None when the folder has none: the run.json layer of
    :func:`augment.config.resolve_config` (its ``recorded``), read here so the config reads no folder."""
    root = RunDir(run)
    for name in ARMS:
        arm = root.arm_dir(name)
        record = read_run_json(arm)
        if record is not None and record.has("config"):
            return record.config, arm.run_json
    return None


def write_run_json(
    run_dir: ArmDir | str | os.PathLike[str],
    config_dict: dict[str, Any],
    stage: str,
    extra: dict[str, Any] | None = None,
) -> RunRecord:
    """Write (or update) ``run.json`` atomically and return what was written (as read back).

    Fields: ``config`` (as given: the last writer's), ``settings`` (stage -> the ``config`` and
    ``extra`` that stage last wrote with, kept apart so that re-running one stage never changes
    what another stage's resume compares against), ``stage`` (the last one that wrote),
    ``stages`` (stage -> last update time), ``created`` (kept from an existing file) and
    ``updated`` (ISO-8601 UTC),
    ``augment_version``, ``git_sha`` (None outside a checkout), ``packages``, ``model_id`` and
    ``classifier_id`` (from ``config_dict["model"]`` / ``["classifier"]`` unless ``extra`` gives
    them), ``class_names`` (from ``extra``, else kept from an existing file). Any other ``extra``
    entries are stored at the top level. An unreadable existing run.json is replaced.
    """
    path = _as_path(run_dir)
    try:
        old = read_run_json(path) or RunRecord(absent=frozenset(RECORD_FIELDS))
    except AugmentError:
        old = RunRecord(absent=frozenset(RECORD_FIELDS))
    now = _now()
    extra = dict(extra or {})
    record = RunRecord(
        config=config_dict,
        stage=stage,
        stages={**old.stages, stage: now},
        settings={**old.settings, stage: _normal({"config": config_dict, **extra})},
        created=old.created if old.has("created") else now,
        updated=now,
        augment_version=augment.__version__,
        git_sha=git_sha(),
        packages=package_versions(),
        model_id=config_dict.get("model"),
        classifier_id=config_dict.get("classifier"),
        class_names=old.class_names,
        extra=dict(old.extra),
    )
    for key, value in extra.items():  # a stage's entries: a record field (class_names, model_id) or its own
        if key in RECORD_FIELDS:
            setattr(record, key, value)
        else:
            record.extra[key] = value
    path.mkdir(parents=True, exist_ok=True)
    # round-trip through JSON so the return value equals what a later read_run_json gives
    atomic_write_json(path / RUN_JSON, record.to_json())
    return RunRecord.from_json(json.loads((path / RUN_JSON).read_text(encoding="utf-8")))


_MISSING = object()


def _lookup(data: Any, dotted: str) -> Any:
    node = data
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return _MISSING
    return node


def _normal(value: Any) -> Any:
    """Compare values as JSON would store them (tuples == lists, paths == strings)."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value: Any, limit: int = 80) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_compatible(
    run_dir: ArmDir | str | os.PathLike[str],
    config_dict: dict[str, Any],
    keys: list[str],
    force: bool,
    extra: dict[str, Any] | None = None,
    stage: str | None = None,
) -> list[str]:
    """Refuse to write into a run folder that was made with a different setup.

    Each dotted key (``"model"``, ``"generate.prompts"``, ``"class_names"``) is looked up in the
    new ``config_dict`` (then in ``extra``) and in what ``stage`` recorded in run.json's
    ``settings`` (its ``config``, then its extras); without a ``stage`` or such a record (a folder
    from an older version), in run.json's ``config`` (then its top level, where
    ``class_names``/``model_id`` live). Keys absent on either side are skipped.
    Without run.json there is nothing to compare. Returns the differences as
    ``"key: old -> new"`` strings; raises AugmentError naming the first ones with both values
    unless ``force`` is true.
    """
    path = _as_path(run_dir)
    try:
        old = read_run_json(path)
    except AugmentError:
        if force:
            return []
        raise
    if old is None:
        return []
    recorded = old.stage_settings(stage) if stage else None
    top = recorded if recorded is not None else old.to_json()
    old_config = top.get("config") if isinstance(top.get("config"), dict) else {}
    diffs: list[str] = []
    for key in keys:
        new_value = _lookup(config_dict, key)
        if new_value is _MISSING and extra is not None:
            new_value = _lookup(extra, key)
        old_value = _lookup(old_config, key)
        if old_value is _MISSING:
            old_value = _lookup(top, key)
        if new_value is _MISSING or old_value is _MISSING:
            continue
        if _normal(new_value) != _normal(old_value):
            diffs.append(f"{key}: {_short(old_value)} in run.json, {_short(new_value)} now")
    if diffs and not force:
        shown = "; ".join(diffs[:3]) + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
        raise AugmentError(
            f"{path} was made with a different setup ({shown}); use another --out, or pass --force "
            "to write into it anyway"
        )
    return diffs


def stage_ran(run_dir: ArmDir | str | os.PathLike[str], stage: str) -> bool:
    """Whether ``stage`` has written this run folder before (its settings are then binding)."""
    try:
        old = read_run_json(_as_path(run_dir))
    except AugmentError:
        return False
    return old is not None and stage in old.stages


def check_out_in_ray_job(path: str | os.PathLike[str]) -> None:
    """Refuse an ``--out`` that a Ray job would write where the user cannot find it.

    A ``ray job submit`` entrypoint runs in the job's working folder: the ``--working-dir`` upload,
    unpacked under Ray's session dir and deleted with it. A relative ``--out`` (the default
    ``runs/<dataset>`` included) would land there, and the run would report a path that does not
    exist on the user's machine nor anywhere they would look on the head. Outside a Ray job this
    does nothing. Raises AugmentError naming an absolute folder on the head to use instead.
    """
    if RAY_JOB_ENV not in os.environ:
        return
    out = Path(path)
    example = Path.home() / "runs" / (out.name or "run")
    fix = f"pass an absolute --out on the head, e.g. --out {example}, and fetch it with `ray rsync-down`"
    if not out.is_absolute():
        raise AugmentError(
            f"--out {path} is relative inside a Ray job (its working folder is a temporary upload that Ray "
            f"deletes with the session); {fix}"
        )
    if RAY_UPLOAD_DIR in out.resolve().parts:
        raise AugmentError(
            f"--out {path} is inside Ray's temporary upload folder ({RAY_UPLOAD_DIR}/), which Ray deletes "
            f"with the session; {fix}"
        )


def _inner_folders(run: RunDir) -> list[Path]:
    """Every folder a writer of ``run`` writes into: each arm and its tokens/ (history/), shards/,
    manifests/, the caso draws, report/ and train/."""
    out: list[Path] = [run.report, run.path / TRAIN_DIR, run.arm_dir("caso").path / "draws"]
    for name in ARMS:
        arm = run.arm_dir(name)
        out += [arm.path, arm.tokens, arm.tokens / "history", arm.shards, arm.manifests]
    return out


def check_contained(run: str | os.PathLike[str]) -> None:
    """Refuse a run folder whose sub-folders lead outside it (a symlinked ``tokens/`` or arm).

    The write lock guards the run folder; a sub-folder that is a link to another run's would let two
    writers, each holding its own lock, write the same files (issue 24: two ``tokens`` runs both
    exit 0, one class's row lost). So every folder a writer uses must resolve inside the run's real
    path. Raises AugmentError naming the link, its target and the fix; folders not there yet pass.
    """
    root = RunDir(run)
    top = Path(os.path.realpath(root.path))
    for folder in _inner_folders(root):
        if not os.path.lexists(folder):
            continue
        real = Path(os.path.realpath(folder))
        if real != top and top not in real.parents:
            raise AugmentError(
                f"{folder} leads to {real}, outside the run folder {top}; a run's files stay inside it (its "
                "lock guards only them): replace the link with a real folder, or use another --out")


def check_no_file_in_the_way(folders: list[Path]) -> None:
    """Refuse (AugmentError) when one of a run's ``folders`` exists as something other than a
    folder (``touch OUT/tokens``): checked before a stage writes anything, so the refusal leaves
    the run folder as it was."""
    for folder in folders:
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            raise AugmentError(f"{folder} is a file where augment keeps a folder; move it aside and re-run")


def check_creatable(path: str | os.PathLike[str]) -> Path:
    """Make sure the folder ``path`` can be written or created, creating nothing (a command checks
    its output before long work, and a refusal afterwards must leave no empty folder): no name
    component over the file system's limit, and the nearest existing ancestor a writable folder.
    AugmentError naming --out and the reason; returns ``path`` as a Path."""
    path = Path(path)
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise AugmentError(f"--out {path} is not writable (File name too long: a component of "
                               f"{len(os.fsencode(part))} bytes, at most 255); choose a shorter --out")
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        where = f"--out {path}" if probe == path else f"--out {path} cannot be made: {probe}"
        raise AugmentError(f"{where} is a file, not a folder; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise AugmentError(f"--out {path} is not writable (Permission denied on {probe}); choose another --out")
    return path


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Make sure ``--out`` can be written: create it if missing and try a temp file in it.

    Raises AugmentError naming the folder and the reason (a file in the way, no permission,
    read-only filesystem). Returns the folder as a Path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AugmentError(f"--out {path} is a file, not a folder; choose another --out")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = temp_path_for(path / ".write-check")
        with open(probe, "wb") as f:
            f.write(b"ok")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise AugmentError(f"--out {path} is not writable ({reason}); choose another --out") from None
    return path
