"""Checkpoints: diffusers pipeline directories plus a ``bedgen.json`` self-description.

Layout written by bedgen (loadable by ``diffusers.DiffusionPipeline.from_pretrained``)::

    model_index.json          pipeline class + components
    unet/                     config.json + diffusion_pytorch_model.safetensors (EMA weights)
    scheduler/                scheduler_config.json (the training schedule)
    bedgen.json               family, preset, full config, provenance, metrics
    training_state/           only for resuming training; inference never reads it

Layouts read besides our own: any diffusers pipeline with ``unet/`` + ``scheduler/``
subfolders (DDPM, DDIM, consistency models) and the flat layout of
google/ddpm-ema-bedroom-256 (config.json + weights + scheduler_config.json at the
root). Pickled ``.bin`` weights are only ever read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import (
    CMStochasticIterativeScheduler, ConsistencyModelPipeline, DDIMPipeline, DDIMScheduler, DDPMPipeline, LDMPipeline,
    ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.version import __version__
from ..config.schema import BedgenConfig
from ..core.files import recover_interrupted_save, replace_dir_atomically, write_json
from ..core.errors import BedgenError, ModelNotFoundError
from ..core.hub import download, parse_hub_ref, resolve_ref
from ..models import autoencoders
from ..models.autoencoders import Autoencoder, find_autoencoder_folder, load_autoencoder_folder
from .run_folder import RunFolder, latest_in_run

BEDGEN_JSON = "bedgen.json"
FORMAT_VERSION = 1
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


@dataclass
class CheckpointInfo:
    """What a loaded checkpoint says about itself (``bedgen.json``, or inferred)."""

    ref: str
    path: Path
    layout: str  # "bedgen" | "diffusers" | "flat"
    family: str
    config: BedgenConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


# --- saving -------------------------------------------------------------------------


def save_checkpoint(
    path: str | Path,
    unet: UNet2DModel,
    training_scheduler: SchedulerMixin,
    config: BedgenConfig,
    metadata: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
    autoencoder: torch.nn.Module | None = None,
) -> Path:
    """Write a checkpoint directory atomically; ``extra(tmp_dir)`` may add files.

    With an ``autoencoder`` (latent diffusion) it is an ``LDMPipeline`` directory whose
    vqvae/ holds the autoencoder, its ``scaling_factor`` the latent scale.
    """

    def write(tmp: Path) -> None:
        if autoencoder is not None:
            pipe = LDMPipeline(vqvae=autoencoder, unet=unet, scheduler=training_scheduler)
        else:
            pipe = pipeline_class(training_scheduler)(unet=unet, scheduler=training_scheduler)
        pipe.save_pretrained(tmp, safe_serialization=True)
        _describe_into(tmp, config, metadata)
        if extra is not None:
            extra(tmp)

    replace_dir_atomically(Path(path), write)
    return Path(path)


def save_autoencoder_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    config: BedgenConfig,
    metadata: dict[str, Any] | None = None,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """A ``vae`` family checkpoint: vae/ (diffusers AutoencoderKL or VQModel) + bedgen.json.

    diffusers has no pipeline for a bare autoencoder, so there is no model_index.json;
    ``AutoencoderKL.from_pretrained(path, subfolder="vae")`` loads the network, and the
    folder is a valid ``--set latent.autoencoder=`` for latent diffusion.
    """

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "vae", safe_serialization=True)
        _describe_into(tmp, config, metadata)
        if extra is not None:
            extra(tmp)

    replace_dir_atomically(Path(path), write)
    return Path(path)


def _describe_into(folder: Path, config: BedgenConfig, metadata: dict[str, Any] | None) -> None:
    description = {
        "format": "bedgen-checkpoint",
        "format_version": FORMAT_VERSION,
        "family": config.family,
        "preset": config.preset,
        "config": config.to_dict(),
        "provenance": provenance(),
        **(metadata or {}),
    }
    write_json(folder / BEDGEN_JSON, description)


def pipeline_class(training_scheduler: SchedulerMixin) -> type:
    """The diffusers pipeline that samples this kind of model (named in model_index.json)."""
    if isinstance(training_scheduler, ScoreSdeVeScheduler):
        return ScoreSdeVePipeline
    if isinstance(training_scheduler, CMStochasticIterativeScheduler):
        return ConsistencyModelPipeline
    if isinstance(training_scheduler, DDIMScheduler):  # a progressive-distillation student
        return DDIMPipeline
    return DDPMPipeline


def provenance() -> dict[str, Any]:
    import diffusers

    return {
        "bedgen_version": __version__,
        "git_commit": _git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "diffusers_version": diffusers.__version__,
    }


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def load_checkpoint(ref: str) -> tuple[UNet2DModel, SchedulerMixin, CheckpointInfo]:
    """Load the network and its training schedule from a local directory or Hub id."""
    local_candidate = Path(str(ref)).expanduser()
    recover_interrupted_save(local_candidate)
    path = latest_in_run(resolve_ref(ref))
    unet_dir, scheduler_file, layout = find_layout(path, ref)
    if _weights_file(unet_dir) is None:
        hub = parse_hub_ref(ref) if not local_candidate.exists() else None
        if hub is None:
            raise BedgenError(
                f"model '{ref}' has no weights in {unet_dir} (expected {' or '.join(WEIGHT_NAMES)})"
            )
        # Only pickled weights on the Hub: fetch them; they are read weights-only below.
        path = download(hub, needs_pickle=True)
        unet_dir, scheduler_file, layout = find_layout(path, ref)
        if _weights_file(unet_dir) is None:
            raise BedgenError(f"model '{ref}' has no UNet weights on the Hub")
    unet = _load_unet(unet_dir, ref)
    scheduler = _load_scheduler(scheduler_file, ref)
    info = _describe(ref, path, layout, unet, scheduler)
    return unet, scheduler, info


def find_layout(path: Path, ref: str) -> tuple[Path, Path, str]:
    """Locate (unet folder, scheduler config file, layout name) inside a checkpoint."""
    if (path / "unet" / "config.json").is_file():
        scheduler = path / "scheduler" / "scheduler_config.json"
        layout = "bedgen" if (path / BEDGEN_JSON).is_file() else "diffusers"
        if not scheduler.is_file():
            raise BedgenError(f"model '{ref}' has unet/ but no scheduler/scheduler_config.json")
        return path / "unet", scheduler, layout
    if (path / "config.json").is_file() and (path / "scheduler_config.json").is_file():
        return path, path / "scheduler_config.json", "flat"
    raise ModelNotFoundError(
        f"'{ref}' is not a diffusion checkpoint: expected unet/ + scheduler/ folders "
        "(diffusers pipeline) or config.json + scheduler_config.json (flat layout)"
    )


def _weights_file(unet_dir: Path) -> Path | None:
    for name in WEIGHT_NAMES:
        if (unet_dir / name).is_file():
            return unet_dir / name
    return None


def _load_unet(unet_dir: Path, ref: str) -> UNet2DModel:
    config = json.loads((unet_dir / "config.json").read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise BedgenError(
            f"model '{ref}' has a {config['_class_name']} network; bedgen samples UNet2DModel checkpoints"
        )
    try:
        # diffusers reads .bin with torch.load(weights_only=True): no code in a pickle runs.
        unet = UNet2DModel.from_pretrained(unet_dir, low_cpu_mem_usage=False)
    except (OSError, ValueError, RuntimeError) as e:
        raise BedgenError(f"could not load the weights of '{ref}': {str(e).splitlines()[0]}") from e
    return unet.eval().requires_grad_(False)


def _load_scheduler(config_file: Path, ref: str) -> SchedulerMixin:
    import diffusers

    config = json.loads(config_file.read_text())
    name = config.get("_class_name", "DDPMScheduler")
    cls = getattr(diffusers, name, None)
    # Only scheduler classes that diffusers itself exports; never import by path.
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise BedgenError(f"model '{ref}' names an unknown scheduler class '{name}'")
    return cls.from_config(config)


def _describe(
    ref: str, path: Path, layout: str, unet: UNet2DModel, scheduler: SchedulerMixin
) -> CheckpointInfo:
    description_file = path / BEDGEN_JSON
    if description_file.is_file():
        metadata = json.loads(description_file.read_text())
        config = BedgenConfig.from_dict(metadata["config"]) if "config" in metadata else None
        family = metadata.get("family", config.family if config else "ddpm")
        return CheckpointInfo(str(ref), path, layout, family, config, metadata)
    learned_variance = unet.config.out_channels == 2 * unet.config.in_channels
    if type(scheduler).__name__ == "CMStochasticIterativeScheduler":
        family = "consistency"
    elif isinstance(scheduler, ScoreSdeVeScheduler):
        family = "smld"  # e.g. google/ncsnpp-bedroom-256
    else:
        family = "iddpm" if learned_variance else "ddpm"
    return CheckpointInfo(str(ref), path, layout, family)


def is_autoencoder_checkpoint(path: Path) -> bool:
    """A ``vae`` family checkpoint (or a bare autoencoder folder): no UNet to sample with."""

    has_unet = (path / "unet" / "config.json").is_file() or (path / "scheduler_config.json").is_file()
    return not has_unet and find_autoencoder_folder(path) is not None


def load_autoencoder_checkpoint(ref: str, path: Path) -> tuple[torch.nn.Module, CheckpointInfo]:

    folder = find_autoencoder_folder(path)
    if folder is None:
        raise ModelNotFoundError(f"'{ref}' holds no autoencoder")
    model = load_autoencoder_folder(folder, ref)
    description_file = path / BEDGEN_JSON
    metadata = json.loads(description_file.read_text()) if description_file.is_file() else {}
    config = BedgenConfig.from_dict(metadata["config"]) if "config" in metadata else None
    layout = "bedgen" if metadata else "diffusers"
    return model, CheckpointInfo(str(ref), path, layout, "vae", config, metadata)


def read_description(path: str | Path) -> dict[str, Any]:
    """The ``bedgen.json`` of a local checkpoint or run's latest (empty dict if none)."""
    try:
        file = latest_in_run(Path(path)) / BEDGEN_JSON
    except ModelNotFoundError:
        return {}
    return json.loads(file.read_text()) if file.is_file() else {}


def looks_like_checkpoint(path: Path) -> bool:
    if RunFolder(path).is_run():
        try:
            path = latest_in_run(path)
        except ModelNotFoundError:
            return False
    return (path / "unet" / "config.json").is_file() or (
        (path / "config.json").is_file() and (path / "scheduler_config.json").is_file()
    ) or is_autoencoder_checkpoint(path)


def load_autoencoder(ref: str) -> Autoencoder:
    """An ``AutoencoderKL`` or ``VQModel`` from a local folder or Hub id (safetensors only)."""
    try:
        path = latest_in_run(resolve_ref(ref, autoencoders.HUB_PATTERNS))
    except ModelNotFoundError as e:
        raise BedgenError(f"autoencoder: {e}") from e
    folder = autoencoders.find_autoencoder_folder(path)
    if folder is None:
        raise BedgenError(
            f"'{ref}' holds no autoencoder: expected an AutoencoderKL or VQModel config.json in vae/, "
            "vqvae/ or the folder itself (train one with --preset autoencoder-kl or autoencoder-vq)"
        )
    return autoencoders.load_autoencoder_folder(folder, ref)
