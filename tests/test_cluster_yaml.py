"""cluster.yaml: Ray's own launcher checks pass (what `ray up` does first, offline), and the file
does what a cluster needs: installs augment from this tree (never the unrelated PyPI "augment"),
fails loudly, ships no .venv or runs, and offers GPU nodes that fit the actors' request."""

from __future__ import annotations

import copy
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMMAND_KEYS = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands")
#: what one GPU actor asks for (augment/distributed/placement.py: num_gpus=1, num_cpus=1)
GPU_ACTOR = {"GPU": 1, "CPU": 1}
#: files of a run folder as `ray rsync-down cluster.yaml /home/ubuntu/runs ./` lists them
RUN_FILES = ["runs/cub/run.json", "runs/cub/tokens/0000-black-footed-albatross.safetensors",
             "runs/cub/tokens/tokens.parquet", "runs/cub/shards/synth-000000.tar", "runs/cub/shards/_info.json",
             "runs/cub/manifests/synth-000000.parquet", "runs/cub/baseline/shards/synth-000000.tar",
             "runs/cub/caso/tokens/0000-x.safetensors", "runs/cub/report/eval.json",
             "runs/cub/train/k5-token-seed0/metrics.json"]


@pytest.fixture(scope="module")
def config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _commands(config: dict) -> list[str]:
    return [c for key in COMMAND_KEYS for c in config.get(key) or []]


def _shell_tokens(command: str) -> list[str]:
    """A shell command line as words, with ``;``, ``&&``, ``||``, ``|`` as tokens of their own
    (quoted text, such as a ``python -c`` program, stays one word)."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=";&|")
    lex.whitespace_split = True
    return list(lex)


def _steps(command: str) -> int:
    """How many commands a line chains with ``;`` or ``&&``."""
    tokens = _shell_tokens(command)
    return 1 + sum(t in (";", "&&") for t in tokens[:-1])


def _pip_install_targets(command: str) -> list[str]:
    """The requirement / path arguments of every ``pip install`` in a shell command line."""
    tokens = _shell_tokens(command)
    out: list[str] = []
    for i in range(len(tokens) - 1):
        if tokens[i].endswith("pip") and tokens[i + 1] == "install":
            j = i + 2
            while j < len(tokens) and tokens[j] not in (";", "&&", "||", "|"):
                if tokens[j] in ("-r", "-c", "-i", "--index-url", "--extra-index-url", "-t", "--target"):
                    j += 2
                    continue
                if not tokens[j].startswith("-"):
                    out.append(tokens[j])
                j += 1
    return out


def _rsync_excludes(path: str, patterns: list[str]) -> bool:
    """Whether rsync's ``--exclude PATTERN`` drops ``path`` (or a folder above it): a pattern with a
    leading / matches at the transfer's root, one without at any depth; a trailing / matches folders."""
    parts = path.split("/")
    for pat in patterns:
        anchored, is_dir = pat.startswith("/"), pat.endswith("/")
        name = pat.strip("/")
        depths = [0] if anchored else range(len(parts))
        for d in depths:
            if (is_dir and d == len(parts) - 1) or not fnmatch.fnmatchcase(parts[d], name):
                continue
            return True
    return False


def test_cluster_yaml_is_valid_ray_launcher_config(config):
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)  # raises on a schema error
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config prepends setup_commands to both node kinds: the head keeps boto3 for the autoscaler
    assert prepared["head_setup_commands"][: len(config["setup_commands"])] == config["setup_commands"]
    assert any("boto3" in c for c in prepared["head_setup_commands"])


def test_gpu_actors_fit_worker_nodes_and_not_the_head(config):
    types = config["available_node_types"]
    head = types[config["head_node_type"]]["resources"]
    fits = [name for name, t in types.items()
            if all(t["resources"].get(k, 0) >= v for k, v in GPU_ACTOR.items())]
    assert fits and config["head_node_type"] not in fits, (fits, head)
    for name in fits:  # the autoscaler may start them on demand, and may start enough of them
        assert types[name].get("min_workers", 0) >= 0 and types[name]["max_workers"] >= 1


def test_no_command_hides_a_failure(config):
    for c in _commands(config):
        assert "|| true" not in c and not c.rstrip().endswith("|| :"), c
    multi = [c for c in _commands(config) if _steps(c) > 1]
    assert multi
    for c in multi:  # a command of several steps stops at the first failing one (ray start steps aside)
        assert c.lstrip().startswith("set -euo pipefail") or "ray start" in c, c


def test_installs_augment_from_this_tree_never_from_pypi(config):
    targets = [t for c in _commands(config) for t in _pip_install_targets(c)]
    named_augment = [t for t in targets if re.match(r"^augment\s*(\[.*\])?\s*($|[=<>!~@;])", t)]
    assert not named_augment, f"installs the PyPI project called augment: {named_augment}"
    wheels = [t for t in targets if Path(t.split(")")[0]).name.startswith("augment_synth-") and ".whl" in t]
    assert wheels, targets
    assert any(t.endswith(".whl)[cluster]") for t in wheels), wheels  # Ray's cluster parts for the head
    setup = " ".join(config["setup_commands"])
    assert "pip wheel" in setup and "cp -r ~/augment " in setup  # the wheel is built from the mounted tree


def test_mounts_ship_what_the_wheel_needs_and_no_venv_or_runs(config):
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "augment",
              *pyproject["tool"]["setuptools"]["package-dir"].values()}
    mounted: dict[str, str] = {}
    for remote, local in config["file_mounts"].items():
        rel = (ROOT / local).resolve().relative_to(ROOT).as_posix()
        assert rel != ".", "the checkout's root is mounted: its .venv and runs/ would be hashed and copied"
        assert (ROOT / rel).exists(), local
        assert remote == f"/home/ubuntu/augment/{rel}", (remote, local)  # ~/augment mirrors the checkout
        mounted[rel] = remote
    assert set(mounted) == needed
    for rel in mounted:
        assert rel.split("/")[0] not in (".venv", "runs", "build", "dist", ".git"), rel


def test_rsync_excludes_drop_build_leftovers_but_never_run_outputs(config):
    patterns = config["rsync_exclude"]
    for path in (".venv/bin/python", ".git/HEAD", "augment/__pycache__/x.pyc", "augment.egg-info/PKG-INFO",
                 "build/lib/augment/__init__.py", "dist/augment-0.1-py3-none-any.whl"):
        assert _rsync_excludes(path, patterns), path
    for path in ("augment/__init__.py", "augment/models/embedded/build.py", "pipelines/cub.yaml",
                 "pyproject.toml", *RUN_FILES):
        assert not _rsync_excludes(path, patterns), path  # rsync_exclude applies to `ray rsync-down` too


def test_torch_ranges_match_pyproject(config):
    """The nodes install torch in the library's range, not a machine's pins: a GPU AMI needs its own
    CUDA line, and the range is what augment-synth promises to work with."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ranges = [d for d in deps if d.startswith(("torch>=", "torchvision>="))]
    setup = " ".join(config["setup_commands"])
    assert len(ranges) == 2 and all(f'"{r}"' in setup for r in ranges), ranges
    assert not any(d.split(";")[0].replace(" ", "").count("==") for d in deps), deps  # no exact pin
