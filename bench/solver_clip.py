"""DPM-Solver++ and UniPC on a clipped pixel model: bedgen's DDIM-style x̂0 clip against diffusers' thresholding.

    python bench/solver_clip.py [--teacher REF] [--nfe 2 4 10 20 50] [--samples 100] [--batch 50]
                                [--inception-weights PATH] [--out FOLDER] [--quick]

A DDPM trained with ``clip_sample`` is sampled with its x̂0 clipped to [-1, 1]. bedgen's multistep solvers
clip it as DDIM does, keeping the network's ε̂ (bedgen.sampling.schedulers.DDIMClipMixin); diffusers'
``thresholding`` clips it and steps with the ε the clipped x̂0 implies. This bench measures both on the same
teacher and seeds, beside DDIM, with bench/quality_speed.py's own rows (FID/KID on the rooms, pixel FD of
8 x 8 block means, seconds per image): rows "dpmsolver++" and "unipc" are bedgen's samplers, rows
"dpmsolver++ thresholding" and "unipc thresholding" the same solvers with diffusers' clip.

--teacher takes a pixel DDPM run trained with clip_sample (bench/quality_speed.py --out F keeps one in
F/teacher); without it a teacher is trained as bench/quality_speed.py does (--teacher-steps). Without
--inception-weights the Inception network is random and the FIDs only rank rows of this table. --quick:
bench/quality_speed.py's smoke settings (16 px, 2 training steps, 4 samples) at NFE 4.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import quality_speed as qs  # noqa: E402
from diffusers import DPMSolverMultistepScheduler, UniPCMultistepScheduler  # noqa: E402

from bedgen.sampling.schedulers import VP_SAMPLERS, SamplerSpec  # noqa: E402

THRESHOLDING = {"thresholding": True, "sample_max_value": 1.0}  # diffusers' clip of x̂0 to [-1, 1]
COMPARED = {"dpmsolver++": DPMSolverMultistepScheduler, "unipc": UniPCMultistepScheduler}


def add_thresholding_samplers() -> tuple[str, ...]:
    """Register "NAME thresholding": bedgen's sampler NAME with diffusers' own clip instead of bedgen's.

    The sampler table is the one place a sampler name maps to a scheduler, so the comparison rows go
    through every line of bedgen's sampling code that the real ones do."""
    names = []
    for name, cls in COMPARED.items():
        label = f"{name} thresholding"
        VP_SAMPLERS[label] = SamplerSpec(cls, f"{name} with diffusers' thresholding",
                                         {**VP_SAMPLERS[name].overrides, **THRESHOLDING})
        names += [name, label]
    return ("ddim", *names)


def parse_args(argv: list[str] | None):
    parser = qs.build_parser(__doc__.splitlines()[0], student=False)
    parser.add_argument("--nfe", type=int, nargs="+", default=[2, 4, 10, 20, 50], help="network evaluations per row")
    args = qs.finish_args(parser, argv)
    if args.quick and args.nfe == parser.get_default("nfe"):
        args.nfe = [4]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    out, scratch = qs.begin(args, "bench/solver_clip.py", argv)
    data = qs.prepare_images(out / f"rooms-{args.resolution}", args.images, args.resolution)
    teacher = qs.teacher_run(args, data, out)
    inception, reference, pixels, label = qs.references(args, data, out)
    rows = qs.rows_for(teacher, add_thresholding_samplers(), tuple(args.nfe), reference, pixels, inception, args,
                       "teacher")

    qs.print_table(rows, label, f"{args.samples} samples per row (same seeds in every row); reference: "
                   f"{args.images} images; {args.resolution} px; Inception features: {args.feature_layer}-dim; "
                   f"teacher {teacher}")
    print(f"\nload average at end: {qs.load_average()}; wall time {time.perf_counter() - started:.0f} s")
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
