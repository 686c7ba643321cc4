"""The ``bedgen`` command line.

Every subcommand is a thin wrapper over the Python API. User errors exit with
code 2 and one line on stderr; progress goes to stderr through tqdm.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from .errors import BedgenError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"the seed must be a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"the seed must be 0 or more, got {value}")
    return value


def _add_sample(sub: argparse._SubParsersAction) -> None:
    from .device import DEVICES, DTYPES

    p = sub.add_parser("sample", help="generate images from a model")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hub id org/name[@revision]")
    p.add_argument("--num-images", "-n", type=_positive_int, default=4)
    p.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: the model's)")
    p.add_argument("--scheduler", default=None, help="sampler: ddpm, ddim, dpmsolver++, unipc, euler, euler-a, heun")
    p.add_argument("--seed", type=_seed, default=0, help="image i uses seed SEED+i")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    from .images import grid
    from .pipeline import MAX_IMAGES, load

    if args.num_images > MAX_IMAGES:
        raise BedgenError(f"--num-images must be at most {MAX_IMAGES}, got {args.num_images}")
    _check_writable(args.out)
    pipe = load(args.model)
    with TqdmProgress("sampling", unit="eval") as progress:
        result = pipe.sample(
            args.num_images, args.seed, args.steps, args.scheduler,
            args.batch_size, args.device, args.dtype, progress,
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


def _fraction(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None


def _fractions(text: str) -> list[float]:
    return [_fraction(part) for part in text.split(",") if part.strip()]


def _add_interpolate(sub: argparse._SubParsersAction) -> None:
    from .device import DEVICES, DTYPES
    from .interpolate import DEFAULT_FRAMES, DEFAULT_STEPS, DEFAULT_T, METHODS

    p = sub.add_parser("interpolate", help="interpolate between two images through noised states")
    p.add_argument("--model", required=True, help="local checkpoint directory or Hub id org/name[@revision]")
    p.add_argument("--image-a", required=True, type=Path, help="first image (any size; preprocessed like the training data)")
    p.add_argument("--image-b", required=True, type=Path, help="second image")
    p.add_argument("--t", type=_fraction, default=DEFAULT_T,
                   help="noise level as a fraction of the training steps: small = blends, large = new rooms")
    p.add_argument("--frames", type=_positive_int, default=DEFAULT_FRAMES, help="frames with λ evenly from 0 to 1")
    p.add_argument("--weights", type=_fractions, default=None, help="explicit λ values, e.g. 0.25,0.5 (overrides --frames)")
    p.add_argument("--method", choices=METHODS, default="noise")
    p.add_argument("--steps", type=_positive_int, default=DEFAULT_STEPS, help="DDIM steps between t and 0")
    p.add_argument("--seed", type=_seed, default=0, help="picks the shared noise (method 'noise')")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--dtype", choices=("auto", *DTYPES), default="auto")
    p.set_defaults(func=cmd_interpolate)


def cmd_interpolate(args: argparse.Namespace) -> int:
    from .interpolate import interpolate
    from .pipeline import load

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
          f"({result.method}, t={result.t:g} = step {result.timestep}, {result.steps} steps, {result.seconds:.1f} s)")
    return 0


class TqdmProgress:
    """A ``progress(done, total)`` callback drawing a tqdm bar, opened on first use
    so that argument errors found before any work print no empty bar."""

    def __init__(self, desc: str, unit: str):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


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
    from .registry import all_models

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


def _add_dataclass_flags(group: argparse._ArgumentGroup, cls: type, names: Sequence[str] | None, dest_prefix: str) -> None:
    """One --flag per config field, default None so only flags given override the preset."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if names is not None and field.name not in names:
            continue
        flag = "--" + field.name.replace("_", "-")
        group.add_argument(flag, dest=f"{dest_prefix}{field.name}", default=None,
                           help=f"(default: {field.default})", **_flag_type(hints[field.name]))


def _add_train(sub: argparse._SubParsersAction) -> None:
    from .config import PRESETS, TrainConfig
    from .data import DataConfig

    p = sub.add_parser("train", help="train a model (DDPM, improved DDPM) from a preset")
    p.add_argument("--data", help="image folder, LSUN LMDB, Hugging Face dataset id/dir, or a folder made by 'bedgen prepare'")
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--config", type=Path, default=None,
                   help="a JSON config file (e.g. train/presets/ddpm-mid.json) instead of --preset")
    p.add_argument("--resolution", type=_positive_int, default=None, help="image size (default: the preset's)")
    p.add_argument("--out", required=True, type=Path, help="run folder; also a model REF for 'bedgen sample'")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any config field, e.g. --set unet.dropout=0.1 (JSON values)")
    _add_dataclass_flags(p.add_argument_group("training"), TrainConfig, None, "train.")
    _add_dataclass_flags(p.add_argument_group("data"), DataConfig, DATA_FLAGS, "data.")
    p.set_defaults(func=cmd_train)


def train_config_from_args(args: argparse.Namespace):
    """The preset (or the resumed run's config) with the flags that were given applied."""
    from .checkpoint import latest_in_run, read_description
    from .config import BedgenConfig, override, preset

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
        field, _, raw = item.partition("=")
        if not raw:
            raise BedgenError(f"--set expects FIELD=VALUE, got {item!r}")
        try:
            changes[field.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            changes[field.strip()] = raw
    if args.resume and (args.out / "bedgen-run.json").is_file():
        base = BedgenConfig.from_dict(read_description(latest_in_run(args.out))["config"])
    elif getattr(args, "config", None) is not None:
        base = _config_file(args.config)
    else:
        base = preset(args.preset)
    config = override(base, changes)
    if not config.data.source:
        raise BedgenError("--data is required: an image folder, an LSUN LMDB, a dataset id or a prepared folder")
    return config


def _config_file(path: Path):
    from .config import BedgenConfig

    try:
        return BedgenConfig.from_dict(json.loads(path.read_text()))
    except FileNotFoundError:
        raise BedgenError(f"config file '{path}' does not exist") from None
    except json.JSONDecodeError as e:
        raise BedgenError(f"config file '{path}' is not valid JSON: {e}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import Trainer, TrainingDiverged

    config = train_config_from_args(args)
    trainer = Trainer(config, args.out, resume=args.resume)
    print(f"training {config.family}/{config.preset} at {config.resolution} px on {len(trainer.data)} images "
          f"({trainer.images_per_step} images/step, {trainer.max_steps} steps) -> {args.out}", file=sys.stderr)
    try:
        checkpoint = trainer.train()
    except TrainingDiverged as e:
        print(f"bedgen: {e}", file=sys.stderr)
        return 3
    print(f"checkpoint: {checkpoint}\nsample it with: bedgen sample --model {args.out} --out samples/")
    return 0


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="decode a dataset once into uint8 shards at the training resolution")
    p.add_argument("--src", required=True, help="image folder, LSUN LMDB or Hugging Face dataset id/dir")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--resolution", required=True, type=_positive_int)
    p.add_argument("--fraction", type=float, default=1.0)
    p.add_argument("--subset-seed", type=int, default=0)
    p.add_argument("--square", choices=("crop", "pad-white"), default="crop")
    p.add_argument("--image-column", default=None)
    p.add_argument("--shard-size", type=_positive_int, default=4096)
    p.set_defaults(func=cmd_prepare)


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data import DataConfig, prepare

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
    from .data import SQUARES
    from .device import DEVICES
    from .neighbours import NETS

    p = sub.add_parser("index", help="build an LPIPS nearest-neighbour index of a dataset (resumable)")
    p.add_argument("--data", required=True, help="image folder, LSUN LMDB, Hugging Face dataset id/dir, or prepared shards")
    p.add_argument("--out", required=True, type=Path, help="index folder; rerun the same command to resume")
    p.add_argument("--resolution", type=_positive_int, default=64, help="images are squared and resized like training data")
    p.add_argument("--net", choices=NETS, default="alex", help="LPIPS backbone")
    p.add_argument("--lpips-weights", type=Path, default=None, help=LPIPS_WEIGHTS_HELP)
    p.add_argument("--square", choices=SQUARES, default="crop")
    p.add_argument("--fraction", type=_fraction, default=1.0, help="index a reproducible subset in (0, 1]")
    p.add_argument("--image-column", default=None, help="Hugging Face datasets: the image column")
    p.add_argument("--batch-size", type=_positive_int, default=64)
    p.add_argument("--shard-size", type=_positive_int, default=4096, help="images per shard file")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_index)


def cmd_index(args: argparse.Namespace) -> int:
    from .neighbours import LpipsIndex, build_index, index_is_complete

    was_complete = index_is_complete(args.out)
    _check_writable(args.out)
    with TqdmProgress("embedding", unit="img") as progress:
        path = build_index(
            args.data, args.out, resolution=args.resolution, net=args.net, lpips_weights=args.lpips_weights,
            square=args.square, fraction=args.fraction, batch_size=args.batch_size, shard_size=args.shard_size,
            progress=progress, image_column=args.image_column, device=args.device,
        )
    index = LpipsIndex.open(path)
    skipped = index.manifest["skipped"]
    typical = index.typical_nn.get("median")
    print(("index already complete: " if was_complete else "indexed ")
          + f"{len(index)} images at {index.resolution} px (LPIPS {index.net}, {index.dim} dims) in {path}"
          + (f"; skipped {skipped} unreadable" if skipped else "")
          + (f"; typical nearest-neighbour LPIPS {typical:.4f}" if typical is not None else ""))
    return 0


def _add_neighbours(sub: argparse._SubParsersAction) -> None:
    from .device import DEVICES

    p = sub.add_parser(
        "neighbours", help="the indexed images nearest to an image under LPIPS (exact)",
        description="Prints one JSON object per neighbour on stdout (rank, key, path or source, lpips), "
                    "nearest first; the memorisation verdict goes to stderr.",
    )
    p.add_argument("--index", required=True, type=Path, help="a folder made by 'bedgen index'")
    p.add_argument("--image", required=True, type=Path, help="the query image (any size; preprocessed like the index)")
    p.add_argument("-k", type=_positive_int, default=5, help="how many neighbours")
    p.add_argument("--lpips-weights", type=Path, default=None,
                   help="the backbone weights the index was built with, if not at the path it records")
    p.add_argument("--exhaustive", action="store_true", help="scan every stored embedding instead of the PCA prefilter")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.set_defaults(func=cmd_neighbours)


def cmd_neighbours(args: argparse.Namespace) -> int:
    from .neighbours import MEMORISATION_FACTOR, LpipsIndex, embedder_for, shared_embedder

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
        verdict = (f"nearest LPIPS {result.nearest:.4f} vs typical nearest-neighbour LPIPS {result.typical_nn:.4f} "
                   f"in the index: " + ("POSSIBLE MEMORISED COPY" if result.memorised else "not a near-copy")
                   + f" (threshold {MEMORISATION_FACTOR} x typical)")
    print(verdict, file=sys.stderr)
    return 0


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction], None], ...] = (
    _add_sample, _add_interpolate, _add_models, _add_train, _add_prepare, _add_index, _add_neighbours,
)


class _Parser(argparse.ArgumentParser):
    """Argument errors in one line (with a pointer to --help), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

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
