"""Let PyPI's torchvision import beside a CPU-only build of torch.

PyPI's Linux torchvision wheels are built against PyPI's CUDA torch. Installed beside a
CPU-only torch (``torch==X+cpu``, 1 GB instead of 6), their compiled ops
(``torchvision/_C.so``) cannot load, which torchvision tolerates, but its import then
dies registering a fake kernel for an op that was never defined::

    RuntimeError: operator torchvision::nms does not exist

bedgen uses only torchvision's pure-Python parts (the AlexNet/VGG backbones of LPIPS,
weights enums). So when, and only when, the compiled ops cannot load, this declares the
two schemas torchvision registers without checking, and torchvision imports; the ops
themselves stay unavailable (calling ``torchvision.ops.nms`` raises). Where the ops load
(CUDA torch, or CPU torch with a CPU torchvision) it only loads them early.

``import bedgen`` installs a one-shot import hook that runs this just before the first
``import torchvision``, by whichever library (lpips, torch-fidelity, diffusers), so neither
this module nor ``import bedgen`` imports torch itself.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

# The ops torchvision registers fake kernels for without first checking that they exist.
UNCHECKED_SCHEMAS = {
    "nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def torchvision_ops_library() -> Path | None:
    """torchvision's compiled ops (``_C.so``, ``_C_stable.so``, ``_C.pyd``) without importing it; None if absent."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return next((path for path in sorted(folder.glob("_C*")) if path.suffix in (".so", ".pyd")), None)


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs the shim once, when ``torchvision`` is first looked up, then steps aside."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path.remove(self)  # first: the shim itself looks torchvision up
            allow_torchvision_without_ops()
        return None  # the normal finders import it


def prepare_torchvision_import() -> None:
    """Arrange for the shim to run just before torchvision's first import (nothing to do after it)."""
    if "torchvision" in sys.modules or any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _BeforeTorchvision())


def allow_torchvision_without_ops() -> bool:
    """Prepare torchvision's import; True when its compiled ops could not load (and were declared)."""
    import torch

    if torch.version.cuda is not None or "torchvision" in sys.modules:
        return False  # PyPI's torchvision matches a CUDA torch; or it is imported already
    library = torchvision_ops_library()
    if library is None:
        return False
    try:
        torch.ops.load_library(str(library))  # what torchvision does first; loading twice is harmless
        return False
    except (OSError, RuntimeError):  # built against CUDA torch: libtorch_cuda.so is not there
        pass
    for name, schema in UNCHECKED_SCHEMAS.items():
        if not _defined(name):
            torch.library.define(f"torchvision::{name}", schema)
    return True


def _defined(name: str) -> bool:
    import torch

    try:
        getattr(torch.ops.torchvision, name)
        return True
    except (AttributeError, RuntimeError):
        return False
