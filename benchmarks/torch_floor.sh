#!/usr/bin/env bash
# The lowest torch/torchvision augment-synth declares (pyproject.toml: torch>=2.13, torchvision>=0.28),
# run for real: a fresh venv gets torch 2.13.0 + torchvision 0.28.0 from PyPI (~2.6 GB of wheels, the
# CUDA build: PyPI's torchvision links CUDA torch), then the wheel built from this tree with its
# dependencies, then a one-class build. Prints the versions kept, `pip check` and the build's verdict.
# Not in the test suite (the download); tests/test_packaging.py checks the install half on the
# local CPU wheel. Usage: bash benchmarks/torch_floor.sh [WORKDIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${1:-$(mktemp -d)}"
mkdir -p "$work"
python3.11 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip download --isolated -q -d "$work/wheels" "torch==2.13.0" "torchvision==0.28.0"
"$py" -m pip install --isolated -q --no-index --find-links "$work/wheels" "torch==2.13.0" "torchvision==0.28.0"
"$py" -m pip wheel -q --no-deps -w "$work/dist" "$root"
"$py" -m pip install -q "$(ls "$work"/dist/augment_synth-*.whl)[demo]"
"$py" -c "import torch, torchvision; print('kept: torch', torch.__version__, 'torchvision', torchvision.__version__)"
"$py" -m pip check
cd "$work"
printf 'tokens: {max_steps: 1, batch_size: 2, steps: 3, val_seeds: 2, val_every: 1}\ngenerate: {per_class: 2, steps: 3, shard_size: 2, batch_size: 2}\n' > tiny.yaml
HF_HUB_OFFLINE=1 RAY_AUTH_MODE=disabled "$work/venv/bin/augment" build --classes 0 --config tiny.yaml --workers 0 --out run -q
