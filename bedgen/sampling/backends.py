"""Which engine runs the UNet at inference: PyTorch eager, or OpenVINO when asked for.

``auto`` (the default) is PyTorch eager everywhere: bf16 autocast on CPUs with native bf16
(AVX512-BF16, AMX), fp32 + channels_last on other CPUs, the GPU's autocast on CUDA/MPS.
``BEDGEN_BACKEND=openvino`` or ``Pipeline.sample(backend="openvino")`` runs fp32 CPU
requests on OpenVINO's CPU plugin instead, with outputs equal to eager's up to float
rounding. It is not the default because it did not win clearly where measured
(``bench/unet_backends.py``, bench/RESULTS.md): on a quiet 2-core AVX2 EPYC it was 1.32x
faster than fp32 eager (3.16 s against 4.16 s per ddpm-mid evaluation at 256 px), but on the
same kind of machine shared with other jobs it ranged from 0.65x to 1.36x, and its first use
of a model converts the network for minutes. When OpenVINO is asked for but missing, cannot convert the
network or fails, the call runs on PyTorch eager and the reason is logged once per model.

The converted network is cached on disk, in ``BEDGEN_COMPILED_CACHE`` (default
``~/.cache/bedgen/compiled``), one folder per key: a hash of the weights, the UNet config,
the input's channels and side, the dtype and the OpenVINO version; the batch dimension is
left dynamic, so one conversion serves every batch size. Each folder records the SHA-256 of
its weights file, so a damaged cache is noticed, converted again and replaced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..core.device import Placement
from ..core.errors import BedgenError, one_line
from ..core.files import file_sha256, replace_dir_atomically, write_json

BACKENDS = ("auto", "eager", "openvino")
CACHE_FORMAT = 1  # bump when what a cache folder holds changes
log = logging.getLogger("bedgen.backends")

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_backend(name: str | None) -> str:
    """The backend asked for: ``name``, else ``BEDGEN_BACKEND``, else ``auto``."""
    name = name or os.environ.get("BEDGEN_BACKEND") or "auto"
    if name not in BACKENDS:
        raise BedgenError(f"unknown backend '{name}'; choose one of {', '.join(BACKENDS)}")
    return name


def compiled_cache_dir() -> Path:
    if os.environ.get("BEDGEN_COMPILED_CACHE"):
        return Path(os.environ["BEDGEN_COMPILED_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bedgen" / "compiled"


def choose_backend(name: str | None, placement: Placement) -> tuple[str, str]:
    """(``eager`` or ``openvino``, why) for a request on ``placement``."""
    name = check_backend(name)
    if name in ("auto", "eager"):
        return "eager", "the default: no other engine won clearly (bench/RESULTS.md)" if name == "auto" else "asked for"
    if placement.device.type != "cpu":
        return "eager", f"OpenVINO runs on the CPU only, this request runs on {placement.device.type}"
    if placement.dtype != torch.float32:
        return "eager", "OpenVINO runs fp32 only, this request computes in bf16"
    return "openvino", "asked for"


class OpenVINOEngine:
    """One network's OpenVINO programs: converted once (or read from the disk cache), compiled
    once per batch size. Shared by concurrent requests; each call gets its own infer request,
    so nothing of a request is stored here."""

    def __init__(self, module: torch.nn.Module, forward: Forward, cache_dir: Path | None = None):
        self.module, self.forward = module, forward
        self.cache_dir = cache_dir
        self.converted = 0  # conversions from PyTorch
        self.loaded = 0  # models read from the disk cache
        self._model: tuple[Any, Any] | None = None  # (weights fingerprint, ov.Model)
        self._compiled: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self._said: set[str] = set()

    # --- running ------------------------------------------------------------------------

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """The network's output at (x, t) in float32, or None (logged once) where OpenVINO
        cannot be used and the caller must run PyTorch eager."""
        try:
            compiled = self._program(x)
        except ImportError:
            self.fall_back("openvino is not installed (pip install openvino)")
            return None
        except Exception as e:  # noqa: BLE001 - any failure means: run eager, and say why
            self.fall_back(f"OpenVINO could not prepare the network ({one_line(e)})")
            return None
        request = compiled.create_infer_request()  # per call: concurrent requests share nothing
        timesteps = t.detach().to("cpu", torch.float32).reshape(-1).expand(x.shape[0]).contiguous()
        request.infer({0: x.detach().to("cpu", torch.float32).contiguous().numpy(), 1: timesteps.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy()).to(x.device)

    def fall_back(self, reason: str) -> None:
        with self._lock:
            if reason in self._said:
                return
            self._said.add(reason)
        log.warning("running the UNet on PyTorch eager: %s", reason)

    def _program(self, x: torch.Tensor):
        import openvino as ov  # the package is optional; ImportError means: eager

        fingerprint = self._fingerprint(x)
        with self._lock:  # one conversion at a time; others wait for its result
            if self._model is None or self._model[0] != fingerprint:
                self._model, self._compiled = (fingerprint, self._read_or_convert(ov, x)), {}
            batch = x.shape[0]
            if batch not in self._compiled:
                model = self._model[1].clone()
                model.reshape({0: list(x.shape), 1: [batch]})  # static shapes: the plugin's fastest kernels
                self._compiled[batch] = ov.Core().compile_model(model, "CPU", {
                    "INFERENCE_PRECISION_HINT": "f32",  # never a silent bf16 on AVX512-BF16/AMX
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                })
            return self._compiled[batch]

    def _fingerprint(self, x: torch.Tensor) -> tuple:
        """Cheap identity of the weights and input layout: in-place edits (fine-tuning, EMA
        copies) bump a tensor's version counter, so a stale program is never reused."""
        params = [(p.data_ptr(), p._version) for p in self.module.parameters()]
        return tuple(x.shape[1:]), tuple(params)

    # --- the disk cache -----------------------------------------------------------------

    def _key(self, ov, x: torch.Tensor) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            tensor = tensor.detach().to("cpu")
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        config = getattr(self.module, "config", {})
        digest.update(json.dumps({
            "config": {k: v for k, v in dict(config).items() if not k.startswith("_")},
            "input": list(x.shape[1:]), "dtype": "fp32", "openvino": ov.__version__, "format": CACHE_FORMAT,
        }, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:32]

    def _read_or_convert(self, ov, x: torch.Tensor):
        folder = (self.cache_dir or compiled_cache_dir()) / self._key(ov, x)
        if folder.exists():
            try:
                model = self._read(ov, folder)
                self.loaded += 1
                return model
            except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
                log.warning("cached OpenVINO network %s is unusable (%s); converting it again",
                            folder.name, one_line(e))
        model = self._convert(ov, x)
        try:
            replace_dir_atomically(folder, lambda tmp: self._write(ov, model, tmp))
        except OSError as e:  # a read-only or full disk costs the next start a conversion, nothing else
            log.warning("could not cache the OpenVINO network in %s (%s)", folder.parent, one_line(e))
        return model

    def _convert(self, ov, x: torch.Tensor):
        example = (x[:1].detach().to("cpu", torch.float32).contiguous(), torch.ones(1))
        with torch.inference_mode():
            model = ov.convert_model(_AsModule(self.module, self.forward), example_input=example,
                                     input=[ov.PartialShape([-1, *x.shape[1:]]), ov.PartialShape([-1])])
        self.converted += 1
        return model

    @staticmethod
    def _write(ov, model, folder: Path) -> None:
        folder.mkdir(parents=True)
        ov.save_model(model, str(folder / "unet.xml"), compress_to_fp16=False)  # fp32 weights, as trained
        write_json(folder / "meta.json", {"format": CACHE_FORMAT, "openvino": ov.__version__,
                                          "weights_sha256": file_sha256(folder / "unet.bin")})

    @staticmethod
    def _read(ov, folder: Path):
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("openvino") != ov.__version__:
            raise ValueError(f"written by another version ({meta.get('openvino')}, format {meta.get('format')})")
        if file_sha256(folder / "unet.bin") != meta["weights_sha256"]:
            raise ValueError("its weights file does not match its recorded SHA-256")
        return ov.Core().read_model(str(folder / "unet.xml"))


class _AsModule(torch.nn.Module):
    """The network as a function of tensors, for the converter's tracing (it wants a module
    whose output is a tensor, not diffusers' output dataclass)."""

    def __init__(self, module: torch.nn.Module, forward: Forward):
        super().__init__()
        self.module, self._forward = module, forward

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._forward(x, t)
