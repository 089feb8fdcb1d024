"""The skeleton every stage driver shares (ARCHITECTURE.md, "Stages").

A stage (tokens, generate, caso; benchmark, which writes the run's report from its arms) turns a
config into files of a run folder, one work unit at a time, on a pool of workers (:mod:`augment.distributed`). What differs between stages is
the work; what must not differ is the order of the checks, how a re-run resumes and how a failure
reaches the user. So a stage only describes itself (:class:`Stage`) and :func:`run_stage` runs it,
always in this order:

1. ``preflight()``: every check that needs no run folder (names, models, settings), before any
   folder is created, so a typo costs nothing;
2. ``check_writable``, the run folder's write lock (one writer per folder; held to the end),
   ``check_compatible`` when this stage wrote the arm before (the settings it recorded are then
   binding), then ``run.json`` (which says what is being written, even if the run dies);
3. ``plan(force)``: the units still to do (a re-run skips done ones);
4. the units on the pool, with a progress bar; the driver writes each result (``on_result``);
5. ``finish()`` and ``run.json`` again (it records when the stage last wrote), then a typed
   :class:`StageSummary` whose ``exit_code`` the CLI returns.

Failures follow one policy for every stage: an :class:`AugmentError` stops the run (the user must
fix something); an ``OSError`` while the driver writes (disk full, permissions) stops it with one
line that says how to resume; any other exception, a worker's ``OSError`` included (it happened on
the worker's node, not in the run folder), except running out of memory (one line naming the
settings to lower: the next unit would run out too), fails only its unit, reported as
``"<unit label>: <Type>: <first line>"``, and the other units carry on. A Ray cluster lost during
the stage is the pool's one line (:class:`augment.distributed.Pool`), never a disk problem.

A stage that only reads the arms (``records_run = False``: the benchmark) records nothing in
``run.json`` and is held to no earlier settings; its done units are those its own cache holds
(``plan``), like a shard whose manifest exists.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from tqdm.auto import tqdm

from augment.config import Config, validate
from augment.distributed import Pool, PoolSpec, WorkerFactory, check_pool
from augment.errors import AugmentError
from augment.io.lock import check_in_place, run_lock
from augment.io.rundir import (
    ArmDir,
    RunDir,
    check_compatible,
    check_contained,
    check_no_file_in_the_way,
    check_out_in_ray_job,
    check_writable,
    stage_ran,
    write_run_json,
)
from augment.logs import progress_disabled, quietly, verbosity
from augment.models.device import DeviceInfo, check_device
from augment.progress import LiveBar, Sink

__all__ = ["Plan", "Stage", "StageSummary", "failure_line", "open_pool", "pool_spec", "run_stage"]

U = TypeVar("U")  # one work unit (a class index, a shard plan, ...)
R = TypeVar("R")  # what a worker returns for one unit
S = TypeVar("S", bound="StageSummary")

#: run.json's entry (and each stage's ``settings``) listing the devices its workers computed on:
#: a record, never compared on resume (a run moved to another GPU carries on)
DEVICES_KEY = "devices"

#: a failure line keeps this many characters of the exception's first line
MAX_ERROR_CHARS = 300


@dataclass
class StageSummary:
    """What a stage did: the CLI prints it and exits with :attr:`exit_code`.

    ``done`` counts the units finished by this call, ``skipped`` the ones a previous call had
    finished, ``failed`` holds one line per unit that failed (the others were still done).
    """

    stage: str
    out: Path
    done: int
    skipped: int
    failed: list[str]
    seconds: float

    @property
    def exit_code(self) -> int:
        """1 when some unit failed (a re-run retries only those), else 0."""
        return 1 if self.failed else 0


@dataclass
class Plan(Generic[U]):
    """The units a call has to do; ``work``/``work_done`` size the progress bar when it does not
    count units (generate counts images): by default it counts units, the done ones filled in."""

    todo: list[U]
    skipped: int
    total: int
    work: int | None = None
    work_done: int | None = None


def _out_of_memory(exc: BaseException) -> bool:
    """:func:`augment.models.memory.is_out_of_memory`, imported (with torch) only for a failed unit."""
    from augment.models.memory import is_out_of_memory

    return is_out_of_memory(exc)


def failure_line(exc: BaseException) -> str:
    """``"<Type>: <first line of the message>"``: one line, whatever the exception holds."""
    text = str(exc)
    return f"{type(exc).__name__}: {text.splitlines()[0][:MAX_ERROR_CHARS] if text else ''}"


class Stage(ABC, Generic[U, R, S]):
    """One stage, described for :func:`run_stage`. Subclasses hold the state a run builds up
    (class names, the rows of a table) between ``preflight`` and ``finish``."""

    #: the stage's name in ``run.json`` (``stages``) and in summaries
    name: ClassVar[str]
    #: config keys (dotted) that must match a previous run of this stage in the same arm
    compat_keys: ClassVar[list[str]]
    #: the progress bar's unit
    progress_unit: ClassVar[str] = "class"
    #: False for a stage that writes no arm (it reads them): no run.json entry, no compat check
    records_run: ClassVar[bool] = True

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.cfg_dict = cfg.to_dict()
        #: set by run_stage before worker_factory(): a worker that reports work done inside a unit
        #: (generate: images) calls it with (progress_key(unit), count) and the bar moves at once
        self.progress: Sink | None = None
        #: set by run_stage before finish(): the devices this call's workers resolved (empty: no unit ran)
        self.devices: list[DeviceInfo] = []

    @property
    def run(self) -> RunDir:
        """The run folder (``--out``)."""
        return RunDir(self.cfg.out)

    @property
    @abstractmethod
    def arm(self) -> ArmDir:
        """The arm this stage writes."""

    @property
    def progress_desc(self) -> str:
        return self.name

    @abstractmethod
    def preflight(self) -> None:
        """Every check that needs no run folder; raise AugmentError naming the fix."""

    def run_json_extra(self) -> dict[str, Any]:
        """Entries stored at the top of ``run.json`` (and compared by ``compat_keys``)."""
        return {}

    @abstractmethod
    def plan(self, force: bool) -> Plan[U]:
        """The units to run now; ``force`` redoes done ones."""

    @abstractmethod
    def worker_factory(self) -> WorkerFactory:
        """A picklable zero-argument callable that builds one worker (it crosses to Ray actors)."""

    @abstractmethod
    def on_result(self, unit: U, result: R) -> str | None:
        """Write ``result`` (on the driver); return an error line when the worker reports that
        the unit failed (it then counts as failed), else None."""

    def on_failed(self, unit: U, error: str) -> None:
        """Record a unit whose worker raised (``error`` is :func:`failure_line`); default: nothing."""

    @abstractmethod
    def unit_label(self, unit: U) -> str:
        """How failure lines name the unit (``"shard 3"``)."""

    def write_label(self, unit: U) -> str:
        """What could not be written when writing the unit's result fails (``"shard 3"``)."""
        return self.unit_label(unit)

    def failure_text(self, exc: BaseException) -> str:
        """How a failed unit's exception reads after its label; default :func:`failure_line`."""
        return failure_line(exc)

    def unit_size(self, unit: U) -> int:
        """How far the unit moves the progress bar."""
        return 1

    def progress_key(self, unit: U) -> Any:
        """How the unit's worker names it when it reports work done inside it (:attr:`progress`)."""
        return self.unit_label(unit)

    def progress_postfix(self, unit: U, result: R) -> dict[str, Any]:
        """Shown next to the bar after a unit finished."""
        return {}

    def finish(self) -> None:
        """Files rebuilt once all units ran (before ``run.json`` is rewritten)."""

    @abstractmethod
    def summary(self, **common: Any) -> S:
        """The stage's summary: ``common`` holds :class:`StageSummary`'s fields, the stage adds its own."""


def _write_error(what: str | None, where: ArmDir, exc: OSError) -> AugmentError:
    """The one line for a failed write: what (None: anything), where, why, and how to resume."""
    target = f"{what} in {where}" if what else f"into {where}"
    return AugmentError(f"cannot write {target}: {exc}; free space or fix permissions, "
                        "then re-run the same command to resume")


def pool_spec(cfg: Config) -> PoolSpec:
    """The worker pool the config asks for, for every stage (built here only) (``--workers``, ``--address``, ``--gpus-per-worker``,
    ``threads``: the same torch threads per unit inline and on actors, so the same bytes;
    ``deterministic``: torch's deterministic kernels on every worker)."""
    return PoolSpec(cfg.workers, cfg.address, device=cfg.device, gpus_per_worker=cfg.gpus_per_worker,
                    placement_timeout=cfg.placement_timeout, threads=cfg.threads, deterministic=cfg.deterministic)


def open_pool(cfg: Config) -> Pool:
    """A pool for several stages of one run (``augment build``): Ray joined, actors started and
    models loaded once. Close it (``with open_pool(cfg) as pool:``) when the last stage is done."""
    return Pool(pool_spec(cfg))


def announce_device(info: DeviceInfo) -> None:
    """The one line per command (per pool: ``augment build`` shares one) that says what the units
    compute on, resolved by the workers: ``device: cuda:0 (NVIDIA A10G, 22.5 GB, driver ...), bfloat16``.
    On stderr, so stdout stays the stage's summary; hidden by ``-q``."""
    if verbosity() >= 0:
        tqdm.write(f"device: {info.line()}", file=sys.stderr)


def _preflight(stage: Stage[Any, Any, Any]) -> None:
    """Step 1: every check that needs no run folder (the stage's, then the pool's); nothing is created."""
    validate(stage.cfg)  # a Config built in code gets the checks a resolved one had
    check_out_in_ray_job(stage.run.path)  # before preflight loads models: a wrong --out costs nothing
    check_device(stage.cfg.device, inline=stage.cfg.workers == 0)
    stage.preflight()
    check_pool(pool_spec(stage.cfg))


def _prepare(stage: Stage[Any, Any, Any], force: bool) -> None:
    """Step 2, under the run folder's lock: the folder's checks and ``run.json``."""
    arm, extra = stage.arm, stage.run_json_extra()
    check_no_file_in_the_way([arm.path, arm.tokens, arm.shards, arm.manifests, stage.run.report])
    if not stage.records_run:
        return
    if stage_ran(arm, stage.name):
        check_compatible(arm, stage.cfg_dict, stage.compat_keys, force, extra=extra, stage=stage.name)
    if arm.path != stage.run.path:
        check_writable(arm.path)
    try:
        write_run_json(arm, stage.cfg_dict, stage.name, extra=extra)
    except OSError as e:  # a full disk shows here first: the same one line as any write
        raise _write_error("run.json", arm, e) from None


def run_stage(stage: Stage[U, R, S], force: bool = False, show_progress: bool = True, pool: Pool | None = None) -> S:
    """Run ``stage`` (see the module doc for the order and the failure policy) on ``pool``, or
    on a pool of its own that ends with the stage.

    Everything after the preflight runs under the run folder's write lock (:func:`augment.io.lock.run_lock`):
    a second writer of the same folder is refused at once, naming this process."""
    start = time.perf_counter()
    run = stage.run.path
    # an existing folder is locked before the preflight loads models, so a second writer is refused
    # at once; a new one only after it, so that bad input creates no folder (and a read-only one gets
    # check_writable's message)
    early = run.is_dir() and os.access(run, os.W_OK)
    with run_lock(run) if early else contextlib.nullcontext():
        _preflight(stage)
        check_writable(run)  # the folder must exist to hold its lock file
        with run_lock(run):
            check_contained(run)  # the lock guards the folder: none of its sub-folders may lead elsewhere
            try:
                return _run_locked(stage, force, show_progress, start, pool)
            except KeyboardInterrupt:  # Ctrl-C or SIGTERM (errors.Terminated): leave no empty folder behind
                _remove_empty(stage)
                raise


def _remove_empty(stage: Stage[Any, Any, Any]) -> None:
    """Remove the arm's sub-folders (and the arm's own folder) that hold nothing, after an
    interrupted run: they are made again on resume, and an empty ``baseline/`` must not look like
    an arm that ran."""
    arm = stage.arm
    for folder in (arm.tokens, arm.shards, arm.manifests, *([arm.path] if arm.path != stage.run.path else [])):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only an empty folder goes


def _run_locked(stage: Stage[U, R, S], force: bool, show_progress: bool, start: float, pool: Pool | None) -> S:
    """Steps 2-6 of :func:`run_stage`, the lock held."""
    _prepare(stage, force)
    arm = stage.arm
    plan = stage.plan(force)
    failed: list[str] = []
    work = plan.work if plan.work is not None else plan.total
    bar = tqdm(total=work, initial=plan.work_done if plan.work_done is not None else plan.skipped,
               desc=stage.progress_desc, unit=stage.progress_unit, disable=progress_disabled(show_progress))
    live, on_ray = LiveBar(bar), stage.cfg.workers > 0
    stage.progress = live.sink(on_ray)

    def guarded(unit: U, write: Callable[[], Any]) -> Any:
        check_in_place(stage.run.path)  # a folder moved away mid-run: stop rather than recreate it
        try:
            return write()
        except OSError as e:
            raise _write_error(stage.write_label(unit), arm, e) from None

    def on_result(unit: U, result: R) -> None:
        error = guarded(unit, lambda: stage.on_result(unit, result))
        if error is not None:
            failed.append(f"{stage.unit_label(unit)}: {error}")
        bar.set_postfix(**stage.progress_postfix(unit, result))
        live.finished(stage.progress_key(unit), stage.unit_size(unit))

    def on_error(unit: U, exc: BaseException) -> None:
        if isinstance(exc, AugmentError):
            raise exc
        if _out_of_memory(exc):  # every other unit would run out too: one line naming what to lower
            from augment.models.memory import out_of_memory_error

            raise out_of_memory_error(exc, stage.name, stage.cfg) from None
        error = stage.failure_text(exc)
        failed.append(f"{stage.unit_label(unit)}: {error}")
        guarded(unit, lambda: stage.on_failed(unit, error))
        live.finished(stage.progress_key(unit), stage.unit_size(unit))

    try:
        # the libraries' chatter follows -q/-v in every worker process (augment.logs)
        factory = partial(quietly, stage.worker_factory(), verbosity())
        # a pool of the stage's own is sized for its units (as run_units would) and ends with it
        own = Pool(replace(pool_spec(stage.cfg), workers=min(stage.cfg.workers, len(plan.todo)))) if pool is None else None
        with live.collecting(on_ray), own or contextlib.nullcontext():
            used = own or pool
            assert used is not None
            used.announce = used.announce or announce_device
            used.run(factory, plan.todo, on_result, on_error)
            devices = stage.devices = list(used.stage_devices)
        check_in_place(stage.run.path)
        try:  # only the driver's own writes: an OSError of Ray (ConnectionError) is not a disk problem
            stage.finish()
            if stage.records_run:
                extra = stage.run_json_extra()
                if devices:  # what the workers resolved; a run with no unit to do keeps the record it had
                    extra[DEVICES_KEY] = [d.to_json() for d in devices]
                write_run_json(arm, stage.cfg_dict, stage.name, extra=extra)
        except OSError as e:
            raise _write_error(None, arm, e) from None
    finally:
        bar.close()
    return stage.summary(stage=stage.name, out=arm.path, done=len(plan.todo) - len(failed), skipped=plan.skipped,
                         failed=failed, seconds=time.perf_counter() - start)


