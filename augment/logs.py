"""What augment prints, and where: ``-q`` / default / ``-v``, ``TQDM_DISABLE``, ``--log-file``.

Three levels, set once per command by the CLI (:func:`set_verbosity`):

* quiet (``-q``, -1): no progress bar; each stage's summary line, failures and errors;
* default (0): augment's own progress bars too; the libraries (diffusers, transformers,
  huggingface_hub) say nothing but errors: no "Loading pipeline components" bar, no
  ``mean_resizing`` warning, once per Ray actor;
* verbose (``-v``, 1): the libraries' info, warnings and bars as they print them.

``TQDM_DISABLE=1`` hides every bar, augment's included (:func:`progress_disabled`; tqdm reads the
variable only for bars that do not pass ``disable`` themselves). Ray actors are other processes,
perhaps on other machines: the stage wraps each worker factory in :func:`quietly`, so the level
travels with the factory and is applied in the actor before its models load.

``--log-file`` (:func:`recording`) appends what the command prints, stdout and stderr, one
timestamped line each (a progress bar as its last state), to a file: the record of an unattended
run, with the command line and the exit status.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

from augment.errors import AugmentError

__all__ = ["open_log", "progress_disabled", "quiet_libraries", "quietly", "recording", "set_verbosity", "verbosity"]

_level = 0


def set_verbosity(level: int) -> None:
    """-1 quiet, 0 default, 1 verbose (see the module doc); the libraries follow at once."""
    global _level
    _level = max(-1, min(1, level))
    quiet_libraries(_level)


def verbosity() -> int:
    return _level


def progress_disabled(show: bool = True) -> bool:
    """Whether a bar must stay hidden: the caller does not want it, ``-q``, or ``TQDM_DISABLE``."""
    env = os.environ.get("TQDM_DISABLE", "").strip().lower()
    return not show or _level < 0 or env not in ("", "0", "false", "no")


def quiet_libraries(level: int) -> None:
    """Silence (level <= 0) or restore (level > 0) the libraries' logging and progress bars.

    Only libraries already imported are touched, and the environment variables they read at
    import are set for the others (and for processes this one starts, such as a local Ray's)."""
    verbose = level > 0
    for var in ("TRANSFORMERS_VERBOSITY", "DIFFUSERS_VERBOSITY"):
        os.environ[var] = "warning" if verbose else "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "0" if verbose else "1"
    for name in ("transformers", "diffusers"):
        if name in sys.modules:
            lib = __import__(f"{name}.utils.logging", fromlist=["logging"])
            lib.set_verbosity_warning() if verbose else lib.set_verbosity_error()
            lib.enable_progress_bar() if verbose else lib.disable_progress_bar()
    if "huggingface_hub" in sys.modules:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        enable_progress_bars() if verbose else disable_progress_bars()


def quietly(factory: Callable[..., Any], level: int, *, cache: Any = None) -> Any:
    """``factory(cache=cache)`` (a worker factory and its host's model cache) in the worker's process with
    the libraries at ``level`` (picklable with ``functools.partial``: a Ray actor applies the
    driver's level before loading any model)."""
    import diffusers  # noqa: F401 - imported here so that quiet_libraries reaches it before the models load
    import transformers  # noqa: F401

    quiet_libraries(level)
    return factory(cache=cache)


class _Tee:
    """A text stream that writes through to ``stream`` and appends finished lines to ``log``.

    It has no ``buffer``: writers that look for one (click does, to fix an encoding) would write
    past the tee; ``encoding`` and ``errors`` are the terminal's, so click takes it as it is."""

    def __init__(self, stream: TextIO, log: TextIO) -> None:
        self.stream, self.log, self.pending = stream, log, ""

    @property
    def encoding(self) -> str | None:
        return getattr(self.stream, "encoding", None)

    @property
    def errors(self) -> str | None:
        return getattr(self.stream, "errors", None)

    def write(self, text: str) -> int:
        self.stream.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            _log_line(self.log, line)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()
        self.log.flush()

    def finish(self) -> None:
        if self.pending.strip():
            _log_line(self.log, self.pending)
        self.pending = ""

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, ... of the terminal
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self.stream, name)


def _log_line(log: TextIO, line: str) -> None:
    text = line.split("\r")
    last = next((t for t in reversed(text) if t.strip()), "")  # a bar redrawn with \r: its last state
    if last.strip():
        log.write(f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} {last.rstrip()}\n")


def open_log(path: str | os.PathLike[str] | None) -> TextIO | None:
    """``--log-file`` opened for appending (None: not given); AugmentError when it cannot be."""
    if path is None:
        return None
    try:
        return Path(path).open("a", encoding="utf-8")
    except OSError as e:
        raise AugmentError(f"cannot open --log-file {path}: {e.strerror or type(e).__name__}; "
                           "pass a file in a writable folder") from None


@contextlib.contextmanager
def recording(log: TextIO | None, command: str) -> Iterator[Callable[[str], None]]:
    """Within the block, stdout and stderr are also appended to ``log`` (from :func:`open_log`;
    nothing when None), which is closed at the end; the first line names ``command``, the last
    the exit status. Yields a function that writes one more line to the file only (the CLI's
    error line, printed by click after the block)."""
    if log is None:
        yield lambda line: None
        return
    out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
    _log_line(log, f"{command} (pid {os.getpid()} on {socket.gethostname()})")
    sys.stdout, sys.stderr = out, err
    status = "exit 0"
    try:
        yield lambda line: _log_line(log, line)
    except SystemExit as e:
        status = f"exit {e.code if isinstance(e.code, int) else 1}"
        raise
    except BaseException as e:  # click's exceptions carry the exit code they end with
        code = getattr(e, "exit_code", None)
        status = f"exit {code}" if isinstance(code, int) else f"stopped by {type(e).__name__}"
        raise
    finally:
        sys.stdout, sys.stderr = out.stream, err.stream
        out.finish()
        err.finish()
        _log_line(log, status)
        log.close()
