"""One writer per run folder: the lock refuses a second process at once, names the holder, is
re-entrant in one process, and dies with its process (SIGKILL leaves no stale lock)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from augment.errors import AugmentError
from augment.io.lock import holder, keep_lock, run_lock
from augment.io.rundir import RunDir

#: a second process that takes the lock of argv[1], says so, and waits to be killed
HOLD = textwrap.dedent("""
    import sys, time
    from augment.io.lock import run_lock
    with run_lock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(600)
""")


def hold_lock(folder) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_refused_naming_the_holder_then_free_after_sigkill(tmp_path):
    proc = hold_lock(tmp_path)
    try:
        with pytest.raises(AugmentError) as e, run_lock(tmp_path):
            pass
        msg = e.value.message
        assert f"PID {proc.pid}" in msg and socket.gethostname() in msg
        assert "resume with `" in msg and "\n" not in msg
        assert holder(tmp_path)["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    with run_lock(tmp_path):  # the kernel released it with the process: nothing to clean by hand
        assert holder(tmp_path)["pid"] == os.getpid()


def test_reentrant_and_kept_across_stages(tmp_path):
    lock = RunDir(tmp_path).lock_file
    with keep_lock(tmp_path):
        with run_lock(tmp_path), run_lock(tmp_path):  # build: stages inside a command that holds it
            pass
        # the first stage's lock is kept until the command ends: another process is refused meanwhile
        probe = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path)], capture_output=True, text=True,
                               timeout=120, env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
        assert probe.returncode != 0 and "is being written by" in probe.stderr
    proc = hold_lock(tmp_path)  # released once the command ends
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert lock.exists() and lock.stat().st_mode & 0o777 == 0o644 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
