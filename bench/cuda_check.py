"""CUDA check: every GPU path of bedgen, timed, in under 5 minutes.

    python bench/cuda_check.py                        # on a machine with a CUDA GPU
    python bench/cuda_check.py --device cpu --smoke   # the same code paths, tiny, on the CPU

Sections (each measures a fixed number of steps after warm-up, stopping early when its
time budget is spent, with ``torch.cuda.synchronize()`` around every timing):

1. training: bedgen's Trainer (accelerate, bf16 mixed precision) on the ddpm-mid preset at
   64 and 128 px, synthetic rooms prepared into shards as ``bedgen prepare`` does; images/s
   of the optimizer step alone (no checkpoint, preview or logging);
2. sampling: ``Pipeline.sample`` at 256 px, ddpm-mid layout with random weights, the DDPM
   sampler, eager, then with the Denoiser's UNet wrapped by ``torch.compile`` (here only:
   the library is unchanged); seconds per UNet evaluation (sampling time / steps, the
   scheduler's arithmetic and the PNG conversion included) and the ratio;
3. FID features: bedgen's Inception extractor (torch-fidelity's InceptionV3, fp32, no TF32)
   on 256 px images; RANDOM weights written locally (the device machine is offline): speed only;
4. neighbours: an LPIPS index (AlexNet, RANDOM backbone weights) built from synthetic rooms
   on the device, then exact top-5 queries: the query and re-rank embeddings run on the
   device, the index scan on the CPU; speed only;
5. distillation: ``bedgen distill``'s Trainer steps (consistency distillation, Heun teacher
   steps, bf16 mixed precision) of a ddpm-mid teacher with random weights at 64 px; images/s
   of the step alone, as for training.

Every figure line reads ``[section] what: FIGURE UNIT (dtype) on DEVICE``, and a Markdown
table for bench/RESULTS.md closes the run. Without a CUDA device and without
``--device cpu`` the script exits 2. ``--smoke`` (tiny preset, 16-32 px, 1-2 steps per
section, ``torch.compile`` with the cheap ``eager`` backend) keeps the script from rotting:
tests/test_bench_cuda_check.py runs it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

NO_CUDA = "no CUDA device: run with --device cpu --smoke to check the script"


@dataclass(frozen=True)
class Size:
    """How much each section does: the full check on a GPU, or a smoke run on a CPU."""

    preset: str
    train_resolutions: tuple[int, ...]
    train_batch: int
    train_steps: int
    sample_resolution: int
    sample_batch: int
    sample_steps: int
    compile_backend: str
    fid_resolution: int
    fid_batch: int
    fid_batches: int
    rooms: int
    lpips_resolution: int
    queries: int
    budget_s: float  # per timed loop; the whole run stays under 5 minutes on a GPU
    warmup: int  # untimed calls before each timed loop (allocator, cuDNN/oneDNN kernel choice)


FULL = Size("ddpm-mid", (64, 128), 32, 10, 256, 8, 20, "inductor", 256, 64, 5, 1024, 64, 10, 20.0, 2)
# tiny UNet, 16/32 px: seconds on a 2-core CPU; the eager backend still traces the UNet with dynamo
SMOKE = Size("tiny", (16, 32), 2, 1, 32, 2, 2, "eager", 32, 2, 1, 24, 32, 2, 5.0, 1)


@dataclass
class Figure:
    section: str
    what: str
    value: float
    unit: str
    dtype: str
    note: str = ""


class Report:
    def __init__(self, device_name: str):
        self.device_name, self.figures = device_name, []

    def add(self, figure: Figure) -> None:
        self.figures.append(figure)
        note = f"; {figure.note}" if figure.note else ""
        print(f"[{figure.section}] {figure.what}: {figure.value:.4g} {figure.unit} ({figure.dtype}) "
              f"on {self.device_name}{note}", flush=True)

    def table(self) -> str:
        lines = ["| section | what | figure | dtype | note |", "|---|---|---|---|---|"]
        for f in self.figures:
            lines.append(f"| {f.section} | {f.what} | {f.value:.4g} {f.unit} | {f.dtype} | {f.note} |")
        return "\n".join(lines)


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, step: Callable[[], object], count: int, size: Size) -> tuple[int, float]:
    """(steps done, seconds) for up to ``count`` calls after ``size.warmup`` untimed ones,
    stopping once ``size.budget_s`` is spent (at least one timed call)."""
    for _ in range(size.warmup):
        step()
    synchronize(device)
    start, done = time.perf_counter(), 0
    while done < count:
        step()
        done += 1
        synchronize(device)
        if time.perf_counter() - start > size.budget_s:
            break
    return done, time.perf_counter() - start


# --- 1. training ------------------------------------------------------------------------------


def check_training(report: Report, size: Size, device, work: Path) -> None:
    from bedgen.config.overrides import override
    from bedgen.config.schema import preset
    from bedgen.data.datasets import DataConfig, prepare
    from bedgen.training.trainer import Trainer
    from synthetic import write_rooms

    rooms = write_rooms(work / "train-rooms", 4 * size.train_batch, size=max(size.train_resolutions), seed=3)
    for resolution in size.train_resolutions:
        shards = work / f"train-shards-{resolution}"
        prepare(DataConfig(source=str(rooms[0].parent)), shards, resolution)
        config = override(preset(size.preset), {
            "resolution": resolution, "data.source": str(shards), "train.batch_size": size.train_batch,
            "train.mixed_precision": "bf16", "train.max_steps": size.warmup + size.train_steps, "train.warmup_steps": 0,
            "train.preview_every": 0, "train.checkpoint_every": 10**9, "train.log_every": 10**9,
        })
        trainer = Trainer(config, work / f"train-run-{resolution}", progress=False)
        assert trainer.device.type == device.type, f"Trainer chose {trainer.device}, expected {device}"
        batches = trainer._batches()  # the optimizer step alone: no checkpoint, preview or log writes
        steps, seconds = timed(device, lambda: trainer._train_step(batches), size.train_steps, size)
        params = sum(p.numel() for p in trainer.model.parameters()) / 1e6
        report.add(Figure(f"train-{resolution}", f"Trainer step, {size.preset} ({params:.1f} M params), "
                          f"{resolution} px, batch {size.train_batch}",
                          steps * size.train_batch / seconds, "images/s", trainer.accelerator.mixed_precision,
                          f"{steps} steps after {size.warmup} warm-up"))
        del trainer


def check_distillation(report: Report, size: Size, device, work: Path) -> None:
    import torch

    from bedgen.config.overrides import override
    from bedgen.config.schema import preset
    from bedgen.models.unet import build_training_scheduler, build_unet
    from bedgen.storage.checkpoint import save_checkpoint
    from bedgen.training.distill import distill_config
    from bedgen.training.trainer import Trainer
    from synthetic import write_rooms

    resolution = size.train_resolutions[0]
    teacher_config = override(preset(size.preset), {"resolution": resolution})
    torch.manual_seed(0)
    teacher = save_checkpoint(work / "distill-teacher", build_unet(teacher_config),
                              build_training_scheduler(teacher_config), teacher_config)
    rooms = write_rooms(work / "distill-rooms", 4 * size.train_batch, size=resolution, seed=4)
    config = override(distill_config(str(teacher)), {
        "data.source": str(rooms[0].parent), "train.batch_size": size.train_batch,
        "train.mixed_precision": "bf16", "train.max_steps": size.warmup + size.train_steps,
        "train.preview_every": 0, "train.checkpoint_every": 10**9, "train.log_every": 10**9,
    })
    trainer = Trainer(config, work / "distill-run", progress=False)
    batches = trainer._batches()
    steps, seconds = timed(device, lambda: trainer._train_step(batches), size.train_steps, size)
    report.add(Figure("distill", f"distillation step ({config.distill.solver} teacher steps), {size.preset} teacher, "
                      f"{resolution} px, batch {size.train_batch}", steps * size.train_batch / seconds, "images/s",
                      trainer.accelerator.mixed_precision, f"{steps} steps after {size.warmup} warm-up"))


# --- 2. sampling ------------------------------------------------------------------------------


def check_sampling(report: Report, size: Size, device, work: Path) -> None:
    import torch

    from bedgen.config.overrides import override
    from bedgen.config.schema import preset
    from bedgen.models.unet import build_training_scheduler, build_unet
    from bedgen.sampling.pipeline import Pipeline
    from bedgen.storage.checkpoint import CheckpointInfo

    config = override(preset(size.preset), {"resolution": size.sample_resolution})
    torch.manual_seed(0)
    unet = build_unet(config)
    pipe = Pipeline(unet, build_training_scheduler(config), CheckpointInfo("cuda-check", Path("."), "bedgen", "ddpm",
                                                                           config))
    last: dict[str, str] = {}

    def run() -> None:
        result = pipe.sample(size.sample_batch, seed=0, steps=size.sample_steps, scheduler="ddpm",
                             batch_size=size.sample_batch, device=device.type)
        last["placement"] = result.placement.split(":")[0]

    what = f"{size.preset} UNet eval, {size.sample_resolution} px, batch {size.sample_batch}, DDPM"
    steps, seconds = timed(device, run, 3, size)
    eager = seconds / steps / size.sample_steps
    report.add(Figure("sample-eager", what, eager, "s/eval", last["placement"],
                      f"{size.sample_batch / eager:.1f} image-evaluations/s"))

    # The Denoiser owns the only UNet call of inference; compiling the module it holds
    # compiles every sampler's network call, and leaves the library as it is.
    pipe.denoiser.unet = torch.compile(pipe.unet, backend=size.compile_backend)
    start = time.perf_counter()
    run()  # the first call compiles
    synchronize(device)
    compile_seconds = time.perf_counter() - start
    steps, seconds = timed(device, run, 3, size)
    compiled = seconds / steps / size.sample_steps
    report.add(Figure("sample-compiled", f"{what}, torch.compile({size.compile_backend})", compiled, "s/eval",
                      last["placement"], f"{eager / compiled:.2f}x eager; first call incl. compile "
                      f"{compile_seconds:.0f} s"))


# --- 3. FID features --------------------------------------------------------------------------


def check_fid_features(report: Report, size: Size, device, work: Path) -> None:
    import torch

    from bedgen.evaluation.metrics import POOL, Inception
    from random_weights import save_random_inception

    inception = Inception(save_random_inception(work / "inception-random.pth"), device)
    images = torch.randint(0, 256, (size.fid_batch, 3, size.fid_resolution, size.fid_resolution), dtype=torch.uint8)
    features: dict[str, torch.Tensor] = {}

    def run() -> None:
        features.update(inception(images, (POOL,)))

    steps, seconds = timed(device, run, size.fid_batches, size)
    assert features[POOL].shape == (size.fid_batch, 2048) and torch.isfinite(features[POOL]).all()
    report.add(Figure("fid", f"Inception pool3 features, {size.fid_resolution} px uint8, batch {size.fid_batch}",
                      steps * size.fid_batch / seconds, "images/s", "fp32",
                      "RANDOM Inception weights (offline): speed only"))


# --- 4. neighbours ------------------------------------------------------------------------------


def check_neighbours(report: Report, size: Size, device, work: Path) -> None:
    from bedgen.evaluation.neighbours import LpipsIndex, build_index
    from bedgen.models.lpips import shared_embedder
    from random_weights import save_random_backbone
    from synthetic import write_rooms

    weights = save_random_backbone(work / "alexnet-random.safetensors")
    write_rooms(work / "nn-rooms", size.rooms, size=max(48, size.lpips_resolution), seed=21)
    queries = write_rooms(work / "nn-queries", size.queries, size=max(48, size.lpips_resolution), seed=22)
    synchronize(device)
    start = time.perf_counter()
    path = build_index(str(work / "nn-rooms"), work / "nn-index", resolution=size.lpips_resolution,
                       lpips_weights=weights, device=device.type)
    synchronize(device)
    build_rate = size.rooms / (time.perf_counter() - start)
    index = LpipsIndex.open(path)
    embedder = shared_embedder("alex", weights, device.type)
    assert embedder.device.type == device.type
    report.add(Figure("neighbours-build", f"build_index, LPIPS alex {size.lpips_resolution} px, "
                      f"{size.rooms} rooms", build_rate, "images/s", "fp32",
                      "incl. PNG decoding and PCA fit; RANDOM backbone: speed only"))

    times: list[float] = []
    for query in queries:
        synchronize(device)
        start = time.perf_counter()
        result = index.search([query], k=5, embedder=embedder)
        synchronize(device)
        times.append(time.perf_counter() - start)
        assert len(result[0].neighbours) == 5
    report.add(Figure("neighbours-search", f"exact top-5 over {len(index)} images, with re-rank",
                      statistics.median(times[1:] or times) * 1e3, "ms/query", "fp32",
                      f"median of {max(1, len(times) - 1)} queries after 1 warm-up; scan on the CPU"))


# --- the run ------------------------------------------------------------------------------------


def describe(device) -> str:
    import torch

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    from bedgen.core.device import cpu_kind

    return f"CPU {platform.processor() or platform.machine()} ({cpu_kind()}, {os.cpu_count()} cores)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, 1-2 steps per section: checks the script")
    args = parser.parse_args(argv)
    if args.device == "cpu":
        # The Trainer takes the GPU whenever one is visible; hidden before CUDA is first touched.
        os.environ["CUDA_VISIBLE_DEVICES"] = ""

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(NO_CUDA)
        return 2
    import diffusers

    device = torch.device(args.device)
    size = SMOKE if args.smoke else FULL
    report = Report(describe(device))
    print(f"device: {report.device_name}; torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"diffusers {diffusers.__version__}; {'smoke' if args.smoke else 'full'} run", flush=True)
    start, failed = time.perf_counter(), []
    with tempfile.TemporaryDirectory(prefix="bedgen-cuda-check-") as tmp:
        work = Path(tmp)
        for section in (check_training, check_sampling, check_fid_features, check_neighbours, check_distillation):
            began = time.perf_counter()
            try:
                section(report, size, device, work)
            except Exception as e:  # one section's failure must not hide the others' figures
                failed.append(section.__name__)
                traceback.print_exc()
                print(f"[{section.__name__}] FAILED: {type(e).__name__}: {e}".splitlines()[0], flush=True)
            print(f"  ({section.__name__}: {time.perf_counter() - began:.0f} s)", flush=True)
    print(f"total: {time.perf_counter() - start:.0f} s\n")
    print(f"CUDA check on {report.device_name}, torch {torch.__version__}, diffusers {diffusers.__version__}:\n")
    print(report.table())
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
