"""What a default Generate click costs on this machine: the GPU default vs the CPU default.

    python bench/cpu_defaults.py [--repeats 2] [--threads N]

Both networks have random weights in the layouts of the two models the app opens on
(bedgen.ui.settings.default_model_for_machine): google/ddpm-ema-bedroom-256 (the ddpm-mid
layout, 256 px) and openai/diffusers-cd_bedroom256_lpips (the LSUN-256 layout of the
consistency-model release, as diffusers' conversion script defines it). Each is timed for one
UNet evaluation at 256 px, batch 1, through bedgen's inference call (Denoiser.network) on the
app's placement for this machine, three times in this process: on PyTorch eager (channels_last,
bf16 autocast where the CPU has native bf16), on ONNX Runtime, and on ``auto`` (what the app
runs: NNPACK Winograd for fp32 on AVX2 CPUs, ONNX Runtime for fp32 on other CPUs without native
bf16; bedgen/sampling/backends.py), best of ``--repeats``, with the first call (an export where
the engine needs one) and a fresh load's first call (the export read back from the disk cache)
beside. Then the clicks, from auto's times: 20
DPM-Solver++ steps of the DDPM against 1 and 2 steps of the consistency model, as
evaluations x time per evaluation, and the ratio of the two defaults; and releasing the
Interpolate slider: 25 DDIM steps of the DDPM, or one evaluation of a student distilled from it. Quality is not measured
here (random weights): the published FIDs are 6.36 for the DDPM (Ho et al. 2020) and 7.80 /
5.22 for CD (LPIPS) at 1 / 2 steps (Song et al. 2023, Table 3).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import UNet2DModel  # noqa: E402

from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import preset  # noqa: E402
from bedgen.core.device import cpu_flags, cpu_kind, resolve  # noqa: E402
from bedgen.models.unet import build_unet  # noqa: E402
from bedgen.sampling.backends import channels_last_weights, choose_backend  # noqa: E402
from bedgen.sampling.denoiser import Denoiser  # noqa: E402
from bedgen.config.schema import INTERPOLATION_STEPS as INTERPOLATE_STEPS  # noqa: E402

DDPM_STEPS = 20

# The LSUN 256 consistency models' UNet (526 M parameters), as diffusers' conversion script lays it out.
CD_LSUN_256 = dict(
    sample_size=256, in_channels=3, out_channels=3, layers_per_block=2,
    block_out_channels=(256, 256, 512, 512, 1024, 1024), attention_head_dim=64,
    down_block_types=("ResnetDownsampleBlock2D",) * 3 + ("AttnDownBlock2D",) * 3,
    up_block_types=("AttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",) * 3,
    downsample_type="resnet", upsample_type="resnet", resnet_time_scale_shift="default",
)


# eager (the baseline), the engine auto picked before the Winograd engine, and auto's pick now
BACKENDS = ("eager", "onnxruntime", "auto")


def seconds_per_evaluation(unet: torch.nn.Module, repeats: int, backend: str, cache: Path) -> Timing:
    """One 256 px evaluation through bedgen's only inference call (Denoiser.network) on the
    app's placement for this machine, with ``backend``: best of ``repeats`` after a first call
    (which exports the network where the engine needs it), then a fresh Denoiser's first call
    (the next start: the export read back from the disk cache)."""
    placement = replace(resolve("auto", "auto"), backend=backend)
    # the weights as SharedPlacement lays them out for auto's engine (NCHW for Winograd), and in
    # channels_last, eager's fastest, for the named backends
    parameters = sum(p.numel() for p in unet.parameters())
    channels_last = backend != "auto" or channels_last_weights(placement, parameters, side=256)
    unet = unet.eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    x = torch.randn(1, 3, 256, 256)

    def denoiser() -> Denoiser:
        d = Denoiser(unet, "vp")
        for engine in d.engines.values():
            engine.cache_dir = cache
        return d

    d = denoiser()
    engine = choose_backend(backend, placement, d.parameters, side=256)
    start = time.perf_counter()
    d.network(x, 500, placement)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        d.network(x, 500, placement)
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    denoiser().network(x, 500, placement)
    restart = time.perf_counter() - start
    return Timing(min(times), engine[0], first, restart)


@dataclass
class Timing:
    seconds: float  # one evaluation, best of the repeats
    engine: str  # what auto (or the named backend) ran
    first: float  # the first call: an export where the engine needs one
    restart: float  # a fresh load's first call: the export read from the disk cache


def describe_machine() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx")))
    model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True, text=True)
    return (f"CPU: {model.stdout.strip() or 'unknown'}, {os.cpu_count()} cores, kind {cpu_kind()}; "
            f"flags: {' '.join(flags) or 'none of avx2/avx512*/amx*'}; torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; placement {resolve('auto', 'auto').describe()}; "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(describe_machine())
    torch.manual_seed(0)
    ddpm = build_unet(override(preset("ddpm-mid"), {"resolution": 256}))
    cd = UNet2DModel(**CD_LSUN_256)
    counts = {name: sum(p.numel() for p in net.parameters()) / 1e6 for name, net in (("ddpm", ddpm), ("cd", cd))}
    timings = {}
    with tempfile.TemporaryDirectory() as cache:
        for name, net in (("ddpm", ddpm), ("cd", cd)):
            for backend in BACKENDS:
                timings[name, backend] = seconds_per_evaluation(net, args.repeats, backend, Path(cache))
    print("| one evaluation, 256 px, batch 1 | backend | engine | s / eval | vs eager | first call | next start |")
    print("|---|---|---|---|---|---|---|")
    for name in ("ddpm", "cd"):
        for backend in BACKENDS:
            t = timings[name, backend]
            label = f"DDPM (ddpm-mid, {counts['ddpm']:.0f} M)" if name == "ddpm" else f"CD LSUN-256 ({counts['cd']:.0f} M)"
            print(f"| {label} | {backend} | {t.engine} | {t.seconds:.2f} | "
                  f"{timings[name, 'eager'].seconds / t.seconds:.2f}x | {t.first:.1f} s | {t.restart:.1f} s |")
    t_ddpm, t_cd = timings["ddpm", "auto"].seconds, timings["cd", "auto"].seconds
    print(f"\nThe clicks below use auto's times (the app's default engine on this machine):\n")
    gpu_default = DDPM_STEPS * t_ddpm
    print("| click (1 image, 256 px) | evaluations | seconds | vs the GPU default | published FID |")
    print("|---|---|---|---|---|")
    print(f"| DDPM, DPM-Solver++ {DDPM_STEPS} steps (GPU default) | {DDPM_STEPS} | {gpu_default:.1f} | 1.00x | "
          "6.36 at 1000 steps |")
    for steps, fid in ((1, "7.80"), (2, "5.22")):
        click = steps * t_cd
        mark = " (CPU default)" if steps == 2 else ""
        print(f"| CD (LPIPS), {steps} step(s){mark} | {steps} | {click:.1f} | {gpu_default / click:.2f}x faster | "
              f"{fid} |")
    # Releasing the λ slider (t = 0.5): the model's DDIM steps, or one evaluation of a student
    # distilled from it (bedgen distill; the same network layout as its teacher).
    ddim = INTERPOLATE_STEPS * t_ddpm
    print(f"| releasing λ, DDPM: {INTERPOLATE_STEPS} DDIM steps from t = 0.5 | {INTERPOLATE_STEPS} | {ddim:.1f} | | |")
    print(f"| releasing λ, its consistency student: 1 step | 1 | {t_ddpm:.1f} | {ddim / t_ddpm:.0f}x faster | |")


if __name__ == "__main__":
    main()
