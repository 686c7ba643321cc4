"""Which engine runs the UNet at inference: PyTorch eager, NNPACK's Winograd convolutions,
ONNX Runtime or OpenVINO.

``auto`` (the default) picks per placement, from ``bench/unet_backends.py`` (bench/RESULTS.md):

- CUDA/MPS: PyTorch eager under the GPU's autocast.
- CPUs with native bf16 (AVX512-BF16, AMX): PyTorch eager under bf16 autocast (3.5x fp32 there).
- AVX2 CPUs, computing in fp32, for networks of at least ``ENGINE_MIN_PARAMETERS`` weights on
  images of at least ``WINOGRAD_MIN_IMAGE`` pixels a side:
  PyTorch eager with each 3x3 convolution on a large feature map computed by NNPACK's Winograd
  transform (``winograd``). Winograd's F(6x6, 3x3) (Lavin & Gray 2016, "Fast Algorithms for
  Convolutional Neural Networks") needs about a quarter of direct convolution's multiplies, so it
  goes under the direct-convolution floor that every other engine sits on. On a quiet 2-core
  AVX2 EPYC one 256 px evaluation took 8.51 s for the consistency model's layout and 2.54 s for
  ddpm-mid, against 12.11 s and 2.89 s on ONNX Runtime and 13.64 s and 3.34 s on eager
  (channels_last), with outputs within 3e-5 of eager's (bench/cpu_defaults.py).
- other CPUs computing in fp32 (AVX512 without bf16, or a PyTorch without NNPACK), and AVX2
  CPUs on smaller images: ONNX
  Runtime, for networks of at least ``ENGINE_MIN_PARAMETERS`` weights (1.37x eager for ddpm-mid
  on the same AVX2 EPYC; OpenVINO 1.30x). Its export takes seconds, not OpenVINO's minutes.

Smaller networks evaluate in milliseconds, where an export or a transform would cost more
than it saves, and stay on eager (fp32 + channels_last).

``BEDGEN_BACKEND`` (or ``Pipeline.sample(backend=...)``) forces one: ``eager``, ``winograd``,
``onnxruntime`` or ``openvino`` (optional: ``pip install openvino``). When an engine is missing,
cannot export the network or fails to prepare it, the call runs on PyTorch eager and the reason
is logged once per model.

Exported networks (ONNX Runtime, OpenVINO) are cached on disk, in ``BEDGEN_COMPILED_CACHE``
(default ``~/.cache/bedgen/compiled``), one folder per key: a hash of the weights, the UNet
config, the input's channels and side, the dtype, the engine and its version; the batch
dimension is left dynamic, so one export serves every batch size. Each folder records the
SHA-256 of its files, so a damaged cache is noticed, exported again and replaced. The Winograd
engine needs no export: it runs the network as it is.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import tempfile
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.nn.modules.utils import _pair
from torch.overrides import TorchFunctionMode

from ..core.device import Placement, cpu_kind
from ..core.errors import BedgenError, one_line
from ..core.files import file_sha256, replace_dir_atomically, write_json

BACKENDS = ("auto", "eager", "winograd", "onnxruntime", "openvino")
CACHE_FORMAT = 2  # bump when what a cache folder holds changes
# auto's engine threshold: ddpm-mid (114 M) gained 1.37x at 256 px; a 16 px test network of a
# few thousand weights runs in milliseconds, less than its export would cost.
ENGINE_MIN_PARAMETERS = 5_000_000
LABELS = {"winograd": "NNPACK Winograd", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
# The CPU kinds where auto picks the Winograd engine: measured faster there (bench/RESULTS.md).
# NNPACK's kernels are AVX2 ones; on AVX512 oneDNN's direct convolutions are twice as wide, and
# which wins there has not been measured, so those CPUs keep ONNX Runtime.
WINOGRAD_KINDS = ("AVX2",)
# A 3x3 convolution goes to NNPACK when both sides of its input are at least this: for ddpm-mid at
# 256 px, routing sides >= 32 or >= 64 was fastest (1.38x / 1.40x eager at batch 1, 1.51x / 1.50x at
# batch 4), >= 16 slower (1.24x / 1.43x) (bench/unet_backends.py --winograd-sides 16 64); one layer
# of 1024 channels on a 16 x 16 map ran slower on NNPACK than on oneDNN.
WINOGRAD_MIN_SIDE = 32
# auto takes the Winograd engine for images of at least this side. ddpm-mid against diffusers' fp32
# eager, batch 1 (bench/unet_backends.py, quiet 2-core AVX2 EPYC): at 256 px Winograd 1.38x, ONNX
# Runtime 1.16x; at 128 px 1.01x and 1.15x; at 64 px 0.85x and 1.29x. On smaller maps NNPACK's
# per-call transforms cost more than the multiplies they save.
WINOGRAD_MIN_IMAGE = 256
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


def choose_backend(name: str | None, placement: Placement, parameters: int | None = None,
                   kind: str | None = None, side: int | None = None) -> tuple[str, str]:
    """(``eager``, ``winograd``, ``onnxruntime`` or ``openvino``, why) for a request on
    ``placement`` with a network of ``parameters`` weights and an input of ``side`` pixels (None:
    unknown, taken as large), on a CPU of ``kind`` (``bedgen.core.device.cpu_kind``; None: this
    machine's)."""
    name = check_backend(name)
    if name == "eager":
        return "eager", "asked for"
    if name == "auto":
        return _auto(placement, parameters, kind or _machine_kind(), side)
    label = LABELS[name]
    if placement.device.type != "cpu":
        return "eager", f"{label} runs on the CPU only, this request runs on {placement.device.type}"
    if placement.dtype != torch.float32:
        return "eager", f"{label} runs fp32 only, this request computes in bf16"
    return name, "asked for"


@functools.cache
def _machine_kind() -> str:
    """This machine's CPU kind, read once: choose_backend runs at every network evaluation, and
    the kind comes from parsing /proc/cpuinfo."""
    return cpu_kind()


def _auto(placement: Placement, parameters: int | None, kind: str, side: int | None) -> tuple[str, str]:
    if placement.device.type != "cpu":
        return "eager", f"auto: PyTorch's autocast on {placement.device.type}"
    if placement.dtype != torch.float32:
        return "eager", "auto: PyTorch's native bf16 autocast on this CPU"
    if parameters is not None and parameters < ENGINE_MIN_PARAMETERS:
        return "eager", (f"auto: a network of {parameters:,} weights evaluates in milliseconds; "
                         "an export would cost more than it saves")
    large_image = side is None or side >= WINOGRAD_MIN_IMAGE
    if kind in WINOGRAD_KINDS and large_image and nnpack_available():
        return "winograd", f"auto: the fastest fp32 path measured on {kind} CPUs (bench/RESULTS.md)"
    return "onnxruntime", "auto: the fastest fp32 CPU engine measured (bench/RESULTS.md)"


def channels_last_weights(placement: Placement, parameters: int | None = None, side: int | None = None) -> bool:
    """The layout of a network's weights on ``placement``'s device: channels_last, which lets
    oneDNN and cuDNN pick their fastest kernels, except where auto runs the network on the
    Winograd engine. NNPACK reads NCHW, and with channels_last weights every other convolution
    would switch the activations to channels_last and each routed one back (ddpm-mid at 256 px on
    a 2-core AVX2 EPYC: 3.14 s with channels_last weights against 2.4 s in NCHW)."""
    return choose_backend(None, placement, parameters, side=side)[0] != "winograd"


def nnpack_available() -> bool:
    """Whether this PyTorch build has NNPACK and it runs on this CPU (it needs AVX2 on x86).
    The check also initialises NNPACK, which its convolution needs before a first call."""
    try:
        return bool(torch.backends.nnpack.is_available())
    except (AttributeError, RuntimeError):
        return False


class Engine:
    """What every engine other than eager shares: a label, and a fall-back said once."""

    library = ""  # the module the engine needs (ImportError: it is not installed)

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._said: set[str] = set()

    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def ready(self) -> bool:
        """Whether the engine ran the last call (for status lines; a fall-back is not the engine)."""
        raise NotImplementedError

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        """The network's output at (x, t) in float32, or None (logged once) where the engine
        cannot be used and the caller must run PyTorch eager."""
        raise NotImplementedError

    def fall_back(self, reason: str) -> None:
        with self._lock:
            if reason in self._said:
                return
            self._said.add(reason)
        log.warning("running the UNet on PyTorch eager: %s", reason)


class WinogradEngine(Engine):
    """PyTorch eager in fp32, except each 3x3 stride-1 convolution on a feature map of at least
    ``min_side`` pixels, which NNPACK computes with the Winograd transform F(6x6, 3x3) (Lavin &
    Gray 2016): it multiplies in the transformed domain, about 4x fewer multiplies than direct
    convolution for a few float roundings more (outputs within 3e-5 of eager for the default
    layouts). Nothing is exported or cached: the convolutions are redirected while the network
    runs, per thread (a torch function mode), so concurrent requests and eager calls of the same
    network are untouched. Weights in channels_last are read through a contiguous copy made once
    per weight version (NNPACK reads NCHW), so in-place edits are seen."""

    library = "nnpack"

    def __init__(self, module: torch.nn.Module, forward: Forward, cache_dir: Path | None = None):
        super().__init__()
        self.forward = forward
        self.min_side = WINOGRAD_MIN_SIDE
        self.routed = 0  # convolutions NNPACK computed, all calls together
        self._last_routed = False
        self._weights: dict[int, tuple] = {}  # id(weight) -> (weakref, (version, address), NCHW copy)

    @property
    def label(self) -> str:
        return LABELS["winograd"]

    @property
    def ready(self) -> bool:
        return self._last_routed

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        if x.device.type != "cpu" or not nnpack_available():
            self.fall_back("NNPACK is not available in this PyTorch build or on this CPU (it needs AVX2)")
            return None
        before = self.routed
        with torch.inference_mode(), _WinogradConvolutions(self):
            out = self.forward(x.detach().to(torch.float32).contiguous(), t)
        self._last_routed = self.routed > before
        return out.float()

    def convolve(self, input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1) -> torch.Tensor | None:
        """``F.conv2d``'s result through NNPACK, or None where it does not apply."""
        if not self._applies(input, weight, stride, padding, dilation, groups):
            return None
        weight, pad = self._nchw(weight), list(_pair(padding))
        images = [torch._nnpack_spatial_convolution(image.unsqueeze(0).contiguous(), weight, bias, pad, [1, 1])
                  for image in input]  # one image at a time: NNPACK's batched path is its slow training one
        self.routed += 1
        return images[0] if len(images) == 1 else torch.cat(images)

    def _applies(self, input, weight, stride, padding, dilation, groups) -> bool:
        return (input.dim() == 4 and input.dtype == torch.float32 and input.device.type == "cpu"
                and weight.dtype == torch.float32 and tuple(weight.shape[2:]) == (3, 3)
                and _pair(stride) == (1, 1) and _pair(dilation) == (1, 1) and groups == 1
                and not isinstance(padding, str) and max(_pair(padding)) < 3
                and min(input.shape[2:]) >= self.min_side)

    def _nchw(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.is_contiguous():
            return weight
        stamp = (weight._version, weight.data_ptr())
        with self._lock:
            held = self._weights.get(id(weight))
            if held is None or held[0]() is not weight or held[1] != stamp:
                if held is None:  # forget the copy with the weight (ids are reused after that)
                    weakref.finalize(weight, self._weights.pop, id(weight), None)
                held = (weakref.ref(weight), stamp, weight.contiguous())
                self._weights[id(weight)] = held
            return held[2]


class _WinogradConvolutions(TorchFunctionMode):
    """While active on this thread, ``F.conv2d`` calls go to the engine first."""

    def __init__(self, engine: WinogradEngine):
        super().__init__()
        self.engine = engine

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func == torch.conv2d:
            out = self.engine.convolve(*args, **kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


class ExportedEngine(Engine):
    """One network exported for an engine: exported once (or read from the disk cache),
    prepared once per batch size where the engine wants static shapes. Shared by concurrent
    requests; each call gets its own inference state, so nothing of a request is stored here.

    Subclasses say how to export, save, load, prepare and run; this class owns when."""

    def __init__(self, module: torch.nn.Module, forward: Forward, cache_dir: Path | None = None):
        super().__init__()
        self.module, self.forward = module, forward
        self.cache_dir = cache_dir
        self.converted = 0  # exports from PyTorch
        self.loaded = 0  # networks read from the disk cache
        self._model: tuple[Any, Any] | None = None  # (weights fingerprint, loaded network)
        self._prepared: dict[int, Any] = {}

    @property
    def label(self) -> str:
        return LABELS[self.library]

    @property
    def ready(self) -> bool:
        """Whether a network is exported and loaded (what the last call ran on, unless it fell back)."""
        return self._model is not None

    # --- running ------------------------------------------------------------------------

    def run(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor | None:
        try:
            program = self._program(x)
        except ImportError:
            self.fall_back(f"{self.library} is not installed (pip install {self.library})")
            return None
        except Exception as e:  # noqa: BLE001 - any failure means: run eager, and say why
            self.fall_back(f"{self.label} could not prepare the network ({one_line(e)})")
            return None
        sample = x.detach().to("cpu", torch.float32).contiguous()
        timesteps = t.detach().to("cpu", torch.float32).reshape(-1).expand(x.shape[0]).contiguous()
        return torch.from_numpy(self._infer(program, sample.numpy(), timesteps.numpy())).to(x.device)

    def _program(self, x: torch.Tensor):
        library = importlib.import_module(self.library)
        fingerprint = self._fingerprint(x)
        with self._lock:  # one export at a time; others wait for its result
            if self._model is None or self._model[0] != fingerprint:
                self._model, self._prepared = (fingerprint, self._read_or_export(library, x)), {}
            batch = x.shape[0]
            if batch not in self._prepared:
                self._prepared[batch] = self._prepare(library, self._model[1], x)
            return self._prepared[batch]

    def _fingerprint(self, x: torch.Tensor) -> tuple:
        """Cheap identity of the weights and input layout: in-place edits (fine-tuning, EMA
        copies) bump a tensor's version counter, so a stale program is never reused."""
        params = [(p.data_ptr(), p._version) for p in self.module.parameters()]
        return tuple(x.shape[1:]), tuple(params)

    # --- the disk cache -----------------------------------------------------------------

    def _key(self, library, x: torch.Tensor) -> str:
        digest = hashlib.sha256()
        for name, tensor in sorted(self.module.state_dict().items()):
            tensor = tensor.detach().to("cpu")
            digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        config = getattr(self.module, "config", {})
        digest.update(json.dumps({
            "config": {k: v for k, v in dict(config).items() if not k.startswith("_")},
            "input": list(x.shape[1:]), "dtype": "fp32", "engine": self.library,
            "version": library.__version__, "format": CACHE_FORMAT,
        }, sort_keys=True, default=str).encode())
        return digest.hexdigest()[:32]

    def _read_or_export(self, library, x: torch.Tensor):
        folder = (self.cache_dir or compiled_cache_dir()) / self._key(library, x)
        if folder.exists():
            try:
                self._check(library, folder)
                model = self._load(library, folder)
                self.loaded += 1
                return model
            except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt, not fatal
                log.warning("cached %s network %s is unusable (%s); exporting it again",
                            self.label, folder.name, one_line(e))
        try:
            replace_dir_atomically(folder, lambda tmp: self._export_into(library, x, tmp))
        except OSError as e:  # a read-only or full disk costs every start an export, nothing else
            log.warning("could not cache the %s network in %s (%s)", self.label, folder.parent, one_line(e))
            with tempfile.TemporaryDirectory() as tmp:
                self._export_into(library, x, Path(tmp) / "network")
                return self._load(library, Path(tmp) / "network")
        return self._load(library, folder)

    def _export_into(self, library, x: torch.Tensor, folder: Path) -> None:
        folder.mkdir(parents=True)
        example = (x[:1].detach().to("cpu", torch.float32).contiguous(), torch.ones(1))
        with torch.inference_mode():
            self._export(library, _AsModule(self.module, self.forward), example, folder)
        self.converted += 1
        files = sorted(p.name for p in folder.iterdir())
        write_json(folder / "meta.json", {"format": CACHE_FORMAT, "engine": self.library,
                                          "version": library.__version__,
                                          "sha256": {name: file_sha256(folder / name) for name in files}})

    def _check(self, library, folder: Path) -> None:
        meta = json.loads((folder / "meta.json").read_text())
        if (meta.get("format"), meta.get("version")) != (CACHE_FORMAT, library.__version__):
            raise ValueError(f"written by another version ({meta.get('version')}, format {meta.get('format')})")
        for name, digest in meta["sha256"].items():
            if file_sha256(folder / name) != digest:
                raise ValueError(f"its file {name} does not match its recorded SHA-256")

    # --- what each engine says ----------------------------------------------------------

    def _export(self, library, network: torch.nn.Module, example: tuple, folder: Path) -> None:
        raise NotImplementedError

    def _load(self, library, folder: Path) -> Any:
        raise NotImplementedError

    def _prepare(self, library, model: Any, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def _infer(self, program: Any, sample, timesteps):
        raise NotImplementedError


class OnnxRuntimeEngine(ExportedEngine):
    """ONNX Runtime's CPU execution provider: one session for every batch size (the batch axis
    is dynamic in the exported graph); a session's ``run`` is safe to call concurrently."""

    library = "onnxruntime"

    def _export(self, library, network, example, folder) -> None:
        axes = {"sample": {0: "batch"}, "timestep": {0: "batch"}, "out": {0: "batch"}}
        # The TorchScript exporter: diffusers' UNets trace with it, and it needs only the onnx package
        # (the newer exporter also wants onnxscript).
        torch.onnx.export(network, example, str(folder / "unet.onnx"), input_names=["sample", "timestep"],
                          output_names=["out"], dynamic_axes=axes, opset_version=17, dynamo=False)

    def _load(self, library, folder):
        options = library.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = library.GraphOptimizationLevel.ORT_ENABLE_ALL
        return library.InferenceSession(str(folder / "unet.onnx"), options, providers=["CPUExecutionProvider"])

    def _prepare(self, library, model, x):
        return model

    def _infer(self, program, sample, timesteps):
        return program.run(None, {"sample": sample, "timestep": timesteps})[0]


class OpenVINOEngine(ExportedEngine):
    """OpenVINO's CPU plugin, compiled per batch size (static shapes: its fastest kernels)."""

    library = "openvino"

    def _export(self, library, network, example, folder) -> None:
        model = library.convert_model(network, example_input=example,
                                      input=[library.PartialShape([-1, *example[0].shape[1:]]),
                                             library.PartialShape([-1])])
        library.save_model(model, str(folder / "unet.xml"), compress_to_fp16=False)  # fp32 weights, as trained

    def _load(self, library, folder):
        return library.Core().read_model(str(folder / "unet.xml"))

    def _prepare(self, library, model, x):
        model = model.clone()
        model.reshape({0: list(x.shape), 1: [x.shape[0]]})
        return library.Core().compile_model(model, "CPU", {
            "INFERENCE_PRECISION_HINT": "f32",  # never a silent bf16 on AVX512-BF16/AMX
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        })

    def _infer(self, program, sample, timesteps):
        request = program.create_infer_request()  # per call: concurrent requests share nothing
        request.infer({0: sample, 1: timesteps})
        return request.get_output_tensor(0).data.copy()


ENGINES: dict[str, type[Engine]] = {"winograd": WinogradEngine, "onnxruntime": OnnxRuntimeEngine,
                                    "openvino": OpenVINOEngine}
EXPORTED = tuple(name for name, engine in ENGINES.items() if issubclass(engine, ExportedEngine))


class _AsModule(torch.nn.Module):
    """The network as a function of tensors, for the converter's tracing (it wants a module
    whose output is a tensor, not diffusers' output dataclass)."""

    def __init__(self, module: torch.nn.Module, forward: Forward):
        super().__init__()
        self.module, self._forward = module, forward

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self._forward(x, t)
