"""Quality vs speed: a teacher DDPM under DDIM, DPM-Solver++ and UniPC against its distilled student.

    python bench/quality_speed.py [--resolution 32] [--images 2000] [--teacher-steps N] [--student-steps N]
                                  [--samples N] [--batch 50] [--out FOLDER] [--teacher REF] [--student REF]
                                  [--method consistency|progressive] [--start-steps 64]
                                  [--inception-weights PATH] [--quick]

End to end with bedgen's own code: draws --images procedural bedroom-like rooms (tests/synthetic.py),
trains a teacher with `bedgen train --preset tiny`, distils a student with `bedgen distill`, computes
reference statistics of the same images (bedgen.evaluation.metrics.compute_reference_stats), then
evaluates every row with bedgen.evaluation.metrics.evaluate: the teacher with ddim, dpmsolver++ and
unipc at 1, 2, 4, 10, 20, 50 network evaluations (each of these samplers makes one UNet evaluation
per step), the student at 1, 2, 4 steps (one evaluation per step) with the sampler of its --method:
consistency distillation's consistency sampler, or DDIM for progressive distillation (from
--start-steps teacher DDIM steps down to 1); the student rows name the method.
Every row uses the same --samples seeds (image i from seed i), and also reports the Fréchet
distance of 8 x 8 block means of the images (pixel FD, bedgen's Fréchet distance on features no
network learns: meaningful where the Inception weights are random). Seconds per image is the sampling
time only (Inception excluded), in batches of --batch images, with the model loaded and warmed up,
measured in this run on this machine. With --out FOLDER the teacher and student runs are kept there
and a rerun reuses them (or pass --teacher/--student).

Without --inception-weights (no download on an offline machine) the Inception network has seeded
random weights (tests/random_weights.py): every FID/KID is then labelled as such and is only
comparable within the table. --quick: 16 px, 32 images, 2 training steps, 4 samples per row and the
teacher at NFE 1, 2 and 20 only, FID on 64-dim Inception features (a smoke run of every code path).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch_fidelity.metric_fid import fid_features_to_statistics

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from bedgen.config.schema import FEATURE_LAYERS  # noqa: E402
from bedgen.core.device import cpu_flags, cpu_kind  # noqa: E402
from bedgen.core.errors import BedgenError  # noqa: E402
from bedgen.evaluation.metrics import (  # noqa: E402
    compute_reference_stats, evaluate, frechet_distance, shared_inception,
)
from bedgen.sampling.pipeline import load  # noqa: E402
from random_weights import save_random_inception  # noqa: E402
from synthetic import write_rooms  # noqa: E402

TEACHER_SAMPLERS = ("ddim", "dpmsolver++", "unipc")
TEACHER_NFE = (1, 2, 4, 10, 20, 50)
QUICK_TEACHER_NFE = (1, 2, 20)  # --quick: every sampler and the rows the ratios need, at a third of the cost
STUDENT_NFE = (1, 2, 4)
RANDOM_LABEL = "FID on random-Inception features (real weights unavailable): comparable within this table only"
# --quick's FID uses Inception's 64-dim features: 4 samples say nothing in 2048 dims, and the 2048 x 2048
# matrix square root took half the smoke run's time.
QUICK = {"resolution": 16, "images": 32, "teacher_steps": 2, "student_steps": 2, "samples": 4, "batch": 4,
         "feature_layer": "64", "start_steps": 4}
STUDENT_SAMPLER = {"consistency": "consistency", "progressive": "ddim"}  # each method's student's sampler


def student_label(method: str) -> str:
    return f"{method} student"


def describe_machine() -> str:
    flags = sorted(f for f in cpu_flags() if f.startswith(("avx2", "avx512", "amx")))
    model = subprocess.run(["sh", "-c", "lscpu | sed -n 's/^Model name: *//p'"], capture_output=True,
                           text=True).stdout.strip() or platform.processor()
    return (f"cpu: {model}, {os.cpu_count()} cores, kind {cpu_kind()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads\nflags (lscpu): {' '.join(flags) or 'none of avx2/avx512*/amx*'}")


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def bedgen_cli(*args: str) -> None:
    """One `bedgen` command in a subprocess, as a user would run it; its output goes to ours."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bedgen", *args], check=True, cwd=ROOT,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    print(f"  ({args[0]} took {time.perf_counter() - started:.0f} s)", flush=True)


def prepare_images(folder: Path, count: int, size: int) -> Path:
    if len(list(folder.glob("*.png"))) != count:
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()
        write_rooms(folder, count, size=size, seed=0)
    return folder


def run_once(run: Path, what: str, *command: str) -> str:
    """The run folder ``run``, made by ``bedgen COMMAND`` unless an earlier run of this bench left it."""
    if (run / "bedgen-run.json").exists():
        print(f"reusing the {what} in {run}")
    else:
        print(f"making the {what}: bedgen {' '.join(command)}", flush=True)
        bedgen_cli(*command, "--out", str(run))
    return str(run)


def teacher_run(args: argparse.Namespace, data: Path, out: Path) -> str:
    steps = str(args.teacher_steps)
    return args.teacher or run_once(
        out / "teacher", "teacher", "train", "--data", str(data), "--preset", "tiny", "--resolution",
        str(args.resolution), "--max-steps", steps, "--checkpoint-every", steps, "--preview-every", steps)


def student_run(args: argparse.Namespace, teacher: str, data: Path, out: Path) -> str:
    steps = str(args.student_steps)
    method = ["--method", args.method]
    if args.method == "progressive":
        method += ["--set", f"distill.start_steps={args.start_steps}"]
    folder = "student" if args.method == "consistency" else f"student-{args.method}"  # earlier runs are reused
    return args.student or run_once(
        out / folder, student_label(args.method), "distill", "--teacher", teacher, "--data", str(data), *method,
        "--max-steps", steps, "--checkpoint-every", steps, "--preview-every", steps)


def inception_file(args: argparse.Namespace, out: Path) -> tuple[Path, str | None]:
    """The weights to use, and the label every metric carries when they are random."""
    if args.inception_weights:
        return args.inception_weights, None
    return save_random_inception(out / "random-inception.pth", seed=0), RANDOM_LABEL


def pixel_statistics(images) -> dict:
    """μ, Σ of 8 x 8 block means of each image (192 numbers in [0, 1]): a feature no network has to
    learn, so its Fréchet distance means something where the Inception weights are random."""
    pixels = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)) for im in images])
    blocks = torch.nn.functional.adaptive_avg_pool2d(pixels.permute(0, 3, 1, 2) / 255, 8).flatten(1)
    return fid_features_to_statistics(blocks.double())


def measure(pipe, reference, pixels, inception, sampler: str, nfe: int, args: argparse.Namespace) -> dict:
    try:
        result = evaluate(pipe, reference, num_samples=args.samples, metrics="fid,kid", steps=nfe,
                          scheduler=sampler, seed=0, batch_size=args.batch, inception_weights=inception)
    except BedgenError as error:
        return {"sampler": sampler, "nfe": nfe, "skipped": str(error)}
    samples = pipe.generate(args.samples, seed=0, steps=nfe, scheduler=sampler, batch_size=args.batch)
    return {"sampler": sampler, "nfe": nfe, "fid": result["fid"], "kid": result.get("kid"),
            "pixel_fd": frechet_distance(pixel_statistics(samples), pixels),
            "s_per_image": result["seconds"]["sampling"] / args.samples}


def rows_for(ref: str, samplers: tuple[str, ...], nfes: tuple[int, ...], reference, pixels, inception,
             args: argparse.Namespace, who: str) -> list[dict]:
    pipe = load(ref)
    pipe.sample(args.batch, seed=0, steps=2, scheduler=samplers[0], batch_size=args.batch)  # warm-up: oneDNN
    rows = []
    for sampler in samplers:
        for nfe in nfes:
            row = {"model": who, **measure(pipe, reference, pixels, inception, sampler, nfe, args)}
            print(f"  {format_row(row)}", flush=True)
            rows.append(row)
    return rows


def format_row(row: dict) -> str:
    if "skipped" in row:
        return f"| {row['model']} | {row['sampler']} | {row['nfe']} | skipped: {row['skipped']} | | | |"
    kid = "" if row["kid"] is None else f"{row['kid']:.4f}"
    return (f"| {row['model']} | {row['sampler']} | {row['nfe']} | {row['fid']:.2f} | {kid} "
            f"| {row['pixel_fd']:.4f} | {row['s_per_image']:.4f} |")


def print_table(rows: list[dict], label: str | None, caption: str) -> None:
    """The Markdown table of ``rows`` under ``caption``, headed by ``label`` when the Inception weights are random."""
    print()
    if label:
        print(f"**{label}.**")
    print(caption)
    print()
    print(f"| model | sampler | NFE | {'FID (random Inception)' if label else 'FID'} | KID | pixel FD (8x8) | s/image |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(format_row(row))


def find(rows: list[dict], model: str, sampler: str, nfe: int) -> dict | None:
    return next((r for r in rows if r["model"] == model and r["sampler"] == sampler and r["nfe"] == nfe
                 and "skipped" not in r), None)


def ratio_lines(rows: list[dict], method: str) -> list[str]:
    student2 = find(rows, student_label(method), STUDENT_SAMPLER[method], 2)
    dpm20 = find(rows, "teacher", "dpmsolver++", 20)
    dpm2 = find(rows, "teacher", "dpmsolver++", 2)
    if not (student2 and dpm20 and dpm2):
        return ["ratios: a row they need is missing (see the table)"]
    lines = []
    for key, name in (("fid", "FID"), ("pixel_fd", "pixel FD")):
        ratio = student2[key] / dpm20[key]
        lines += [
            f"student {name} at 2 NFE / teacher DPM-Solver++ {name} at 20 NFE: {student2[key]:.4g} / "
            f"{dpm20[key]:.4g} = {ratio:.2f} (target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'})",
            f"student 2 NFE vs teacher DPM-Solver++ 2 NFE, {name}: {student2[key]:.4g} vs {dpm2[key]:.4g} "
            f"(target: student better: {'met' if student2[key] < dpm2[key] else 'NOT met'})",
        ]
    return lines + [
        f"seconds per image, student 2 NFE / teacher DPM-Solver++ 20 NFE: {student2['s_per_image']:.4f} / "
        f"{dpm20['s_per_image']:.4f} = {student2['s_per_image'] / dpm20['s_per_image']:.3f} "
        f"({dpm20['s_per_image'] / student2['s_per_image']:.1f}x faster)",
    ]


def build_parser(description: str, student: bool = True) -> argparse.ArgumentParser:
    """This bench's options; bench/solver_clip.py shares all but the student's (``student=False``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--resolution", type=int, default=32, help="image size, 32..64 (16 with --quick)")
    parser.add_argument("--images", type=int, default=1000, help="procedural training/reference images")
    parser.add_argument("--teacher-steps", type=int, default=800, help="training steps of the teacher")
    parser.add_argument("--samples", type=int, default=100, help="generated images per row (same seeds each row)")
    parser.add_argument("--batch", type=int, default=50, help="images per sampling batch")
    parser.add_argument("--teacher", default=None, help="an existing teacher run (skips training)")
    if student:
        parser.add_argument("--student-steps", type=int, default=300, help="distillation steps of the student")
        parser.add_argument("--student", default=None, help="an existing student run (skips distillation)")
        parser.add_argument("--method", default="consistency", choices=tuple(STUDENT_SAMPLER),
                            help="how the student is distilled (bedgen distill --method)")
        parser.add_argument("--start-steps", type=int, default=64,
                            help="progressive: the teacher's DDIM steps the first stage halves (down to 1)")
    parser.add_argument("--inception-weights", type=Path, default=None,
                        help="torch-fidelity Inception weights (default: seeded random weights, labelled)")
    parser.add_argument("--feature-layer", default="2048", choices=FEATURE_LAYERS,
                        help="Inception features for FID/KID (2048 = pool3, the standard)")
    parser.add_argument("--out", type=Path, default=None, help="keep images, runs and statistics here")
    parser.add_argument("--quick", action="store_true", help="a smoke run of every code path: " + str(QUICK))
    return parser


def finish_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parsed arguments, with --quick's settings where an option was left at its default."""
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if hasattr(args, name) and parser.get_default(name) == getattr(args, name):
                setattr(args, name, value)
    elif not 32 <= args.resolution <= 64:
        parser.error("--resolution must be 32..64 (16 only with --quick)")
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return finish_args(build_parser(__doc__.splitlines()[0]), argv)


def begin(args: argparse.Namespace, script: str, argv: list[str] | None):
    """The output folder (a temporary one without --out, cleaned up by the caller) and the run's header."""
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix=f"bedgen-{Path(script).stem}-")
    out = args.out or Path(scratch.name)
    out.mkdir(parents=True, exist_ok=True)
    print(describe_machine())
    print(f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; load average at start: {load_average()}")
    print(f"command: python {script} {' '.join(sys.argv[1:] if argv is None else argv)}", flush=True)
    return out, scratch


def references(args: argparse.Namespace, data: Path, out: Path):
    """(Inception, its statistics of the rooms, pixel statistics of the rooms, the random-weights label)."""
    weights, label = inception_file(args, out)
    inception = shared_inception(weights)
    reference = compute_reference_stats(str(data), args.resolution, inception_weights=inception,
                                        batch_size=args.batch, feature_layer=args.feature_layer)
    print(f"reference: {args.images} procedural rooms at {args.resolution} px; evaluating {args.samples} samples "
          "per row", flush=True)
    pixels = pixel_statistics(Image.open(path) for path in sorted(data.glob("*.png")))
    return inception, reference, pixels, label


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    out, scratch = begin(args, "bench/quality_speed.py", argv)
    data = prepare_images(out / f"rooms-{args.resolution}", args.images, args.resolution)
    teacher = teacher_run(args, data, out)
    student = student_run(args, teacher, data, out)
    inception, reference, pixels, label = references(args, data, out)
    teacher_nfe = QUICK_TEACHER_NFE if args.quick else TEACHER_NFE
    rows = rows_for(teacher, TEACHER_SAMPLERS, teacher_nfe, reference, pixels, inception, args, "teacher")
    rows += rows_for(student, (STUDENT_SAMPLER[args.method],), STUDENT_NFE, reference, pixels, inception, args,
                     student_label(args.method))

    print_table(rows, label, f"{args.samples} samples per row (FID from few samples is biased upwards; compare "
                f"rows, not papers); reference: {args.images} images; {args.resolution} px; batch {args.batch}; "
                f"Inception features: {args.feature_layer}-dim; teacher {teacher}; student {student}")
    print()
    for line in ratio_lines(rows, args.method):
        print(f"- {line}")
    print(f"\nload average at end: {load_average()}; wall time {time.perf_counter() - started:.0f} s")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
