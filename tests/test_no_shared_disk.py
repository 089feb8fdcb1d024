"""A Ray worker node that cannot see the driver's run folder nor the classifier's checkpoint.

The head node has no CPUs (no actor runs there); the only worker node runs inside its own mount
namespace with an empty tmpfs over the run folders' parent and the checkpoint folder, as a GPU node
that shares no disk with the head would be. ``augment build`` must still complete and verify (tokens,
classifier and images travel from the driver), the benchmark must train its cells there, and a model
folder that only the driver has must give one line naming the node (exit 2).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.models import build_micro_classifier

pytestmark = pytest.mark.slow

RAY = str(Path(sys.executable).with_name("ray"))
TINY = """\
tokens:
  max_steps: 2
  steps: 4
  val_seeds: 4
generate:
  steps: 4
train:
  epochs: 1
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_args(temp_dir: str) -> list[str]:
    """Ports of one node's agents: two nodes on one machine must not share them."""
    return ["--block", "--disable-usage-stats", "--temp-dir", temp_dir,
            "--dashboard-agent-listen-port", str(_free_port()), "--dashboard-agent-grpc-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()), "--metrics-export-port", str(_free_port())]


def _unshare_problem(folder: Path) -> str | None:
    """Why a private mount namespace cannot be made here (None: it can)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None:
        return "needs Linux with util-linux's unshare"
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount -t tmpfs tmpfs {folder}"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`unshare -m` + mount is not permitted here (needs root): {probe.stderr.strip()[:120]}"
    return None


@dataclass
class NoSharedDisk:
    address: str
    runs: Path  # the driver writes run folders here; the worker node sees an empty folder
    ckpt: Path  # the classifier checkpoint (and a model folder); the worker node sees an empty folder
    classifier: str
    nodes: list[subprocess.Popen]

    def check_alive(self) -> None:
        """Fail at once (not after a long timeout) when a node died, e.g. killed under memory pressure."""
        dead = [p.args for p in self.nodes if p.poll() is not None]
        assert not dead, f"a Ray node of this test exited: {dead}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NoSharedDisk]:
    from augment.datasets import get_dataset

    base = tmp_path_factory.mktemp("nsd")
    runs, ckpt = base / "runs", base / "ckpt"
    runs.mkdir()
    ckpt.mkdir()
    problem = _unshare_problem(ckpt)
    if problem:
        pytest.skip(problem)
    clf = build_micro_classifier(ckpt / "x.safetensors", get_dataset("digits").class_names)
    # Free ports are found by binding and releasing them, so another process can take one before
    # Ray binds it and a node dies while starting: one more try, on new ports, before failing.
    for attempt in range(2):
        temp_dir = tempfile.mkdtemp(prefix="augray-", dir="/tmp")  # short: Ray's socket paths live under it
        address, procs = _start_nodes(temp_dir, runs, ckpt, clf)
        try:
            _wait_for_worker_cpus(address, procs)
        except (AssertionError, subprocess.TimeoutExpired) as e:
            dead = [p.args[0] if p.args[0] != "unshare" else "worker node" for p in procs if p.poll() is not None]
            _stop_nodes(procs, temp_dir)
            if attempt == 1:
                # Known: late in the full suite on the 2-core CI machine the head node of this
                # hand-started cluster dies before the worker joins (alone, the module passes in
                # ~45 s); the cluster, not augment, did not come up, so say so instead of failing
                pytest.skip(f"the two-node Ray cluster did not come up (dead: {dead or 'none'}; "
                            f"{type(e).__name__}); run tests/test_no_shared_disk.py alone")
            continue
        try:
            yield NoSharedDisk(address, runs, ckpt, f"timm:test_resnet@{clf}", procs)
        finally:
            _stop_nodes(procs, temp_dir)
        return


def _clean_env() -> dict[str, str]:
    """This process's environment without what an in-process Ray left in it (``RAY_*`` variables of
    a session an earlier test started and stopped): the nodes and the probe below belong to their
    own cluster."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k == "RAY_AUTH_MODE"}


def _start_nodes(temp_dir: str, runs: Path, ckpt: Path, clf: Path) -> tuple[str, list[subprocess.Popen]]:
    """A head without CPUs, and the worker node in its own mount namespace with empty tmpfs over
    both folders (checked before it starts)."""
    port = _free_port()
    env = dict(_clean_env(), HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    procs = [subprocess.Popen(
        [RAY, "start", "--head", "--port", str(port), "--num-cpus", "0", "--include-dashboard=false",
         "--ray-client-server-port", str(_free_port()), *_node_args(temp_dir)],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    hide = (f"mount -t tmpfs tmpfs {runs} && mount -t tmpfs tmpfs {ckpt} && "
            f"test -z \"$(ls -A {runs})\" && test -z \"$(ls -A {ckpt})\" && test ! -e {clf} && "
            f"exec {RAY} start --address 127.0.0.1:{port} --num-cpus 2 {' '.join(_node_args(temp_dir))}")
    procs.append(subprocess.Popen(["unshare", "-m", "sh", "-c", hide], env=env, start_new_session=True,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return f"127.0.0.1:{port}", procs


def _stop_nodes(procs: list[subprocess.Popen], temp_dir: str) -> None:
    for p in procs:  # each node is its own process group: every Ray process it started goes with it
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_for_worker_cpus(address: str, procs: list[subprocess.Popen]) -> None:
    probe = ("import ray, sys, time\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
             "for _ in range(120):\n"
             "    if ray.cluster_resources().get('CPU', 0) >= 2: break\n"
             "    time.sleep(1)\n"
             "print(ray.cluster_resources().get('CPU', 0))\n")
    out = subprocess.run([sys.executable, "-c", probe, address], capture_output=True, text=True, timeout=240,
                         env=_clean_env())
    dead = [p.args for p in procs if p.poll() is not None]
    assert out.stdout.strip().endswith("2.0") and not dead, (out.stdout[-300:], out.stderr[-800:], dead)


def _seen_by_the_worker_node(address: str, paths: list[Path]) -> list[bool]:
    """Which of ``paths`` exist for a task on the worker node (the head has no CPU for it)."""
    code = ("import os, ray, sys\nray.init(address=sys.argv[1], logging_level='ERROR')\n"
            "f = ray.remote(num_cpus=1)(lambda ps: [os.path.exists(p) for p in ps])\n"
            "print(ray.get(f.remote(sys.argv[2:])))\n")
    out = subprocess.run([sys.executable, "-c", code, address, *map(str, paths)], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-800:]
    return [x.strip() == "True" for x in out.stdout.strip().splitlines()[-1].strip("[]").split(",")]


def _augment(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(_clean_env(), HF_HUB_OFFLINE="1", RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "augment", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def test_build_and_benchmark_on_a_node_without_the_drivers_disk(cluster: NoSharedDisk, tmp_path: Path):
    cluster.check_alive()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out = cluster.runs / "run"
    build = _augment("build", "--address", cluster.address, "--out", str(out), "--config", str(config),
                     "--classes", "3,8", "--per-class", "2", "--classifier", cluster.classifier, "--workers", "2",
                     cwd=tmp_path)
    assert build.returncode == 0, (build.stdout[-1500:], build.stderr[-3000:])
    assert (out / "tokens" / "0003-three.safetensors").is_file() and list((out / "shards").glob("*.tar"))
    verify = _augment("verify", str(out), cwd=tmp_path)
    assert verify.returncode == 0, verify.stdout[-1500:] + verify.stderr[-1500:]
    # the files were there for the driver all along, and never for the node that did the work
    clf = Path(cluster.classifier.split("@", 1)[1])
    seen = [out / "tokens" / "0003-three.safetensors", out / "shards", clf]
    assert all(p.exists() for p in seen)
    assert _seen_by_the_worker_node(cluster.address, seen) == [False, False, False]
    # the benchmark's cells (real and token arms) train on that node from the images the driver sent
    bench = _augment("benchmark", "--address", cluster.address, "--out", str(out), "--config", str(config),
                     "--classifier", cluster.classifier, "--workers", "1", "--k", "1", "--seeds", "1",
                     "--arm", "real", "--arm", "token", "--no-build", "--epochs", "1", cwd=tmp_path)
    assert bench.returncode == 0, (bench.stdout[-1500:], bench.stderr[-3000:])
    assert (out / "report" / "benchmark.json").is_file()


def test_a_model_folder_missing_on_the_worker_node_is_one_line(cluster: NoSharedDisk, tmp_path: Path):
    from augment.models.backbone import resolve_backbone_path

    cluster.check_alive()
    model = cluster.ckpt / "tiny-digits"  # the driver has it; the worker node's view of ckpt/ is empty
    if not model.exists():
        shutil.copytree(resolve_backbone_path("embedded:tiny-digits"), model)
    out = cluster.runs / "missing-model"
    res = _augment("tokens", "--address", cluster.address, "--out", str(out), "--model", str(model),
                   "--classes", "3", "--classifier", cluster.classifier, "--workers", "1", cwd=tmp_path)
    errors = [line for line in res.stderr.splitlines() if line.startswith("Error:")]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert f"model folder {model} does not exist on node {socket.gethostname()} (" in errors[0]
    assert "must exist at the same place on every node" in errors[0]
