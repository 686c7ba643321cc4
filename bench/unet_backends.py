"""CPU inference backends for one UNet evaluation, measured against PyTorch fp32 eager.

    python bench/unet_backends.py [--sizes 64 128 256] [--batches 1 4] [--repeats 3]
                                  [--only NAME ...] [--compile] [--layout ddpm-mid|cd-lsun-256]

Network: the ddpm-mid layout (google/ddpm-bedroom-256) with seeded random weights, at each
requested resolution; or, with --layout cd-lsun-256, the 526 M-parameter UNet of
openai/diffusers-cd_bedroom256_lpips (the app's CPU default; bench/cpu_defaults.py), where the
x̂₀ column is read as if it were an ε-prediction (only its size counts there). For each size and batch, every candidate is built once, warmed up
once, then timed ``--repeats`` times; the table shows the median seconds per evaluation,
the ratio against PyTorch fp32 eager with contiguous tensors (what diffusers'
DDPMPipeline does) measured in the same run, and the difference of its output from that
baseline's output: max and mean |Δ| of the network output (ε units), and the largest
difference of the one-step x̂₀ it implies at t = 500, in uint8 levels (x̂₀ = (x − √(1−ᾱ) ε)/√ᾱ,
Ho et al. 2020 Eq. 15), which is how far a sampled image could move per step.

Candidates that need a missing package say "not installed"; ones that cannot run here say why.
Among them: bedgen's Winograd engine (NNPACK's F(6x6, 3x3) for the 3x3 convolutions on large
maps; --winograd-sides adds runs with other thresholds). torch.compile (Inductor) compiles for
minutes on a small CPU and runs only with --compile;
OpenVINO full int8 (weights and activations) only with --static-int8. Candidates are timed
round-robin (baseline, a, b, ..., baseline, a, b, ...) so a shared machine's load drifts
fall on all of them alike.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import preset  # noqa: E402
from bedgen.core.device import cpu_flags, cpu_has_bf16, cpu_kind  # noqa: E402
from bedgen.models.unet import build_training_scheduler, build_unet  # noqa: E402
from bedgen.sampling.backends import WINOGRAD_MIN_SIDE, WinogradEngine, nnpack_available  # noqa: E402

Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
BASELINE = "torch eager fp32"
STATIC_INT8 = "openvino int8 static (nncf, 16 noise samples)"
WINOGRAD = f"nnpack winograd fp32 (3x3 convs on maps >= {WINOGRAD_MIN_SIDE} px)"
T_PROBE = 500  # the timestep at which the x̂₀ difference is read


class Skip(Exception):
    """A candidate that cannot run here; the message says why."""


def threads() -> int:
    return torch.get_num_threads()


# --- candidates: each takes (unet, x, t) and returns a function of (x, t) ---------------------


def torch_eager(unet, x, t, channels_last=False, dtype=None) -> Run:
    if channels_last:  # on a copy: .to(memory_format=...) edits the module in place, and the others share it
        unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)

    def run(x, t):
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), ctx:
            x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
            return unet(x, t).sample.float()

    return run


def eager_bf16(unet, x, t) -> Run:
    if not cpu_has_bf16():
        raise Skip(f"no native bf16 on this CPU ({cpu_kind()}); emulated bf16 is slower than fp32")
    return torch_eager(unet, x, t, channels_last=True, dtype=torch.bfloat16)


def inductor(unet, x, t) -> Run:
    compiled = torch.compile(copy.deepcopy(unet).to(memory_format=torch.channels_last))

    def run(x, t):
        with torch.inference_mode():
            return compiled(x.contiguous(memory_format=torch.channels_last), t).sample.float()

    return run


def torch_dynamic_int8(unet, x, t) -> Run:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:
        raise Skip(f"torch.ao.quantization missing: {e}") from None
    q = quantize_dynamic(copy.deepcopy(unet), {torch.nn.Linear}, dtype=torch.qint8)
    return torch_eager(q, x, t)


def nnpack_winograd(unet, x, t, min_side: int = WINOGRAD_MIN_SIDE) -> Run:
    """bedgen's Winograd engine: 3x3 convolutions on maps of >= min_side pixels through NNPACK,
    the rest eager fp32; weights in NCHW, as the app lays them out for this engine."""
    if not nnpack_available():
        raise Skip("NNPACK is not available in this PyTorch build or on this CPU")
    net = copy.deepcopy(unet).to(memory_format=torch.contiguous_format)
    engine = WinogradEngine(net, lambda x, t: net(x, t).sample)
    engine.min_side = min_side
    return engine.run


def onnxruntime_fp32(unet, x, t) -> Run:
    try:
        import onnxruntime as ort
    except ImportError:
        raise Skip("not installed") from None
    with tempfile.TemporaryDirectory() as folder:  # the session holds the weights; the files can go
        path = Path(folder) / "unet.onnx"  # (over 2 GB: the exporter writes the weights beside it)
        with torch.inference_mode():
            torch.onnx.export(_Plain(unet), (x, t), str(path), input_names=["sample", "timestep"],
                              output_names=["out"], opset_version=17, dynamo=False)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x, t: torch.from_numpy(session.run(None, {"sample": x.numpy(), "timestep": t.numpy()})[0])


def _openvino_model(unet, x, t):
    try:
        import openvino as ov
    except ImportError:
        raise Skip("not installed") from None
    with torch.inference_mode():
        return ov, ov.convert_model(_Plain(unet), example_input=(x, t))


def _openvino_run(ov, model, precision="f32") -> Run:
    compiled = ov.Core().compile_model(model, "CPU", {
        "INFERENCE_PRECISION_HINT": precision,  # f32: no silent bf16 on AVX512-BF16/AMX CPUs
        "INFERENCE_NUM_THREADS": threads(),
        "PERFORMANCE_HINT": "LATENCY",
    })
    request = compiled.create_infer_request()

    def run(x, t):
        request.infer({0: x.numpy(), 1: t.numpy()})
        return torch.from_numpy(request.get_output_tensor(0).data.copy())

    return run


def openvino_fp32(unet, x, t) -> Run:
    ov, model = _openvino_model(unet, x, t)
    return _openvino_run(ov, model)


def openvino_int8_weights(unet, x, t) -> Run:
    ov, model = _openvino_model(unet, x, t)
    try:
        import nncf
    except ImportError:
        raise Skip("nncf not installed") from None
    return _openvino_run(ov, nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM))


def openvino_int8_static(unet, x, t) -> Run:
    """Weights and activations in int8 (nncf.quantize), calibrated on noise at random timesteps."""
    ov, model = _openvino_model(unet, x, t)
    try:
        import nncf
    except ImportError:
        raise Skip("nncf not installed") from None
    g = torch.Generator().manual_seed(1)
    calib = [(torch.randn(x.shape, generator=g).numpy(),
              torch.randint(0, 1000, t.shape, generator=g).float().numpy()) for _ in range(16)]
    q = nncf.quantize(model, nncf.Dataset(calib), subset_size=len(calib), model_type=None,
                      preset=nncf.QuantizationPreset.MIXED)
    return _openvino_run(ov, q)


class _Plain(torch.nn.Module):
    """The UNet as a function of tensors (exporters want tensors out, not a dataclass)."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t):
        return self.unet(x, t).sample


CANDIDATES: dict[str, Callable[..., Run]] = {
    BASELINE: torch_eager,
    "torch eager fp32 channels_last": lambda u, x, t: torch_eager(u, x, t, channels_last=True),
    "torch eager bf16 autocast channels_last": eager_bf16,
    "torch.compile inductor fp32": inductor,
    "torch dynamic int8 (Linear only)": torch_dynamic_int8,
    WINOGRAD: nnpack_winograd,
    "onnxruntime fp32": onnxruntime_fp32,
    "openvino fp32": openvino_fp32,
    "openvino int8 weights (nncf)": openvino_int8_weights,
    STATIC_INT8: openvino_int8_static,
}


# --- measuring --------------------------------------------------------------------------------


def median_times(runs: dict[str, Run], x, t, repeats: int) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """Median seconds of each run, timed round-robin so that a shared machine's load
    changes (other jobs starting or ending) fall on every candidate alike."""
    outs = {name: run(x, t) for name, run in runs.items()}  # warm-up: kernels, allocator, lazy compilation
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(x, t)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}, outs


def x0_levels(x, eps, ref_eps, abar: float) -> float:
    """Largest |Δx̂₀| in uint8 levels between two ε predictions at the same x_t."""
    return float(((eps - ref_eps).abs() * ((1 - abar) ** 0.5 / abar ** 0.5)).max() * 127.5)


def describe_machine() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx", "avx_vnni", "fma")))
    versions = [f"torch {torch.__version__}"]
    for name in ("onnxruntime", "openvino", "nncf"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                           text=True).stdout.strip() or platform.processor()
    return (f"cpu: {model}, {os.cpu_count()} cores, kind {cpu_kind()}, torch threads {threads()}\n"
            f"flags: {' '.join(flags) or 'none of avx2/avx512*/amx*'}\n"
            f"versions: {', '.join(versions)}\nload average at start: {load}")


def network(layout: str, config) -> torch.nn.Module:
    torch.manual_seed(0)
    if layout == "cd-lsun-256":
        from cpu_defaults import CD_LSUN_256
        from diffusers import UNet2DModel

        return UNet2DModel(**{**CD_LSUN_256, "sample_size": config.resolution}).eval()
    return build_unet(config).eval()


def bench_one(size: int, batch: int, names: list[str], repeats: int, layout: str = "ddpm-mid") -> list[tuple]:
    config = override(preset("ddpm-mid"), {"resolution": size, "diffusion.num_train_timesteps": 1000})
    unet = network(layout, config)
    abar = float(build_training_scheduler(config).alphas_cumprod[T_PROBE])
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    t = torch.full((batch,), float(T_PROBE))
    runs, notes = {}, {}
    for name in names:
        try:
            start = time.perf_counter()
            runs[name] = CANDIDATES[name](unet, x, t)
            notes[name] = f"prepare {time.perf_counter() - start:.1f} s"
        except Skip as e:
            notes[name] = str(e)
        except Exception as e:  # noqa: BLE001 - a candidate that fails is a result, not a crash
            notes[name] = f"failed: {type(e).__name__}: {str(e)[:120]}"
        print(f"  {size} px b{batch} {name}: {notes[name]}", flush=True)
    seconds, outs = median_times(runs, x, t, repeats)
    ref, base = outs[BASELINE], seconds[BASELINE]
    rows = []
    for name in names:
        if name not in runs:
            rows.append((name, None, None, None, None, None, notes[name]))
            continue
        d = (outs[name] - ref).abs()
        rows.append((name, seconds[name], base / seconds[name], float(d.max()), float(d.mean()),
                     x0_levels(x, outs[name], ref, abar), notes[name]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), help="candidates besides the baseline")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (slow to compile)")
    parser.add_argument("--static-int8", action="store_true",
                        help="also time OpenVINO full int8 (nncf.quantize; minutes to calibrate, far from fp32)")
    parser.add_argument("--layout", choices=["ddpm-mid", "cd-lsun-256"], default="ddpm-mid")
    parser.add_argument("--winograd-sides", type=int, nargs="+", default=[],
                        help="also time the Winograd engine routing maps of at least each of these sides")
    args = parser.parse_args()
    sides = {f"nnpack winograd fp32 (3x3 convs on maps >= {side} px)": side for side in args.winograd_sides}
    for name, side in sides.items():
        CANDIDATES[name] = lambda u, x, t, side=side: nnpack_winograd(u, x, t, side)
    names = [n for n in CANDIDATES if n == BASELINE or n in sides or (args.only is None or n in args.only)]
    opt_in = {"torch.compile inductor fp32": args.compile, STATIC_INT8: args.static_int8}
    names = [n for n in names if opt_in.get(n, True) or args.only and n in args.only]
    print(describe_machine(), flush=True)
    params = sum(p.numel() for p in network(args.layout, preset("ddpm-mid")).parameters()) / 1e6
    print(f"network: {args.layout} layout, {params:.1f} M params (at any size), seeded random weights\n", flush=True)
    print("| px | batch | candidate | s / eval | vs eager fp32 | max abs Δ | mean abs Δ | x̂₀ Δ (levels) | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for batch in args.batches:
            for name, s, ratio, dmax, dmean, lv, note in bench_one(size, batch, names, args.repeats, args.layout):
                if s is None:
                    print(f"| {size} | {batch} | {name} | – | – | – | – | – | {note} |")
                else:
                    print(f"| {size} | {batch} | {name} | {s:.3f} | {ratio:.2f}x | {dmax:.1e} | {dmean:.1e} | "
                          f"{lv:.2f} | {note} |", flush=True)
    print(f"\nload average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
