"""Shared fixtures: micro models (tests/fixtures/models.py) and fake datasets (tests/fixtures/datasets.py)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.fixtures.models", "tests.fixtures.datasets"]
