"""The ``vqlogits`` command. Each subcommand is a thin wrapper over an importable function."""

from .parser import build_parser
from .run import main

__all__ = ["build_parser", "main"]
