"""Sampling speed: bedgen's default path vs plain diffusers fp32, in one process.

    python bench/sample_speed.py [--resolution 256] [--steps 3] [--repeats 3]

Network: the ddpm-mid layout (google/ddpm-bedroom-256) with random weights.
Baseline: diffusers' DDPMPipeline as documented (fp32, contiguous tensors).
bedgen: Pipeline.sample with automatic device/dtype (bf16 autocast + channels_last
on CPUs with native bf16). Both run the DDPM sampler for the same number of steps;
the time per UNet evaluation is total time / steps (best of --repeats).
Then one default Generate click of the app (default sampler and steps, 1 image).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diffusers import DDPMPipeline  # noqa: E402

from bedgen.storage.checkpoint import CheckpointInfo  # noqa: E402
from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import preset  # noqa: E402
from bedgen.core.device import resolve  # noqa: E402
from bedgen.models.unet import build_training_scheduler, build_unet  # noqa: E402
from bedgen.sampling.pipeline import Pipeline  # noqa: E402


def best_of(repeats: int, fn) -> float:
    fn()  # warm-up: allocator, oneDNN kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    config = override(preset("ddpm-mid"), {"resolution": args.resolution, "diffusion.num_train_timesteps": 1000})
    torch.manual_seed(0)
    unet = build_unet(config).eval()
    scheduler = build_training_scheduler(config)
    placement = resolve("auto", "auto")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {placement.describe()}")
    print(f"network: ddpm-mid layout, {sum(p.numel() for p in unet.parameters()) / 1e6:.1f} M params, "
          f"{args.resolution} px, batch 1")

    baseline = DDPMPipeline(unet=unet, scheduler=scheduler)
    baseline.set_progress_bar_config(disable=True)
    t_base = best_of(args.repeats, lambda: baseline(
        batch_size=1, num_inference_steps=args.steps, generator=torch.Generator().manual_seed(0), output_type="np"
    )) / args.steps

    info = CheckpointInfo("bench", Path("."), "bedgen", "ddpm", config)
    ours = Pipeline(unet, scheduler, info)
    t_ours = best_of(args.repeats, lambda: ours.sample(1, seed=0, steps=args.steps, scheduler="ddpm")) / args.steps

    print(f"diffusers fp32 (DDPMPipeline): {t_base:.3f} s per UNet evaluation")
    print(f"bedgen default ({placement.describe()}, channels_last): {t_ours:.3f} s per UNet evaluation")
    print(f"speed-up: {t_base / t_ours:.2f}x")

    click = ours.sample(1, seed=0)  # the app's default: 1 image, model's default sampler and steps
    print(f"one default Generate click: {click.seconds:.1f} s "
          f"({click.sampler}, {click.steps} steps, 1 image, {args.resolution} px, {click.placement})")


if __name__ == "__main__":
    main()
