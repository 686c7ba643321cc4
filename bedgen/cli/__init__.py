"""Layer 10: the bedgen command line (``bedgen.cli.main``)."""

from .main import main

__all__ = ["main"]
