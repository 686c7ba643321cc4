"""Choosing where and in which precision the network runs.

``auto`` means: CUDA if present (bf16 where supported, else fp16), then Apple MPS
(fp16), else CPU with bf16 autocast when the CPU has native bf16 (AVX512-BF16 /
AMX), else fp32. Weights stay fp32; low precision comes from autocast, so
normalisation layers keep fp32 accumulation and the scheduler math stays fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from .errors import BedgenError

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DtypeName = Literal["auto", "fp32", "bf16", "fp16"]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda", "mps")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # the compute dtype of the network (autocast), fp32 = exact

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        name = {v: k for k, v in DTYPES.items()}[self.dtype]
        return f"{self.device.type}/{name}"


def cpu_has_bf16() -> bool:
    """True when oneDNN can run bf16 kernels natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES:
        raise BedgenError(f"unknown device '{name}'; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise BedgenError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise BedgenError("--device mps was asked for but MPS is not available; use --device cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto" and name not in DTYPES:
        raise BedgenError(f"unknown dtype '{name}'; choose one of auto, {', '.join(DTYPES)}")
    if name != "auto":
        if device.type == "cpu" and name == "fp16":
            raise BedgenError("fp16 is not supported on CPU; use --dtype bf16 or fp32")
        return DTYPES[name]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.bfloat16 if cpu_has_bf16() else torch.float32


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    dev = resolve_device(device)
    return Placement(dev, resolve_dtype(dtype, dev))
