"""Issue 24, item 1: the lock guards what is written, not only the folder's name."""

from __future__ import annotations

import os

import pytest

from augment.errors import AugmentError
from augment.io.lock import check_in_place, run_lock
from tests.hostile.conftest import augment
from tests.io.test_lock import hold_lock


def _one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def test_a_symlinked_tokens_folder_leading_to_another_run_is_refused(tiny, tmp_path):
    """``ln -s A/tokens B/tokens``: two tokens runs, each under its own lock, wrote the same table
    (both exit 0, one class's row lost). B is refused before it writes."""
    a, b = tmp_path / "A", tmp_path / "B"
    (a / "tokens").mkdir(parents=True)
    b.mkdir()
    os.symlink(a / "tokens", b / "tokens")
    code, out = augment("tokens", "--classes", "1", "--config", str(tiny), "--workers", "0", "--out", str(b))
    assert code == 2, out
    line = _one_line(out)
    assert "outside the run folder" in line and str(b / "tokens") in line
    assert not list((a / "tokens").iterdir())  # nothing written through the link


def test_train_out_inside_a_run_takes_its_lock(run, tiny):
    """``train --out RUN/x`` while another process writes RUN: refused before any data loads."""
    holder = hold_lock(run)
    try:
        code, out = augment("train", "--synthetic", str(run), "--out", str(run / "mine"), "--config", str(tiny),
                            "--epochs", "1", "--samples-per-epoch", "8", "--real-k", "1")
    finally:
        holder.kill()
        holder.wait()
    assert code == 2, out
    assert "is being written by" in _one_line(out)
    assert not (run / "mine").exists()


def test_train_out_at_the_run_root_takes_its_lock(run, tiny):
    holder = hold_lock(run)
    try:
        code, out = augment("train", "--synthetic", str(run), "--out", str(run), "--config", str(tiny),
                            "--epochs", "1", "--samples-per-epoch", "8", "--real-k", "1")
    finally:
        holder.kill()
        holder.wait()
    assert code == 2 and "is being written by" in _one_line(out)
    assert not (run / "best.safetensors").exists()


def test_check_in_place_notices_a_moved_or_replaced_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        check_in_place(run)  # where it was: fine
        run.rename(tmp_path / "run2")
        with pytest.raises(AugmentError, match="moved or vanished"):
            check_in_place(run)
        run.mkdir()  # a new folder of the same name is not the one locked
        with pytest.raises(AugmentError, match="moved or vanished"):
            check_in_place(run)


def test_a_run_moved_during_generate_stops_and_writes_nothing_elsewhere(run, tiny, monkeypatch):
    """``mv run run2`` after the first shard: the writer used to recreate ``run/`` and write the
    other shards there (both halves passed verify). Now it stops with one line."""
    import augment.generate.runner as runner

    moved = run.parent / "run2"
    real_write = runner.write_shard
    calls = []

    def write_then_move(*args, **kwargs):
        written = real_write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            run.rename(moved)
        return written

    monkeypatch.setattr(runner, "write_shard", write_then_move)
    code, out = augment("generate", "--classes", "0,1", "--config", str(tiny), "--workers", "0", "--out", str(run),
                        "--force")
    assert code == 2, out
    assert "moved or vanished" in out.strip().splitlines()[-1]
    assert len(calls) == 1 and not run.exists()


def test_a_run_moved_during_train_stops_before_the_next_write(run, tiny, monkeypatch):
    """``train`` into its run (``<run>/train/...``): moved after the first checkpoint, it used to
    recreate the folder for metrics.json; now it stops with one line."""
    import augment.downstream.train as train_mod

    moved = run.parent / "run2"
    real_save = train_mod.save_checkpoint

    def save_then_move(*args, **kwargs):
        path = real_save(*args, **kwargs)
        if run.exists():
            run.rename(moved)
        return path

    monkeypatch.setattr(train_mod, "save_checkpoint", save_then_move)
    code, out = augment("train", "--synthetic", str(run), "--config", str(tiny), "--epochs", "1",
                        "--samples-per-epoch", "8", "--real-k", "1")
    assert code == 2, out
    assert "moved or vanished" in out.strip().splitlines()[-1]
    assert not run.exists() and not (moved / "train" / "k1-run-seed0" / "metrics.json").exists()
