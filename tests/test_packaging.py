"""A wheel install (what `pip install .` and cluster.yaml give every node) behaves like the
editable one: the presets and reference manifests ship inside the package, every module imports,
and the CLI resolves the same settings and gives the same errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

import augment
from augment.resources import list_presets, manifests_dir

ROOT = Path(augment.__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    """packages are listed by hand (mapped folders defeat packages.find): a new sub-package must be added."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "augment").rglob("__init__.py")}
    assert found <= listed, f"add to pyproject.toml [tool.setuptools] packages: {sorted(found - listed)}"
    assert {"augment.pipelines", "augment.manifests"} <= listed


def test_license_file_matches_the_metadata():
    """pyproject declares Apache-2.0 (an SPDX expression) and ships LICENSE, whose text is that licence."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    head = " ".join((ROOT / "LICENSE").read_text().split()[:5])
    assert head == "Apache License Version 2.0, January", head


def test_resources_found_from_the_install():
    assert {"digits", "cub", "inat", "imagenet", "folder"} <= set(list_presets())
    assert (manifests_dir() / "schema" / "manifest.json").is_file()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AUGMENT_PIPELINES")}
    return env | {"HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled"} | extra


def _augment(python: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "augment", *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=300)


def _build_wheel(tmp: Path) -> Path:
    """A wheel built from a copy of this tree (setuptools writes build/ and *.egg-info next to the
    sources), named for the distribution ``augment-synth``, not the unrelated PyPI "augment"."""
    src = tmp / "src"
    for name in ("augment", "pipelines", "manifests"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600,
                           env=_env())
    assert build.returncode == 0, build.stderr[-2000:]
    return next((tmp / "dist").glob("augment_synth-*.whl"))


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> str:
    """A fresh venv with augment installed from a wheel built from this tree. Its dependencies come
    from this interpreter's site-packages through a .pth line (which does not run the editable
    install's finder), so only the wheel provides augment."""
    tmp = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(tmp)
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                              "-q", str(wheel)], capture_output=True, text=True, timeout=600, env=_env())
    assert install.returncode == 0, install.stderr[-2000:]
    where = subprocess.run([python, "-c", "import augment; print(augment.__file__)"], cwd=tmp, env=_env(),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's copy, not this checkout
    return python


@pytest.mark.slow
def test_wheel_has_presets_and_every_module(wheel_python, tmp_path):
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                     for p in (ROOT / "augment").rglob("*.py") if p.name != "__main__.py")
    code = ("import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\n"
            "from augment.resources import list_presets, manifests_dir\n"
            "print(','.join(list_presets()), (manifests_dir() / 'schema' / 'manifest.json').is_file())")
    r = subprocess.run([wheel_python, "-c", code, *modules], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == ",".join(list_presets()) and r.stdout.split()[1] == "True"


@pytest.mark.slow
def test_wheel_resolves_the_same_config(wheel_python, tmp_path):
    wheel = _augment(wheel_python, "config", "--dataset", "digits", cwd=tmp_path)
    editable = _augment(sys.executable, "config", "--dataset", "digits", cwd=tmp_path)
    assert wheel.returncode == 0 and editable.returncode == 0, wheel.stderr + editable.stderr
    assert wheel.stdout == editable.stdout
    assert "grad_steps: all" in wheel.stdout and "step_size: 0.25" in wheel.stdout  # the digits preset, not the defaults


@pytest.mark.slow
def test_wheel_refuses_cub_without_classifier_like_editable(wheel_python, tmp_path):
    wheel = _augment(wheel_python, "tokens", "--dataset", "cub", "--classes", "0", "--max-steps", "1", cwd=tmp_path)
    editable = _augment(sys.executable, "tokens", "--dataset", "cub", "--classes", "0", "--max-steps", "1", cwd=tmp_path)
    assert wheel.returncode == 2 and editable.returncode == 2
    assert wheel.stderr.strip() == editable.stderr.strip()
    # every cheap problem at once, one `Error:` line each: the preset's model is not in this
    # machine's Hugging Face cache, and no classifier is given
    lines = wheel.stderr.strip().splitlines()
    assert all(ln.startswith("Error: ") for ln in lines) and any("no classifier given" in ln for ln in lines), lines
    assert not (tmp_path / "runs").exists()


#: the lowest torch / torchvision the library declares (pyproject.toml)
TORCH_FLOOR = ("torch==2.13.*", "torchvision==0.28.*")


@pytest.mark.slow
def test_wheel_keeps_a_users_torch(tmp_path):
    """A user's venv already holds another torch in range (the lowest, from this machine's disk):
    installing the wheel with its dependencies keeps it (no exact pin forces a reinstall) and
    ``pip check`` is clean. Running on it needs the CUDA build of torch 2.13 (PyPI's torchvision
    0.28 links it), a 2.6 GB download: ``benchmarks/torch_floor.sh`` does that, outside the suite."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert "torch>=2.13" in deps and "torchvision>=0.28" in deps, deps
    wheel = _build_wheel(tmp_path)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    pip = [python, "-m", "pip", "install", "-q"]
    first = subprocess.run([*pip, *TORCH_FLOOR], capture_output=True, text=True, timeout=1200, env=_env())
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([*pip, f"{wheel}[demo]"], capture_output=True, text=True, timeout=1800, env=_env())
    assert second.returncode == 0, second.stderr[-2000:]
    show = subprocess.run([python, "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                          check=True, env=_env()).stdout
    versions = {p["name"].lower(): p["version"] for p in json.loads(show)}
    assert versions["torch"].startswith("2.13.") and versions["torchvision"].startswith("0.28."), versions
    assert versions["augment-synth"] == augment.__version__ and "augment" not in versions, versions
    check = subprocess.run([python, "-m", "pip", "check"], capture_output=True, text=True, env=_env())
    assert check.returncode == 0, check.stdout + check.stderr
