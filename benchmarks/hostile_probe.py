"""Hostile probe: >= 120 trials against the real CLI in families the tests do not cover.

Builds one tiny reference run (issue 24's tiny.yaml, classes 0,1, inline, one thread), copies it
per trial (cp -a) and attacks the copy: odd paths, files corrupted between stages, odd-typed
--set values, a hostile environment, signals at seeded random moments, concurrent commands,
full / read-only file systems (``unshare -m``, needs root). Each trial is HELD (exit 0 with a
correct result, or exit 2 with one ``Error:`` line and nothing lost, or a re-run that completes
and verifies) or DEFECT (traceback, hang, wrong exit code, data lost or mixed, verify passing on
broken data). Trials run one at a time, ``--workers 0 --threads 1``, under ``nice``.

    HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled .venv/bin/python benchmarks/hostile_probe.py \\
        --work /tmp/hostile-probe --json probe.json --md probe.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = (
    "tokens: {max_steps: 2, batch_size: 4, steps: 5, val_seeds: 4, val_every: 1}\n"
    "generate: {per_class: 4, steps: 10, shard_size: 2, batch_size: 4}\n"
)
TIMEOUT = 180
TRIALS: list[dict] = []
W: Path = Path(".")
RNG = random.Random(24)


def env(**over) -> dict:
    e = dict(os.environ)
    e.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    for k, v in over.items():
        if v is None:
            e.pop(k, None)
        else:
            e[k] = v
    return e


def aug_cmd(*args: str) -> list[str]:
    return ["nice", "-n", "10", sys.executable, "-m", "augment", *args]


STAGE = ("--config", "TINY", "--classes", "0,1", "--workers", "0", "--threads", "1", "-q")


def flags(cmd: str) -> list[str]:
    f = [str(W / "tiny.yaml") if a == "TINY" else a for a in STAGE]
    if cmd in ("eval",):
        return [a for a in f if a not in ("--threads", "1")]
    return f


class Res:
    def __init__(self, rc, out, err, secs):
        self.rc, self.out, self.err, self.secs = rc, out, err, secs

    @property
    def tb(self) -> bool:
        return "Traceback" in self.out + self.err

    @property
    def one_line(self) -> bool:
        errs = [ln for ln in self.err.splitlines() if ln.startswith("Error:")]
        return self.rc == 2 and len(errs) == 1 and not self.tb

    def short(self) -> str:
        text = (self.err.strip() or self.out.strip()).splitlines()
        last = text[-1] if text else ""
        return f"rc={self.rc} {last[:150]}"


def run(args: list[str], timeout: int = TIMEOUT, cwd: Path | None = None, **kw) -> Res:
    t = time.time()
    try:
        p = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                           cwd=cwd or W, env=kw.pop("env", None) or env(), errors="replace", **kw)
        return Res(p.returncode, p.stdout, p.stderr, time.time() - t)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Res("TIMEOUT", out, "hang: timed out", time.time() - t)


def aug(*args: str, **kw) -> Res:
    return run(aug_cmd(*args), **kw)


def stage(cmd: str, out: Path | str, *extra: str, **kw) -> Res:
    return aug(cmd, *flags(cmd), "--out", str(out), *extra, **kw)


def verify(path: Path | str, **kw) -> Res:
    return aug("verify", str(path), "-q", **kw)


def temps(path: Path) -> list[str]:
    return [str(p) for p in Path(path).rglob("*.tmp")] if Path(path).exists() else []


def copy(name: str) -> Path:
    dst = W / "t" / name
    if dst.exists() or dst.is_symlink():
        subprocess.run(["rm", "-rf", str(dst)])
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", str(W / "ref"), str(dst)], check=True)
    (dst / ".augment.lock").unlink(missing_ok=True)
    return dst


def trial(family: str, name: str):
    def deco(fn):
        t = time.time()
        try:
            held, note = fn()
        except Exception as e:  # a probe bug is recorded, not hidden
            held, note = None, f"probe error: {type(e).__name__}: {e}"
        rec = {"family": family, "trial": name, "outcome": {True: "HELD", False: "DEFECT", None: "PROBE-ERROR"}[held],
               "note": note, "seconds": round(time.time() - t, 1)}
        TRIALS.append(rec)
        print(f"[{len(TRIALS):3d}] {rec['outcome']:6s} {family} / {name}: {note}", flush=True)
        return fn
    return deco


def held_stage_then_verify(r: Res, run_dir: Path, ok_rcs=(0,)) -> tuple[bool, str]:
    """Exit 0 and a verifying run, or a one-line refusal; no traceback, no temp file."""
    if r.rc == "TIMEOUT":
        return False, "hang"
    if r.tb:
        return False, "traceback: " + r.short()
    left = temps(run_dir)
    if left:
        return False, f"temp files left: {left[:2]}"
    if r.rc in ok_rcs:
        v = verify(run_dir)
        if v.rc != 0:
            return False, f"exit {r.rc} but verify: {v.short()}"
        return True, f"exit {r.rc}, verify ok"
    if r.one_line:
        return True, "refused: " + r.short()
    return False, "unexpected: " + r.short()


# ------------------------------------------------------------------------------------- families


def fam_paths():
    names = {
        "space": "with space/run x",
        "unicode": "ünï cødé/日本語-run",
        "deep-40": "/".join(["d"] * 40) + "/run",
        "dotdot": "a/b/../../c/./run",
        "trailing-slash": "ts/run/",
        "leading-dash": "-run",
        "glob-chars": "g/r*u?n[1]",
        "braces": "b/run{000..001}",
        "percent": "p/run%s%d%%",
        "colon-at": "c/timm:x@run",
        "newline": "n/run\nx",
        "quote": "q/it's \"run\"",
    }
    for key, rel in names.items():
        @trial("odd paths (generate adds samples, then verify)", key)
        def _(rel=rel):
            base = W / "t" / "paths"
            dst = Path(os.path.normpath(os.path.join(base, rel)))
            shutil.rmtree(base, ignore_errors=True)
            dst.parent.mkdir(parents=True, exist_ok=True)
            (base / "a/b").mkdir(parents=True, exist_ok=True)
            subprocess.run(["cp", "-a", str(W / "ref"), str(dst)], check=True)
            (dst / ".augment.lock").unlink(missing_ok=True)
            out = f"./{rel}" if rel.startswith("-") else os.path.join(base, rel)
            r = stage("generate", out, "--per-class", "6", cwd=base)
            return held_stage_then_verify(r, dst)

    @trial("odd paths (generate adds samples, then verify)", "run-is-symlink")
    def _():
        real = copy("symreal")
        link = W / "t" / "symlink-run"
        link.unlink(missing_ok=True)
        link.symlink_to(real)
        r = stage("generate", link, "--per-class", "6")
        return held_stage_then_verify(r, real)

    @trial("odd paths (generate adds samples, then verify)", "out-is-dot")
    def _():
        d = copy("dotrun")
        r = stage("generate", ".", "--per-class", "6", cwd=d)
        return held_stage_then_verify(r, d)

    @trial("odd paths (generate adds samples, then verify)", "train-out-with-colon-at-then-eval-classifier")
    def _():
        d = copy("colontrain")
        r = aug("train", "--synthetic", str(d), "--out", str(d / "tr:x@y"), "--epochs", "1",
                "--threads", "1", "-q", "--config", str(W / "tiny.yaml"))
        if r.tb or r.rc not in (0, 2):
            return False, r.short()
        if r.rc == 2:
            return r.one_line, "refused: " + r.short()
        e = aug("eval", "--out", str(d), "-q", "--config", str(W / "tiny.yaml"), "--classes", "0,1",
                "--eval-classifier", f"timm:test_resnet@{d}/tr:x@y/best.safetensors")
        return (not e.tb and e.rc in (0, 2) and (e.rc == 0 or e.one_line)), "eval with it: " + e.short()


# --------------------------------------------------------------------------- corruption helpers


def _pq():
    import pyarrow.parquet as pq
    return pq


def trunc_half(p: Path):
    b = p.read_bytes()
    p.write_bytes(b[: len(b) // 2])


def garbage_same_size(p: Path):
    p.write_bytes(os.urandom(p.stat().st_size))


def parquet_edit(p: Path, fn):
    pq = _pq()
    t = pq.read_table(p)
    pq.write_table(fn(t), p)


def tar_add_member(p: Path):
    with tarfile.open(p, "a") as tf:
        data = b"hello"
        ti = tarfile.TarInfo("extra.txt")
        ti.size = len(data)
        import io
        tf.addfile(ti, io.BytesIO(data))


def tar_dup_member(p: Path):
    import io
    with tarfile.open(p) as tf:
        m = tf.getmembers()[0]
        data = tf.extractfile(m).read()
    with tarfile.open(p, "a") as tf:
        ti = tarfile.TarInfo(m.name)
        ti.size = len(data)
        tf.addfile(ti, io.BytesIO(data))


def flip_image_byte(p: Path):
    with tarfile.open(p) as tf:
        m = next(m for m in tf.getmembers() if m.name.endswith(".png"))
        off = m.offset_data + m.size // 2
    b = bytearray(p.read_bytes())
    b[off] ^= 0xFF
    p.write_bytes(bytes(b))


def rename_shard(d: Path):
    for sub, ext in (("shards", "tar"), ("manifests", "parquet")):
        (d / sub / f"synth-000003.{ext}").rename(d / sub / f"synth-000007.{ext}")


def hardlink_shard(d: Path):
    (d / "shards/synth-000001.tar").unlink()
    os.link(d / "shards/synth-000000.tar", d / "shards/synth-000001.tar")


def manifests_symlink(d: Path):
    shutil.rmtree(d / "manifests")
    (d / "manifests").symlink_to(d / "baseline/manifests")


def shards_symlink_same(d: Path):
    other = W / "t" / "elsewhere-shards"
    shutil.rmtree(other, ignore_errors=True)
    shutil.move(str(d / "shards"), other)
    (d / "shards").symlink_to(other)


def _tbl_drop(col):
    return lambda t: t.drop([col])


def _tbl_extra(t):
    import pyarrow as pa
    return t.append_column("extra_col", pa.array(["x"] * t.num_rows))


def _tbl_dup(t):
    import pyarrow as pa
    return pa.concat_tables([t, t.slice(0, 1)])


def _tbl_rev(t):
    return t.take(list(range(t.num_rows))[::-1])


CORRUPTIONS = OrderedDict({
    "token-file-truncated": lambda d: trunc_half(d / "tokens/0000-zero.safetensors"),
    "token-file-garbage": lambda d: garbage_same_size(d / "tokens/0000-zero.safetensors"),
    "token-file-deleted": lambda d: (d / "tokens/0001-one.safetensors").unlink(),
    "tokens-parquet-row-removed": lambda d: parquet_edit(d / "tokens/tokens.parquet", lambda t: t.slice(0, 1)),
    "tokens-parquet-row-duplicated": lambda d: parquet_edit(d / "tokens/tokens.parquet", _tbl_dup),
    "tokens-parquet-extra-column": lambda d: parquet_edit(d / "tokens/tokens.parquet", _tbl_extra),
    "tokens-parquet-garbage": lambda d: garbage_same_size(d / "tokens/tokens.parquet"),
    "info-json-deleted": lambda d: (d / "shards/_info.json").unlink(),
    "info-json-garbage": lambda d: (d / "shards/_info.json").write_text("{not json"),
    "info-json-a-list": lambda d: (d / "shards/_info.json").write_text("[1, 2]"),
    "manifest-extra-column": lambda d: parquet_edit(d / "manifests/synth-000000.parquet", _tbl_extra),
    "manifest-column-dropped": lambda d: parquet_edit(d / "manifests/synth-000000.parquet", _tbl_drop("seed")),
    "manifest-row-duplicated": lambda d: parquet_edit(d / "manifests/synth-000001.parquet", _tbl_dup),
    "manifest-rows-reversed": lambda d: parquet_edit(d / "manifests/synth-000001.parquet", _tbl_rev),
    "tar-extra-member": lambda d: tar_add_member(d / "shards/synth-000000.tar"),
    "tar-member-duplicated": lambda d: tar_dup_member(d / "shards/synth-000002.tar"),
    "tar-image-byte-flipped": lambda d: flip_image_byte(d / "shards/synth-000001.tar"),
    "shard-and-manifest-renamed": rename_shard,
    "tar-only-renamed": lambda d: (d / "shards/synth-000002.tar").rename(d / "shards/synth-000009.tar"),
    "shard-hardlinked-over-another": hardlink_shard,
    "manifests-symlinked-to-baseline": manifests_symlink,
    "run-json-deleted": lambda d: (d / "run.json").unlink(),
    "run-json-garbage": lambda d: (d / "run.json").write_text("\x00\x01garbage"),
    "run-json-a-list": lambda d: (d / "run.json").write_text("[]"),
    "baseline-run-json-deleted": lambda d: (d / "baseline/run.json").unlink(),
    "stray-file-in-shards": lambda d: (d / "shards/synth-000000.tar.bak").write_bytes(b"x"),
    "shards-replaced-by-a-file": lambda d: (shutil.rmtree(d / "shards"), (d / "shards").write_text("x")),
})
# corruptions after which verify may pass: nothing the run holds is wrong
HARMLESS = {"stray-file-in-shards", "tokens-parquet-extra-column", "manifest-extra-column",
            "manifest-rows-reversed"}


def fam_verify_corrupt():
    for key, fn in CORRUPTIONS.items():
        @trial("corrupted between stages: verify", key)
        def _(key=key, fn=fn):
            d = copy("vc")
            fn(d)
            v = verify(d)
            if v.rc == "TIMEOUT" or v.tb:
                return False, "traceback/hang: " + v.short()
            if key in HARMLESS:
                return v.rc in (0, 1), f"harmless edit: {v.short()}"
            if v.rc == 0:
                return False, "verify passed on broken data: " + v.short()
            if v.rc not in (1, 2):
                return False, "wrong exit code: " + v.short()
            return True, "named: " + v.short()


# (corruption, command): the command does not read what was corrupted, so exit 0 is right
IRRELEVANT = {("info-json-deleted", "eval"), ("manifest-column-dropped", "train"), ("tar-extra-member", "show")}


def fam_stage_after_corrupt():
    plan = [
        ("token-file-truncated", "generate"), ("token-file-garbage", "generate"),
        ("token-file-deleted", "generate"), ("tokens-parquet-row-removed", "generate"),
        ("tokens-parquet-garbage", "tokens"), ("info-json-garbage", "generate"),
        ("manifest-column-dropped", "generate"), ("tar-extra-member", "generate"),
        ("tar-image-byte-flipped", "generate"), ("shard-and-manifest-renamed", "generate"),
        ("run-json-garbage", "generate"), ("run-json-a-list", "tokens"),
        ("info-json-deleted", "eval"), ("tar-image-byte-flipped", "eval"),
        ("manifest-column-dropped", "train"), ("tar-extra-member", "show"),
        ("manifests-symlinked-to-baseline", "generate"), ("shard-hardlinked-over-another", "generate"),
    ]
    for key, cmd in plan:
        @trial("corrupted between stages: next command", f"{key} -> {cmd}")
        def _(key=key, cmd=cmd):
            d = copy("sc")
            CORRUPTIONS[key](d)
            if cmd == "train":
                r = aug("train", "--synthetic", str(d), "--out", str(W / "t/sc-train"), "--epochs", "1",
                        "--threads", "1", "-q", "--config", str(W / "tiny.yaml"))
            elif cmd == "show":
                r = aug("show", str(d), "-q")
            elif cmd == "eval":
                r = stage("eval", d)
            else:
                r = stage(cmd, d, "--per-class", "6") if cmd == "generate" else stage(cmd, d)
            if r.rc == "TIMEOUT" or r.tb:
                return False, "traceback/hang: " + r.short()
            if r.rc == 2:
                return r.one_line, "refused: " + r.short()
            if r.rc != 0:
                return False, "wrong exit code: " + r.short()
            if (key, cmd) in IRRELEVANT:
                return True, f"{cmd} exit 0: it reads nothing the corruption touched"
            if cmd in ("eval", "show", "train"):
                return False, f"{cmd} exit 0 on a corrupted run: " + r.short()
            v = verify(d)
            return v.rc == 0, f"exit 0 (repaired?), verify: {v.short()}"


# ---------------------------------------------------------------------------------- odd --set


SETS = [
    "generate.per_class=[6]", "generate.per_class=6.0", "generate.per_class=6.5", "generate.per_class=true",
    "generate.steps=1e1", "generate.steps=0x0a", "generate.steps=0o12", "seed=-0", "seed=-0.0",
    "seed=99999999999999999999999", "seed=-1", "generate.guidance_scale=-0.0", "generate.guidance_scale='7'",
    "generate.shard_size=null", "generate.shard_size={a: 1}", "generate.image_format=PNG",
    "generate.image_format=[png]", "generate.negative_prompt=[1, 2]", "generate.negative_prompt=" + "ü" * 3000,
    "generate.prompts=['a {token} {name} \U0001f600']", "generate.batch_size=9223372036854775808",
    "generate.soft_labels=-1", "generate.max_attempts=1e309", "classes=[0, 1]", "dtype=[float32]",
]


def fam_set():
    for s in SETS:
        @trial("odd-typed --set values (generate on a copy)", s[:60])
        def _(s=s):
            d = copy("set")
            before = sorted(p.name for p in (d / "shards").iterdir())
            r = stage("generate", d, "--set", s)
            if r.rc == "TIMEOUT" or r.tb:
                return False, "traceback/hang: " + r.short()
            if r.rc == 2:
                after = sorted(p.name for p in (d / "shards").iterdir())
                return (r.one_line and after == before), "refused: " + r.short()
            if r.rc == 0:
                v = verify(d)
                return v.rc == 0, f"accepted ({r.short()}); verify rc={v.rc}"
            return False, "wrong exit code: " + r.short()


# -------------------------------------------------------------------------------- environment


def fam_env():
    afile = W / "a-file"
    afile.write_text("x")
    cases = [
        ("HOME unset", dict(HOME=None), None),
        ("HOME=/nonexistent", dict(HOME="/nonexistent/h"), None),
        ("TMPDIR=/nonexistent", dict(TMPDIR="/nonexistent/t"), None),
        ("TMPDIR is a file", dict(TMPDIR=str(afile)), None),
        ("XDG_CACHE_HOME is a file", dict(XDG_CACHE_HOME=str(afile)), None),
        ("HF_HOME is a file", dict(HF_HOME=str(afile)), None),
        ("TORCH_HOME is a file", dict(TORCH_HOME=str(afile)), None),
        ("MPLCONFIGDIR is a file", dict(MPLCONFIGDIR=str(afile)), None),
        ("LC_ALL=C + unicode out", dict(LC_ALL="C", LANG="C"), "ü-run"),
        ("PYTHONIOENCODING=ascii + unicode out", dict(PYTHONIOENCODING="ascii"), "日本-run"),
        ("PYTHONWARNINGS=error", dict(PYTHONWARNINGS="error"), None),
        ("COLUMNS=1 TERM=dumb", dict(COLUMNS="1", TERM="dumb"), None),
        ("HF_HUB_OFFLINE unset, no network (unshare -n)", dict(HF_HUB_OFFLINE=None), "NET"),
    ]
    for name, over, special in cases:
        @trial("hostile environment (generate adds samples)", name)
        def _(over=over, special=special):
            d = copy(special if special and special != "NET" else "env")
            args = aug_cmd("generate", *flags("generate"), "--out", str(d), "--per-class", "6")
            if special == "NET":
                args = ["unshare", "-n", *args]
            r = run(args, env=env(**over))
            return held_stage_then_verify(r, d)

    @trial("hostile environment (generate adds samples)", "stdout is /dev/full")
    def _():
        d = copy("devfull")
        with open("/dev/full", "w") as full:
            t = time.time()
            p = subprocess.run(aug_cmd("generate", *flags("generate")[:-1], "--out", str(d), "--per-class", "6"),
                               stdout=full, stderr=subprocess.PIPE, text=True, env=env(), timeout=TIMEOUT)
        r = Res(p.returncode, "", p.stderr, time.time() - t)
        if r.tb:
            return False, "traceback on a full stdout: " + r.short()
        v = verify(d)
        return v.rc == 0 and r.rc in (0, 1, 2, 120), f"{r.short()}; verify rc={v.rc}"

    @trial("hostile environment (generate adds samples)", "stdout closed")
    def _():
        d = copy("closed")
        args = " ".join(f"'{a}'" for a in aug_cmd("generate", *flags("generate")[:-1], "--out", str(d),
                                                  "--per-class", "6"))
        r = run(["bash", "-c", f"{args} >&-"])
        v = verify(d)
        return (not r.tb and v.rc == 0), f"{r.short()}; verify rc={v.rc}"

    @trial("hostile environment (generate adds samples)", "verify piped into head -c1 (SIGPIPE)")
    def _():
        d = copy("pipe")
        args = " ".join(f"'{a}'" for a in aug_cmd("verify", str(d)))
        r = run(["bash", "-c", f"set -o pipefail; {args} | head -c1 >/dev/null"])
        return not r.tb, r.short()

    @trial("hostile environment (generate adds samples)", "cwd deleted")
    def _():
        d = copy("cwdgone")
        args = " ".join(f"'{a}'" for a in aug_cmd("generate", *flags("generate"), "--out", str(d),
                                                  "--per-class", "6"))
        gone = W / "t" / "gone"
        gone.mkdir(exist_ok=True)
        r = run(["bash", "-c", f"cd '{gone}' && rmdir '{gone}' && {args}"])
        return held_stage_then_verify(r, d)

    @trial("hostile environment (generate adds samples)", "ulimit -n 24 (few file descriptors)")
    def _():
        d = copy("fds")
        args = " ".join(f"'{a}'" for a in aug_cmd("generate", *flags("generate"), "--out", str(d),
                                                  "--per-class", "6"))
        r = run(["bash", "-c", f"ulimit -n 24; {args}"])
        return held_stage_then_verify(r, d)

    @trial("hostile environment (generate adds samples)", "ulimit -f 8 (file size, SIGXFSZ) then re-run")
    def _():
        d = copy("fsize")
        args = " ".join(f"'{a}'" for a in aug_cmd("generate", *flags("generate"), "--out", str(d),
                                                  "--per-class", "40"))
        r = run(["bash", "-c", f"ulimit -f 8; {args}"])
        first = r.short()
        if r.tb:
            return False, "traceback under a file-size limit: " + first
        r2 = stage("generate", d, "--per-class", "40")
        ok, note = held_stage_then_verify(r2, d)
        return ok, f"limited: {first}; re-run: {note}"


# ----------------------------------------------------------------------------- signals


def sig_cmd(cmd: str, d: Path) -> list[str]:
    tiny = str(W / "tiny.yaml")
    return {
        "eval": aug_cmd("eval", "--out", str(d), "--config", tiny, "--classes", "0,1", "-q"),
        "train": aug_cmd("train", "--synthetic", str(d), "--out", str(d / "tr"), "--epochs", "4",
                         "--threads", "1", "-q", "--config", tiny),
        "report": aug_cmd("report", str(d), "-q"),
        "show": aug_cmd("show", str(d), "-q"),
        "generate": aug_cmd("generate", *flags("generate"), "--out", str(d), "--per-class", "12"),
        "caso": aug_cmd("caso", *flags("caso"), "--out", str(d)),
    }[cmd]


def fam_signals():
    durations = {"eval": 7.0, "train": 8.0, "report": 5.0, "show": 4.0, "generate": 7.0}
    plan = [(c, s) for c in ("eval", "train", "report", "show") for s in ("INT", "TERM", "KILL")]
    plan += [(c, s) for c in ("generate",) for s in ("INT", "TERM")]
    for cmd, sig in plan:
        for _k in range(2):
            moment = round(RNG.uniform(1.0, durations[cmd]), 2)

            @trial(f"signal at a random moment, then re-run: {cmd}", f"SIG{sig} at {moment}s")
            def _(cmd=cmd, sig=sig, moment=moment):
                d = copy("sig")
                p = subprocess.Popen(sig_cmd(cmd, d), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=env(), cwd=W)
                time.sleep(moment)
                p.send_signal(getattr(signal, f"SIG{sig}"))
                try:
                    out, err = p.communicate(timeout=60)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.communicate()
                    return False, f"hang after SIG{sig}"
                first = Res(p.returncode, out, err, 0)
                notes = [f"killed: {first.short()}"]
                if sig != "KILL" and first.rc != 0:
                    if first.tb:
                        return False, f"traceback on SIG{sig}: " + first.short()
                    errs = [ln for ln in err.splitlines() if ln.startswith("Error:")]
                    if len(errs) > 1:
                        return False, "several Error lines: " + first.short()
                left = temps(d)
                r = run(sig_cmd(cmd, d))
                if r.tb or r.rc != 0:
                    return False, f"re-run after SIG{sig}: {r.short()}; first {notes[0]}"
                left2 = temps(d)
                if left2:
                    return False, f"temp files left after the re-run: {left2[:2]}"
                v = verify(d)
                if v.rc != 0:
                    return False, f"verify after re-run: {v.short()}"
                return True, f"{notes[0]}; temp before re-run: {len(left)}; re-run ok, verify ok"


# -------------------------------------------------------------------------- concurrency


def _bg(args):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(), cwd=W)


def _finish(p) -> Res:
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        return Res("TIMEOUT", out, err, 0)
    return Res(p.returncode, out, err, 0)


def _wait_for(path: Path, timeout=60) -> bool:
    t = time.time()
    while time.time() - t < timeout:
        if path.exists():
            return True
        time.sleep(0.1)
    return False


def fam_concurrency():
    tiny = str(W / "tiny.yaml")

    def with_writer(reader_args_fn, name, expect_reader):
        @trial("concurrent commands on one run", name)
        def _():
            d = copy("conc")
            # a writer long enough to outlive the reader's imports (60 per class: about 25 s)
            p = _bg(aug_cmd("generate", *flags("generate"), "--out", str(d), "--per-class", "60"))
            _wait_for(d / "shards/synth-000010.tar")
            rr = run(reader_args_fn(d))
            if p.poll() is not None:
                raise RuntimeError("the writer ended before the reader did: not concurrent")
            w = _finish(p)
            if w.tb or w.rc != 0:
                return False, f"writer: {w.short()} (reader {rr.short()})"
            if rr.rc == "TIMEOUT" or rr.tb:
                return False, f"reader traceback/hang: {rr.short()}"
            ok, note = expect_reader(rr)
            v = verify(d)
            if v.rc != 0:
                return False, f"verify after both: {v.short()}"
            return ok, note

    with_writer(lambda d: aug_cmd("verify", str(d), "-q"), "verify during generate",
                lambda r: (r.rc != 0 and "writer" in (r.out + r.err),
                           "verify: " + r.short()))
    with_writer(lambda d: aug_cmd("eval", "--out", str(d), "--config", tiny, "--classes", "0,1", "-q"),
                "eval during generate", lambda r: (r.rc == 0 or r.one_line, "eval: " + r.short()))
    with_writer(lambda d: aug_cmd("show", str(d), "-q"), "show during generate",
                lambda r: (r.rc == 0 or r.one_line, "show: " + r.short()))
    with_writer(lambda d: aug_cmd("report", str(d), "-q"), "report during generate",
                lambda r: (r.rc == 0 or r.one_line, "report: " + r.short()))
    with_writer(lambda d: aug_cmd("train", "--synthetic", str(d), "--out", str(W / "t/conc-train"), "--epochs",
                                  "1", "--threads", "1", "-q", "--config", tiny),
                "train --synthetic reading a run being generated",
                lambda r: (r.rc == 0 or r.one_line, "train: " + r.short()))
    with_writer(lambda d: aug_cmd("generate", *flags("generate"), "--out", str(d), "--baseline",
                                  "--per-class", "6"),
                "generate --baseline while the token arm is generated",
                lambda r: (r.one_line, "second writer: " + r.short()))

    @trial("concurrent commands on one run", "two trains into one --out outside any run")
    def _():
        d = copy("conc2")
        out = W / "t" / "tt-out"
        shutil.rmtree(out, ignore_errors=True)
        a = aug_cmd("train", "--synthetic", str(d), "--out", str(out), "--epochs", "3", "--threads", "1", "-q",
                    "--config", tiny)
        p1, p2 = _bg(a), (time.sleep(0.5), _bg(a))[1]
        r1, r2 = _finish(p1), _finish(p2)
        if r1.tb or r2.tb:
            return False, f"traceback: {r1.short()} / {r2.short()}"
        ok = sorted([r1.rc, r2.rc]) == [0, 2] and (r1.one_line or r2.one_line)
        both0 = r1.rc == 0 and r2.rc == 0
        return ok, f"first {r1.short()}; second {r2.short()}" + (" (both wrote the same files)" if both0 else "")

    @trial("concurrent commands on one run", "tokens --force while eval reads")
    def _():
        d = copy("conc3")
        p = _bg(aug_cmd("tokens", *flags("tokens"), "--out", str(d), "--force", "--max-steps", "3"))
        time.sleep(2.5)
        rr = run(aug_cmd("eval", "--out", str(d), "--config", tiny, "--classes", "0,1", "-q"))
        w = _finish(p)
        if rr.tb or w.tb:
            return False, f"traceback: writer {w.short()} reader {rr.short()}"
        v = verify(d)
        note = f"tokens {w.short()}; eval {rr.short()}; verify {v.short()}"
        if w.rc == 2:
            return w.one_line and v.rc == 0, note
        # retrained tokens under existing shards: verify must name the stale arm, not pass
        return v.rc != 0 and w.rc == 0, note

    @trial("concurrent commands on one run", "two runs whose shards/ are one folder (symlink), two generates")
    def _():
        a, b = copy("ca"), copy("cb")
        shutil.rmtree(b / "shards")
        (b / "shards").symlink_to(a / "shards")
        p1 = _bg(aug_cmd("generate", *flags("generate"), "--out", str(a), "--per-class", "8"))
        time.sleep(0.5)
        r2 = run(aug_cmd("generate", *flags("generate"), "--out", str(b), "--per-class", "8", "--seed", "3"))
        r1 = _finish(p1)
        va = verify(a)
        if r1.tb or r2.tb:
            return False, f"traceback: {r1.short()} / {r2.short()}"
        return (r2.rc == 2 and r2.one_line and va.rc == 0), f"a {r1.short()}; b {r2.short()}; verify a rc={va.rc}"


# ------------------------------------------------------------------- full disk, read-only mounts


def ns(script: str, timeout=TIMEOUT) -> Res:
    return run(["unshare", "-m", "bash", "-c", script], timeout=timeout)


def q(args: list[str]) -> str:
    return " ".join("'" + a.replace("'", "'\\''") + "'" for a in args)


def fam_mounts():
    mnt = W / "mnt"
    mnt.mkdir(exist_ok=True)
    tiny = str(W / "tiny.yaml")
    r_in = str(mnt / "r")

    ref_k = int(subprocess.run(["du", "-sk", str(W / "ref")], capture_output=True, text=True).stdout.split()[0])

    def full_disk(name, size, cmd_args, inodes=None, rerun=True, check=None, target=None):
        @trial("real full disk (tmpfs in unshare -m), then room and re-run", name)
        def _():
            opts = f"size={ref_k + size}k" + (f",nr_inodes={inodes}" if inodes else "")
            script = (f"set -u; mount -t tmpfs -o {opts} tmpfs '{mnt}' && cp -a '{W / 'ref'}' '{r_in}' "
                      f"&& rm -f '{r_in}/.augment.lock' || exit 99\n"
                      f"{q(cmd_args)} >'{W}/o1' 2>'{W}/e1'; echo RC1=$?\n"
                      f"find '{mnt}' -name '*.tmp' | head -3 | sed 's/^/TMP1 /'\n"
                      f"mount -o remount,size=64m,nr_inodes=100000 '{mnt}'\n")
            if rerun:
                script += (f"{q(cmd_args)} >'{W}/o2' 2>'{W}/e2'; echo RC2=$?\n"
                           f"{q(aug_cmd('verify', target or r_in, '-q'))} >'{W}/o3' 2>&1; echo RC3=$?\n"
                           f"find '{mnt}' -name '*.tmp' | head -3 | sed 's/^/TMP2 /'\n")
            if check:
                script += check + "\n"
            r = ns(script)
            e1 = (W / "e1").read_text(errors="replace")
            kv = dict(ln.split("=", 1) for ln in r.out.splitlines() if ln.startswith("RC"))
            if "RC1" not in kv:
                raise RuntimeError(f"set-up failed: {r.short()}")
            first = Res(int(kv.get("RC1", -1)), "", e1, 0)
            if first.tb:
                return False, "traceback on a full disk: " + first.short()
            if first.rc not in (0, 2) or (first.rc == 2 and not first.one_line):
                return False, "first run: " + first.short()
            if "TMP2" in r.out:
                return False, "temp files left after the re-run"
            if rerun and (kv.get("RC2") != "0" or kv.get("RC3") != "0"):
                return False, (f"first {first.short()}; re-run rc={kv.get('RC2')} "
                               f"{(W / 'e2').read_text(errors='replace').strip()[-150:]}; verify rc={kv.get('RC3')}")
            if check and "CHECKFAIL" in r.out:
                return False, "check failed: " + r.out.strip()[-200:]
            return True, f"first {first.short()}; re-run ok, verify ok"

    gen = aug_cmd("generate", *flags("generate"), "--out", r_in, "--per-class", "60")
    full_disk("generate --per-class 60, ref + 64k", 64, gen)
    full_disk("generate --per-class 60, ref + 24k", 24, gen)
    full_disk("generate --per-class 60, 40 inodes", 60000, gen, inodes=40)
    full_disk("generate --baseline --per-class 60, ref + 64k", 64,
              aug_cmd("generate", *flags("generate"), "--out", r_in, "--per-class", "60", "--baseline"))
    full_disk("tokens --classes 0-5 (new classes), ref + 12k", 12,
              aug_cmd("tokens", *[a if a != "0,1" else "0-5" for a in flags("tokens")], "--out", r_in))
    full_disk("eval, ref + 8k", 8, aug_cmd("eval", "--out", r_in, "--config", tiny, "--classes", "0,1", "-q"))
    full_disk("report, ref + 8k", 8, aug_cmd("report", r_in, "-q"))
    full_disk("show, ref + 4k", 4, aug_cmd("show", r_in, "-q"))
    full_disk("train --out inside the run, ref + 16k", 16,
              aug_cmd("train", "--synthetic", r_in, "--out", r_in + "/tr", "--epochs", "2", "--threads", "1",
                      "-q", "--config", tiny))
    full_disk("build --classes 0-3 into a new folder, ref + 40k", 40,
              aug_cmd("build", *[a if a != "0,1" else "0-3" for a in flags("build")], "--out", r_in + "-new"),
              target=r_in + "-new")

    def read_only(name, cmd_args, expect):
        @trial("run folder on a read-only bind mount", name)
        def _():
            script = (f"mount --bind '{W / 't' / 'ro'}' '{mnt}' && mount -o remount,bind,ro '{mnt}' || exit 99\n"
                      f"{q(cmd_args)} >'{W}/o1' 2>'{W}/e1'; echo RC1=$?\n")
            copy("ro")
            r = ns(script)
            kv = dict(ln.split("=", 1) for ln in r.out.splitlines() if ln.startswith("RC"))
            if "RC1" not in kv:
                raise RuntimeError(f"set-up failed: {r.short()}")
            res = Res(int(kv.get("RC1", -1)), (W / "o1").read_text(errors="replace"),
                      (W / "e1").read_text(errors="replace"), 0)
            if res.tb:
                return False, "traceback: " + res.short()
            return expect(res), res.short()

    m = str(mnt)
    read_only("verify", aug_cmd("verify", m, "-q"), lambda r: r.rc == 0)
    read_only("generate (already done)", aug_cmd("generate", *flags("generate"), "--out", m),
              lambda r: r.rc == 0 or r.one_line)
    read_only("generate --per-class 6", aug_cmd("generate", *flags("generate"), "--out", m, "--per-class", "6"),
              lambda r: r.one_line)
    read_only("eval", aug_cmd("eval", "--out", m, "--config", tiny, "--classes", "0,1", "-q"), lambda r: r.one_line)
    read_only("show", aug_cmd("show", m, "-q"), lambda r: r.one_line)
    read_only("report", aug_cmd("report", m, "-q"), lambda r: r.one_line)
    read_only("train --synthetic RO --out elsewhere",
              aug_cmd("train", "--synthetic", m, "--out", str(W / "t/ro-train"), "--epochs", "1", "--threads", "1",
                      "-q", "--config", tiny), lambda r: r.rc == 0)
    read_only("tokens (already done)", aug_cmd("tokens", *flags("tokens"), "--out", m),
              lambda r: r.rc == 0 or r.one_line)


# --------------------------------------------------------------------------------------- main

FAMILIES = [fam_paths, fam_verify_corrupt, fam_stage_after_corrupt, fam_set, fam_env, fam_concurrency,
            fam_mounts, fam_signals]


def table(trials: list[dict]) -> str:
    fams: dict[str, list[dict]] = OrderedDict()
    for t in trials:
        fams.setdefault(t["family"], []).append(t)
    lines = ["| family | trials | held | defects | example defect |", "|---|---:|---:|---:|---|"]
    for f, ts in fams.items():
        defects = [t for t in ts if t["outcome"] != "HELD"]
        ex = f"{defects[0]['trial']}: {defects[0]['note']}" if defects else ""
        ex = ex.replace("|", "\\|").replace("\n", " ")[:160]
        lines.append(f"| {f} | {len(ts)} | {len(ts) - len(defects)} | {len(defects)} | {ex} |")
    n = len(trials)
    h = sum(t["outcome"] == "HELD" for t in trials)
    lines.append(f"| **all** | **{n}** | **{h}** | **{n - h}** | |")
    return "\n".join(lines)


def main() -> None:
    global W
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/hostile-probe")
    ap.add_argument("--json", default="hostile_probe.json")
    ap.add_argument("--md", default="hostile_probe.md")
    ap.add_argument("--only", default="", help="comma-separated family function names (fam_paths, ...)")
    a = ap.parse_args()
    W = Path(a.work).resolve()
    if W.exists():
        subprocess.run(["rm", "-rf", str(W)])
    W.mkdir(parents=True)
    (W / "tiny.yaml").write_text(TINY)
    t0 = time.time()
    r = stage("build", W / "ref")
    if r.rc != 0:
        sys.exit(f"reference build failed: {r.short()}\n{r.err}")
    print(f"reference run built in {r.secs:.0f}s", flush=True)
    fams = [f for f in FAMILIES if not a.only or f.__name__ in a.only.split(",")]
    for fam in fams:
        fam()
    md = table(TRIALS)
    wall = time.time() - t0
    load = os.getloadavg()
    Path(a.json).write_text(json.dumps({"wall_s": round(wall), "loadavg_end": load, "trials": TRIALS}, indent=1))
    defects = [t for t in TRIALS if t["outcome"] != "HELD"]
    Path(a.md).write_text(md + "\n\nDefects:\n\n" + "\n".join(
        f"- {t['family']} / {t['trial']}: {t['note']}" for t in defects) + "\n")
    print(md)
    print(f"{len(TRIALS)} trials in {wall:.0f}s, load average at the end {load}")


if __name__ == "__main__":
    main()
