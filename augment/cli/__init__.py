"""The ``augment`` command line (``augment.cli:main``); the commands live in the modules beside this."""

from augment.cli.main import cli, main

__all__ = ["cli", "main"]
