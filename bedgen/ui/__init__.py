"""The Gradio app: one module per tab, assembled in :mod:`bedgen.ui.app`."""

from .app import build_app, main
from .settings import AppSettings

__all__ = ["AppSettings", "build_app", "main"]
