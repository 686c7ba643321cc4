"""The LPIPS v0.1 network (Zhang et al. 2018) as an embedding φ with LPIPS(a, b) = ||φ(a) − φ(b)||².

bedgen.evaluation.neighbours derives φ and searches with it; the VAE baseline's perceptual
loss uses :func:`lpips_network`. The backbone's weights come from a file (or torchvision's
cache) and are identified by SHA-256, so a result can say whether it was computed with the
standard weights.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from ..config.schema import LPIPS_NETS
from ..core.device import resolve_device
from ..core.errors import BedgenError, one_line
from ..core.files import file_sha256
from ..core.images import to_signed

log = logging.getLogger(__name__)

MIN_RESOLUTION = {"alex": 31, "vgg": 16}  # smaller inputs vanish in the backbone's poolings


def check_net(net: str) -> None:
    """Refuse an LPIPS backbone name other than ``LPIPS_NETS``, naming the choices."""
    if net not in LPIPS_NETS:
        raise BedgenError(f"unknown LPIPS network '{net}'; choose one of {', '.join(LPIPS_NETS)}")



@dataclass(frozen=True)
class LayerShape:
    channels: int
    height: int
    width: int

    @property
    def size(self) -> int:
        return self.channels * self.height * self.width


class LpipsEmbedder:
    """φ(x) for LPIPS v0.1 (module docstring): lpips's own modules, the backbone's weights from a file.

    ``weights``: a torchvision ``alexnet()`` / ``vgg16()`` state dict (``features.N.weight``
    keys) as .safetensors or .pth/.pt; None means torchvision's pretrained ImageNet
    weights (downloaded once into the torch hub cache).
    """

    def __init__(self, net: str = "alex", weights: str | os.PathLike[str] | None = None, device: str = "auto"):
        check_net(net)
        self.net = net
        self.weights = Path(weights).expanduser().resolve() if weights is not None else None
        backbone = _read_backbone(net, self.weights)  # first: a bad file fails before building networks
        self.weights_sha256, self.standard = _backbone_identity(net, self.weights)
        model = _lpips_model(net)
        _load_backbone(model.net, backbone, net, self.weights)
        linear = _linear_weights(model)
        self.fingerprint = _fingerprint(net, model.net, linear)
        self.device = resolve_device(device)
        self._scaling = model.scaling_layer.to(self.device).eval()
        self._backbone = model.net.to(self.device).eval()
        self._linear = [w.to(self.device) for w in linear]
        self._shapes: dict[int, list[LayerShape]] = {}

    def layer_shapes(self, resolution: int) -> list[LayerShape]:
        """(C, H, W) of each LPIPS layer for square inputs of ``resolution`` px."""
        if resolution not in self._shapes:
            if resolution < MIN_RESOLUTION[self.net]:
                raise BedgenError(
                    f"resolution {resolution} is too small for the LPIPS {self.net} backbone; "
                    f"use at least {MIN_RESOLUTION[self.net]} px"
                )
            probe = torch.zeros(1, 3, resolution, resolution, device=self.device)
            with torch.no_grad():
                features = self._backbone(self._scaling(probe))
            self._shapes[resolution] = [LayerShape(*f.shape[1:]) for f in features]
        return self._shapes[resolution]

    def dim(self, resolution: int) -> int:
        return sum(shape.size for shape in self.layer_shapes(resolution))

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """uint8 (N, 3, R, R) images (as ImageDataset yields) or floats in [-1, 1] -> float32 (N, D) φ on the CPU."""
        import lpips

        x = _model_input(batch).to(self.device)
        if len(x) == 0:
            return torch.zeros(0, self.dim(x.shape[-1]))
        parts = []
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False), strict_fp32():
            for features, weight in zip(self._backbone(self._scaling(x)), self._linear):
                height, width = features.shape[2:]
                scale = torch.sqrt(weight.view(1, -1, 1, 1) / (height * width))
                parts.append((lpips.normalize_tensor(features) * scale).flatten(1))
        return torch.cat(parts, dim=1).float().cpu()


def _model_input(batch: torch.Tensor) -> torch.Tensor:
    batch = torch.as_tensor(batch)
    if batch.ndim != 4 or batch.shape[1] != 3:
        raise ValueError(f"expected images of shape (N, 3, H, W), got {tuple(batch.shape)}")
    if batch.dtype == torch.uint8:
        return to_signed(batch)
    x = batch.float()
    if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
        raise ValueError("float images must lie in [-1, 1]")
    return x


def _lpips_model(net: str):
    import lpips

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision's 'pretrained=' deprecation, raised inside lpips
        # pretrained=True: the shipped v0.1 linear weights; pnet_rand=True: no backbone download,
        # its weights are loaded next.
        return lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False).eval()


def lpips_network(net: str = "alex", weights: str | os.PathLike[str] | None = None) -> torch.nn.Module:
    """``lpips.LPIPS`` (v0.1 linear weights) with its backbone from ``weights`` (or torchvision's
    download), e.g. as a differentiable perceptual loss; inputs in [-1, 1]."""
    check_net(net)
    path = Path(weights).expanduser().resolve() if weights is not None else None
    backbone = _read_backbone(net, path)
    model = _lpips_model(net)
    _load_backbone(model.net, backbone, net, path)
    return model.eval()


def _linear_weights(model) -> list[torch.Tensor]:
    weights = [lin.model[-1].weight.detach().flatten().clone() for lin in model.lins]
    if any(bool((w < 0).any()) for w in weights):
        # φ needs sqrt(w); LPIPS v0.1 weights are all >= 0, as the distance must be.
        raise BedgenError("the LPIPS linear weights have negative entries; reinstall lpips==0.1.4")
    return weights


def _read_backbone(net: str, path: Path | None) -> dict[str, torch.Tensor]:
    if path is None:
        return _pretrained_backbone(net)
    hint = f"pass --lpips-weights with a torchvision {_TORCHVISION[net]} state dict (.safetensors or .pth)"
    if not path.is_file():
        raise BedgenError(f"LPIPS backbone weights '{path}' do not exist; {hint}")
    suffix = path.suffix.lower()
    if suffix not in (".safetensors", ".pth", ".pt"):
        raise BedgenError(f"LPIPS backbone weights '{path}' are neither .safetensors nor .pth/.pt; {hint}")
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)  # no code runs from a pickle
    except Exception as e:  # any reader failure means the same thing to the user
        raise BedgenError(f"cannot read LPIPS backbone weights {path} ({one_line(e)}); {hint}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BedgenError(f"{path} holds no state dict of tensors; {hint}")
    return _feature_keys(state)


_TORCHVISION = {"alex": "alexnet", "vgg": "vgg16"}


def _feature_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Accept a full model's state dict, ``features.state_dict()`` (``0.weight``) or DataParallel's ``module.``."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("features.") for k in state):
        state = {f"features.{k}": v for k, v in state.items()}
    return state


def _standard_weights(net: str):
    """torchvision's pretrained ImageNet weights for ``net``: the backbone LPIPS v0.1 was calibrated with."""
    import torchvision

    return {
        "alex": torchvision.models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": torchvision.models.VGG16_Weights.IMAGENET1K_V1,
    }[net]


def _backbone_identity(net: str, path: Path | None) -> tuple[str | None, bool]:
    """(SHA-256 of the backbone file, whether it is torchvision's pretrained file).

    torchvision names its file after its SHA-256 (``alexnet-owt-7be5be79.pth``), as torch.hub
    checks on download; None means that file in the torch hub cache, where torchvision put it.
    It is hashed either way: a file already in the cache is not checked again on load.
    """
    url = _standard_weights(net).url
    file = path if path is not None else Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if not file.is_file():
        return None, False
    sha256 = file_sha256(file)
    return sha256, sha256.startswith(torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1]).group(1))


def _pretrained_backbone(net: str) -> dict[str, torch.Tensor]:
    weights = _standard_weights(net)
    try:
        return weights.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except Exception as e:  # offline, proxy, corrupt cache: all need the same fix
        raise BedgenError(
            f"cannot get torchvision's pretrained {_TORCHVISION[net]} weights ({one_line(e)}); on an offline "
            f"machine pass --lpips-weights PATH with torchvision's own file ({weights.url.rsplit('/', 1)[-1]}, from "
            f"~/.cache/torch/hub/checkpoints where it was downloaded; any other {_TORCHVISION[net]} state dict works "
            f"but its verdicts are marked non-standard)"
        ) from None


def _load_backbone(slices: torch.nn.Module, state: dict[str, torch.Tensor], net: str, origin: Path | None) -> None:
    """lpips's ``slice{k}.{i}.weight`` is torchvision's ``features.{i}.weight``."""
    where = str(origin) if origin is not None else f"torchvision's {_TORCHVISION[net]}"
    expected = {}
    for name, parameter in slices.named_parameters():
        _, index, kind = name.split(".")
        expected[f"features.{index}.{kind}"] = parameter
    missing = [key for key in expected if key not in state]
    if missing:
        raise BedgenError(
            f"{where} is not a torchvision {_TORCHVISION[net]} backbone: it lacks {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}{_other_net_hint(state, net)}"
        )
    for key, parameter in expected.items():
        tensor = state[key]
        if tuple(tensor.shape) != tuple(parameter.shape):
            raise BedgenError(
                f"{where}: {key} has shape {tuple(tensor.shape)} but LPIPS {net} needs {tuple(parameter.shape)}"
                f"{_other_net_hint(state, net)}"
            )
        if not torch.isfinite(tensor).all():
            raise BedgenError(f"{where}: {key} holds NaN or infinite values")
        with torch.no_grad():
            parameter.copy_(tensor.to(parameter.dtype))


def _other_net_hint(state: dict[str, torch.Tensor], net: str) -> str:
    first = state.get("features.0.weight")
    kernel = tuple(first.shape[2:]) if first is not None and first.ndim == 4 else None
    other = {(11, 11): "alex", (3, 3): "vgg"}.get(kernel)
    return f" (it looks like {other} weights: use --net {other})" if other and other != net else ""


def _fingerprint(net: str, backbone: torch.nn.Module, linear: list[torch.Tensor]) -> str:
    """Short sha256 of everything φ depends on: an index answers only queries embedded the same way."""
    digest = hashlib.sha256(f"lpips-v0.1/{net}".encode())
    named = [*backbone.state_dict().items(), *((f"lin{i}", w) for i, w in enumerate(linear))]
    for name, tensor in named:
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


_precision_lock = threading.Lock()
_precision_users = 0
_precision_saved: tuple[str, bool] = ("highest", True)


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """No TF32 / reduced-precision shortcuts: distances must match fp32 LPIPS and the error
    bounds assume true fp32 arithmetic. The settings are process-wide, so concurrent searches
    share one change and the last one out restores what was there."""
    global _precision_users, _precision_saved
    with _precision_lock:
        if _precision_users == 0:
            _precision_saved = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
            torch.set_float32_matmul_precision("highest")
            torch.backends.cudnn.allow_tf32 = False
        _precision_users += 1
    try:
        yield
    finally:
        with _precision_lock:
            _precision_users -= 1
            if _precision_users == 0:
                torch.set_float32_matmul_precision(_precision_saved[0])
                torch.backends.cudnn.allow_tf32 = _precision_saved[1]


_embedders: dict[tuple[Any, ...], LpipsEmbedder] = {}
_embedders_lock = threading.Lock()


def shared_embedder(net: str, weights: str | os.PathLike[str] | None = None, device: str = "auto") -> LpipsEmbedder:
    """One LpipsEmbedder per (net, weights file, device) and process: building one takes seconds."""
    path = Path(weights).expanduser().resolve() if weights is not None else None
    stat = path.stat() if path is not None and path.is_file() else None
    # The file's size and mtime are part of the key: new weights saved at the same path are new weights.
    key = (net, str(path) if path else None, (stat.st_size, stat.st_mtime_ns) if stat else None, device)
    with _embedders_lock:
        if key not in _embedders:
            _embedders[key] = LpipsEmbedder(net, path, device)
        return _embedders[key]
