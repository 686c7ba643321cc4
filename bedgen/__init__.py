"""bedgen: train, sample, explore and evaluate diffusion models of bedrooms."""

from .core.version import __version__  # noqa: F401

from .core.torchvision_cpu import allow_torchvision_without_ops  # noqa: E402

allow_torchvision_without_ops()  # before anything imports torchvision (lpips, torch-fidelity, tests)

from .config.schema import PRESETS, BedgenConfig, preset  # noqa: E402
from .core.errors import BedgenError  # noqa: E402
from .sampling.pipeline import Pipeline, SampleResult, load  # noqa: E402

__all__ = ["BedgenConfig", "BedgenError", "PRESETS", "Pipeline", "SampleResult", "load", "preset"]
