"""bedgen: train, sample, explore and evaluate diffusion models of bedrooms.

The public names below load on first use (PEP 562): ``import bedgen`` and ``bedgen --help``
stay fast, and only code that samples pays for torch and diffusers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.torchvision_cpu import prepare_torchvision_import
from .core.version import __version__  # noqa: F401

prepare_torchvision_import()  # lpips, torch-fidelity and tests import torchvision after this

# Public name → the module that defines it.
_PUBLIC = {
    "BedgenConfig": "config.schema",
    "PRESETS": "config.schema",
    "preset": "config.schema",
    "BedgenError": "core.errors",
    "Pipeline": "sampling.pipeline",
    "SampleResult": "sampling.pipeline",
    "load": "sampling.pipeline",
}

__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .config.schema import PRESETS, BedgenConfig, preset
    from .core.errors import BedgenError
    from .sampling.pipeline import Pipeline, SampleResult, load


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'bedgen' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
