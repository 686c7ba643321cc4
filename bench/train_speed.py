"""Training throughput: bedgen's Trainer vs a plain loop in the style of diffusers'
train_unconditional example (fp32, contiguous tensors, AdamW, EMA), same UNet,
batch and CPU, in one process.

    python bench/train_speed.py [--preset tiny] [--resolution 32] [--batch-size 32] [--steps 20] [--repeats 3]

The data are 256 px JPEGs, as LSUN is distributed. The baseline reads them the way
the example does (PIL + torchvision transforms every step, DataLoader with the
example's default of 0 workers); bedgen trains from the folder `bedgen prepare`
decoded once (uint8 shards). A second baseline run gets its batches pre-decoded in
memory, to show the ratio of the training step alone.
Both are timed after 5 warm-up steps; images/s = steps x batch / seconds, best of
--repeats alternating runs of each.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from diffusers import DDPMScheduler  # noqa: E402
from diffusers.training_utils import EMAModel  # noqa: E402

from bedgen.config.overrides import override  # noqa: E402
from bedgen.config.schema import preset  # noqa: E402
from bedgen.data.datasets import DataConfig, open_dataset, prepare  # noqa: E402
from bedgen.models.unet import build_unet  # noqa: E402
from bedgen.training.trainer import Trainer, resolve_mixed_precision  # noqa: E402
from synthetic import write_rooms  # noqa: E402

WARMUP = 5


class JpegFolder(torch.utils.data.Dataset):
    """The example's data path: decode, resize, crop, flip and normalise every time."""

    def __init__(self, folder: Path, resolution: int):
        from torchvision import transforms

        self.files = sorted(folder.glob("*.jpg"))
        self.transform = transforms.Compose([
            transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(resolution), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize([0.5], [0.5]),
        ])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image

        return self.transform(Image.open(self.files[i]).convert("RGB"))


def endless(loader):
    while True:
        yield from loader


def baseline_images_per_second(config, batches, steps: int) -> float:
    """The loop of diffusers' train_unconditional.py (fp32, contiguous, AdamW, EMA)."""
    torch.manual_seed(0)
    model = build_unet(config)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, power=0.75)
    scheduler = DDPMScheduler(num_train_timesteps=config.diffusion.num_train_timesteps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    start = None
    for i in range(WARMUP + steps):
        if i == WARMUP:
            start = time.perf_counter()
        clean = next(batches)
        noise = torch.randn(clean.shape)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],))
        noisy = scheduler.add_noise(clean, noise, t)
        loss = F.mse_loss(model(noisy, t).sample, noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        ema.step(model.parameters())
    return steps * config.train.batch_size / (time.perf_counter() - start)


def bedgen_images_per_second(config, run_dir: Path, steps: int) -> float:
    config = copy.deepcopy(config)
    config.train.max_steps = WARMUP + steps
    config.train.checkpoint_every = 10**9  # only the final checkpoint
    config.train.preview_every = 0
    config.train.log_every = 10**9
    trainer = Trainer(config, run_dir, progress=False)
    times: list[float] = []
    original = trainer._train_step

    def timed(batches):
        start = time.perf_counter()
        result = original(batches)
        times.append(time.perf_counter() - start)
        return result

    trainer._train_step = timed
    # checkpoint writing is not part of the throughput
    trainer.save = lambda: run_dir / "checkpoints" / f"step-{trainer.state.step:06d}"
    trainer.train()
    return steps * config.train.batch_size / sum(times[WARMUP:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--resolution", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_rooms(tmp / "images", 256, size=256, ext="jpg")
        prepare(DataConfig(source=str(tmp / "images")), tmp / "shards", args.resolution)
        jpeg_loader = torch.utils.data.DataLoader(
            JpegFolder(tmp / "images", args.resolution), batch_size=args.batch_size, shuffle=True, drop_last=True
        )
        config = override(preset(args.preset), {
            "resolution": args.resolution, "train.batch_size": args.batch_size,
            "data.source": str(tmp / "shards"), "train.warmup_steps": 0,
        })
        data = open_dataset(config.data, args.resolution)
        images = torch.stack([data[i]["image"] for i in range(len(data))]).float() / 127.5 - 1
        batches = list(images.split(args.batch_size))[: len(images) // args.batch_size]

        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, cuda={torch.cuda.is_available()}")
        print(f"model: preset {args.preset}, {args.resolution} px, batch {args.batch_size}, "
              f"{sum(p.numel() for p in build_unet(config).parameters()) / 1e6:.2f} M params")
        # Alternate the two and keep each one's best: this VM's speed drifts over seconds.
        ours, base, base_compute = 0.0, 0.0, 0.0
        for repeat in range(args.repeats):
            base = max(base, baseline_images_per_second(config, endless(jpeg_loader), args.steps))
            base_compute = max(base_compute, baseline_images_per_second(config, endless(batches), args.steps))
            ours = max(ours, bedgen_images_per_second(config, tmp / f"run{repeat}", args.steps))
    precision = resolve_mixed_precision(config.train.mixed_precision)
    print(f"baseline (train_unconditional style: fp32, JPEG decoded every step): {base:.1f} img/s")
    print(f"baseline step alone (fp32, batches pre-decoded in memory): {base_compute:.1f} img/s")
    print(f"bedgen Trainer (mixed precision {precision}, fused AdamW, prepared shards): {ours:.1f} img/s")
    print(f"ratio vs the baseline: {ours / base:.2f}x   (training step alone: {ours / base_compute:.2f}x)")


if __name__ == "__main__":
    main()
