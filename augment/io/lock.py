"""One writer per run folder: an OS-level lock that dies with its process.

Two processes writing the same run folder both do all the work and then trip over each other's
temp files (issue 13, defect 6). Every command that writes a run folder takes this lock first;
readers (``verify``, ``show``, ``eval``) never need it.

The lock is ``fcntl.flock`` on the run folder's lock file (:attr:`augment.io.rundir.RunDir.lock_file`).
The kernel releases a flock when the last descriptor of its open file closes, so a process killed
with SIGKILL leaves no stale lock to clean by hand; the file itself stays (deleting it would let a
process that opened the old inode and one that creates a new one both "hold" the lock). Its content
says who holds it (PID, host, command), which the refusal names.

Within one process the lock is re-entrant (``build`` runs several stages, each of which takes it),
and :func:`keep_lock` lets a command hold it across its stages instead of releasing it in between.
``flock`` is per open file, so two ``open()`` of the same lock file in one process would conflict
with each other; the re-entrancy is therefore kept here, by folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from augment.errors import AugmentError
from augment.io.rundir import RunDir

__all__ = ["check_in_place", "enclosing_run", "holder", "is_locked", "keep_lock", "run_lock"]


@dataclass
class _Held:
    fd: int
    count: int = 0
    #: the path the lock was taken through, to notice the folder moving away from it (check_in_place)
    path: str = ""


#: locks this process holds, by the run folder's real path
_HELD: dict[str, _Held] = {}
#: folders whose lock is to be kept until :func:`keep_lock` ends (even before it is first taken)
_PINS: dict[str, int] = {}


def _key(path: Path) -> str:
    return os.path.realpath(path)


def current_command() -> str:
    """How the user started this process, as ``augment <args>`` when it is the augment CLI."""
    prog = Path(sys.argv[0]).name if sys.argv else ""
    if prog in ("augment", "main.py", "__main__.py"):
        return shlex.join(["augment", *sys.argv[1:]])
    return shlex.join(sys.argv) if sys.argv else "python"


def holder(run: str | os.PathLike[str]) -> dict[str, object] | None:
    """What the lock file of ``run`` says about its (last) holder; None when it says nothing."""
    try:
        data = json.loads(RunDir(run).lock_file.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _refusal(run: Path) -> AugmentError:
    info = holder(run) or {}
    who = f"PID {info.get('pid', '?')} on {info.get('host', '?')}"
    what = f" ({info['command']})" if info.get("command") else ""
    return AugmentError(
        f"{run} is being written by {who}{what}; one writer per run folder: wait until it ends, "
        f"then resume with `{current_command()}` (or use another --out)"
    )


def _acquire(run: Path) -> int:
    """Open and lock ``run``'s lock file without waiting; AugmentError naming the holder if taken."""
    path = RunDir(run).lock_file
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise AugmentError(f"cannot create the lock file {path} ({e.strerror}); choose another --out") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(run) from None
    except OSError as e:  # a filesystem without flock support: say so rather than write unguarded
        os.close(fd)
        raise AugmentError(f"cannot lock {path} ({e.strerror}); put --out on a local filesystem") from None
    info = {"pid": os.getpid(), "host": socket.gethostname(), "command": current_command()}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode("utf-8"), 0)
    return fd


def _release(key: str) -> None:
    held = _HELD[key]
    if held.count == 0 and _PINS.get(key, 0) == 0:
        del _HELD[key]
        os.close(held.fd)  # closing the last descriptor releases the flock


@contextlib.contextmanager
def run_lock(run: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of the run folder ``run`` (which must exist) for the block.

    Raises AugmentError at once, naming the holder's PID, host and command and the command to
    resume with, when another process holds it. Re-entrant within a process.
    """
    path = Path(run)
    key = _key(path)
    if key not in _HELD:
        _HELD[key] = _Held(_acquire(path), path=os.path.abspath(path))
    _HELD[key].count += 1
    try:
        yield
    finally:
        _HELD[key].count -= 1
        _release(key)


@contextlib.contextmanager
def keep_lock(run: str | os.PathLike[str]) -> Iterator[None]:
    """Keep the lock of ``run``, once a stage inside the block has taken it, until the block ends.

    For commands that run several stages (``build``, ``benchmark`` building its arms): nobody can
    slip in between them. Takes nothing itself, so the folder need not exist yet (the first stage
    creates it after its input checks).
    """
    key = _key(Path(run))
    _PINS[key] = _PINS.get(key, 0) + 1
    try:
        yield
    finally:
        _PINS[key] -= 1
        if not _PINS[key]:
            del _PINS[key]
            if key in _HELD:
                _release(key)


def check_in_place(run: str | os.PathLike[str]) -> None:
    """Stop a writer whose run folder moved or vanished since it took the lock (``mv run run2``).

    Paths are joined onto the name the user gave, so a writer that went on would recreate an empty
    ``run/`` and write the rest of the run there, the first half elsewhere, both looking whole
    (issue 24). The lock file the process holds open is the folder's identity: when the file now
    at ``run/.augment.lock`` is not that one (or there is none), raise AugmentError naming both
    places; nothing more is written. Does nothing when this process holds no lock on ``run``.
    """
    held = _HELD.get(_key(Path(run))) or next((h for h in _HELD.values() if h.path == os.path.abspath(run)), None)
    if held is None:
        return
    mine = os.fstat(held.fd)
    try:
        now = os.stat(RunDir(held.path).lock_file)
        same = (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino)
    except OSError:
        same = False
    if not same:
        raise AugmentError(
            f"run folder {held.path} moved or vanished while this command wrote it; stopped, nothing more "
            "written: move it back (or pass its new place as --out) and re-run the same command to resume")


def is_locked(run: str | os.PathLike[str]) -> bool:
    """Whether another process holds the write lock of ``run`` now (readers: ``verify`` says so);
    False when this process holds it (``build`` verifying what it just wrote)."""
    path = RunDir(run).lock_file
    if _key(Path(run)) in _HELD:
        return False
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock taken to test
    return False


def enclosing_run(path: str | os.PathLike[str]) -> Path | None:
    """The run folder that ``path`` lies in (itself included), by real path; None outside any.

    A run folder is known by its lock file (every writing stage leaves one at the run's top); a
    folder written only by an older version, by the outermost ``run.json`` above ``path``. For a
    writer whose ``--out`` may be anywhere (``augment train --out OUT/x``): it must take that
    run's lock like every other writer.
    """
    real = Path(os.path.realpath(path))
    found: Path | None = None
    for folder in (real, *real.parents):
        rd = RunDir(folder)
        if rd.lock_file.exists():
            return folder
        if rd.run_json.exists():
            found = folder
    return found
