"""Choosing where and in which precision the network runs.

``auto`` means: CUDA if present (bf16 where supported, else fp16), then Apple MPS
(fp16), else CPU with bf16 autocast when the CPU has native bf16 (AVX512-BF16 /
AMX), else fp32. Weights stay fp32; low precision comes from autocast, so
normalisation layers keep fp32 accumulation and the scheduler math stays fp32.

Every choice carries its reason ("fp32: this CPU has no native bf16 (AVX2 only)"),
which the CLI prints and the app shows: the same preset runs about 3x slower on an
AVX2-only CPU than on one with AVX512-BF16, and users should see why.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .device_names import DEVICES, DTYPE_NAMES
from .errors import BedgenError

DTYPES: dict[str, torch.dtype] = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16)))

# x86 feature flags (as /proc/cpuinfo spells them), best first, and the kind they make a CPU.
CPU_KINDS: tuple[tuple[str, str], ...] = (
    ("amx_bf16", "AMX"),
    ("avx512_bf16", "AVX512-BF16"),
    ("avx512f", "AVX512"),
    ("avx2", "AVX2"),
)
NATIVE_BF16_KINDS = ("AMX", "AVX512-BF16")


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # the compute dtype of the network (autocast), fp32 = exact
    reason: str = field(default="", compare=False)  # why this dtype; not part of where the weights live
    # which engine runs the network (auto|eager|winograd|onnxruntime|openvino; None: BEDGEN_BACKEND, else auto), chosen
    # per call by bedgen.sampling.backends; not part of where the weights live either
    backend: str | None = field(default=None, compare=False)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def describe(self) -> str:
        """``cpu/fp32: this CPU has no native bf16 (AVX2 only)``: the path, and why."""
        name = {v: k for k, v in DTYPES.items()}[self.dtype]
        return f"{self.device.type}/{name}" + (f": {self.reason}" if self.reason else "")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The first CPU's feature flags from /proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):  # x86 / ARM spelling
            return set(value.split())
    return set()


def cpu_kind(flags: Iterable[str] | None = None) -> str:
    """The CPU's vector kind: AMX, AVX512-BF16, AVX512 or AVX2 from its feature flags
    (this machine's when not given); otherwise what torch dispatches to (e.g. DEFAULT on ARM)."""
    flags = cpu_flags() if flags is None else set(flags)
    for flag, kind in CPU_KINDS:
        if flag in flags:
            return kind
    try:
        return torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        return "unknown"


def cpu_has_bf16() -> bool:
    """True when oneDNN can run bf16 kernels natively on this CPU."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_bf16_reason(has_bf16: bool, kind: str) -> str:
    """Why the automatic CPU path is bf16 or fp32, naming the CPU kind."""
    if has_bf16:
        return f"this CPU has native bf16 ({kind})"
    if kind in NATIVE_BF16_KINDS:  # the flags say yes but this torch build's oneDNN cannot use it
        return f"this CPU reports {kind} but torch cannot run bf16 natively on it"
    if kind in dict(CPU_KINDS).values():
        return f"this CPU has no native bf16 ({kind} only)"
    return f"this CPU has no native bf16 ({kind})"


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


def choose_dtype(name: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype for ``--dtype NAME`` on ``device``, and why it was picked."""
    if name != "auto" and name not in DTYPES:
        raise BedgenError(f"unknown dtype '{name}'; choose one of auto, {', '.join(DTYPES)}")
    if name != "auto":
        if device.type == "cpu" and name == "fp16":
            raise BedgenError("fp16 is not supported on CPU; use --dtype bf16 or fp32")
        return DTYPES[name], f"forced by --dtype {name}"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "this GPU supports bf16"
        return torch.float16, "this GPU has no bf16"
    if device.type == "mps":
        return torch.float16, "Apple MPS runs fp16"
    has_bf16 = cpu_has_bf16()
    return (torch.bfloat16 if has_bf16 else torch.float32), cpu_bf16_reason(has_bf16, cpu_kind())


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    return choose_dtype(name, device)[0]


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    dev = resolve_device(device)
    chosen, reason = choose_dtype(dtype, dev)
    return Placement(dev, chosen, reason)


def training_precision(name: str) -> tuple[str, str]:
    """accelerate's ``mixed_precision`` for a config's ``auto|no|bf16|fp16``, and why.

    ``auto``: bf16 where the hardware runs it natively (recent GPUs, AVX512-BF16/AMX CPUs),
    fp16 on older GPUs, else ``no`` (fp32).
    """
    if name != "auto":
        return name, f"forced by mixed_precision={name}"
    if torch.cuda.is_available():
        return ("bf16", "this GPU supports bf16") if torch.cuda.is_bf16_supported() else ("fp16", "this GPU has no bf16")
    has_bf16 = cpu_has_bf16()
    return ("bf16" if has_bf16 else "no"), cpu_bf16_reason(has_bf16, cpu_kind())
