"""Backbone weights files with random values, for tests and benchmarks: no download.

LPIPS (AlexNet/VGG16 features) and FID (torch-fidelity's InceptionV3) load their backbones
from files; these write files of the right format whose values are random, which is all
a test of the code path or a speed measurement needs.
"""

from __future__ import annotations

from pathlib import Path

import torch


def save_random_backbone(path: Path, net: str = "alex", seed: int = 0) -> Path:
    """A torchvision-format backbone state dict with random weights (no download)."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.alexnet() if net == "alex" else torchvision.models.vgg16()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.features.state_dict(prefix="features.").items()}, str(path))
    return path


def save_random_inception(path: Path, seed: int = 0) -> Path:
    """An Inception weights file in torch-fidelity's format (a state dict of its
    FeatureExtractorInceptionV3, saved with torch.save) with random weights: no download.

    He-normal convolutions keep activations at a usable scale through the 90-odd layers
    (PyTorch's default init shrinks pool3 features to ~1e-8, where FID is all rounding).
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, strict=True, assign=False):
            return None  # keep the random init; the real class loads the saved file

    empty = path.with_name(path.name + ".empty")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({}, empty)
    state = Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty)).state_dict()
    empty.unlink()
    generator = torch.Generator().manual_seed(seed)
    for name, tensor in state.items():
        if name.endswith("conv.weight"):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * (2.0 / tensor[0].numel()) ** 0.5)
        elif name == "fc.weight":
            tensor.copy_(torch.randn(tensor.shape, generator=generator) / tensor.shape[1] ** 0.5)
    torch.save(state, path)
    return path
