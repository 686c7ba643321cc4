"""Subject fine-tuning with prior preservation: DreamBooth's idea (Ruiz et al. 2023) without a prompt.

``bedgen finetune --model REF --instance-data DIR --out RUN`` does four things:

1. Copies the source model's config (network, schedule, sampler) and starts the one
   trainer from its weights (``finetune.init_from``); the instance images are the data.
2. Class images: ``--class-data DIR``, or ``--num-class-images N`` samples of the source
   model written once to ``RUN/class-images`` (seeds CLASS_SEED .. CLASS_SEED+N-1, apart
   from the seeds reports and previews use; a rerun continues where an interrupted one
   stopped, so the images never change).
3. Trains on pairs (instance image, class image) with per-sample weights 1 and λ:
   L = E ℓ(x_instance) + λ E ℓ(x_class), λ = ``--prior-weight`` (Ruiz et al. 2023, Eq. 2,
   the conditioning dropped). λ = 0 or no class images fine-tunes on the instances alone.
4. Reports, for the source and the fine-tuned model on the same seeds,
   - LPIPS to the nearest instance (mean over samples; lower = closer to the subject),
   - mean pairwise LPIPS between samples (higher = more diverse; collapse onto the
     instances shows as a drop),
   in ``RUN/finetune-report.json`` and the final checkpoint's bedgen.json.
"""

from __future__ import annotations

import copy
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from ..config.schema import BedgenConfig
from ..config.schema import DataConfig
from ..data.datasets import ImageDataset, open_dataset
from ..data.training_data import PriorPreservationDataset
from ..core.errors import BedgenError
from ..core.files import atomic_write
from ..storage.run_folder import FINETUNE_REPORT_JSON, RunFolder

CLASS_IMAGES = "class-images"
REPORT_DIR = "finetune-report"
CLASS_SEED = 1_000_000  # class-i.png is the sample of seed CLASS_SEED + i
ProgressFn = Callable[[int, int], None]


# --- the command ----------------------------------------------------------------------------


@dataclass
class FinetuneRequest:
    model: str
    instance_data: str
    out: Path
    prior_weight: float = 1.0
    class_data: str | None = None
    num_class_images: int = 100
    steps: int = 400
    lr: float | None = None  # None = a tenth of the source model's training rate
    batch_size: int = 4  # instance images per step (as many class images join them)
    seed: int = 0
    report_samples: int = 16
    lpips_weights: str | None = None  # torchvision AlexNet weights file; None = torchvision's download
    report: bool = True


def check_instances(source: str, model: BedgenConfig) -> ImageDataset:
    """The instance images as the model sees them, or an error a user can act on before anything is written."""
    if not str(source or "").strip():
        raise BedgenError("give --instance-data: a folder with the instance images (a handful is enough)")
    try:
        return open_dataset(DataConfig(source=str(source), square=model.data.square), model.resolution, "train")
    except BedgenError as e:
        raise BedgenError(f"fine-tuning needs at least one instance image: {e}") from e


def finetune_config(request: FinetuneRequest, source: BedgenConfig, class_data: str | None) -> BedgenConfig:
    """The source's config with the run's data, init and optimisation settings."""
    config = copy.deepcopy(source)
    config.data = DataConfig(source=str(request.instance_data), square=source.data.square, flip=source.data.flip)
    config.finetune.init_from = request.model
    config.finetune.class_data = class_data
    config.finetune.prior_weight = float(request.prior_weight)
    if config.family == "ldm":
        config.latent.autoencoder = request.model  # the checkpoint carries its own first stage
    t = config.train
    t.max_steps, t.epochs = request.steps, None
    t.lr = request.lr if request.lr is not None else source.train.lr / 10
    t.batch_size, t.grad_accum, t.seed = request.batch_size, 1, request.seed
    t.warmup_steps = min(t.warmup_steps, request.steps // 10)
    t.lr_schedule = "constant"
    t.checkpoint_every, t.preview_every = request.steps, max(1, request.steps // 4)
    t.validate_every, t.early_stop_patience, t.fid_every = 0, 0, 0
    config.validate()
    return config


def source_config(model: str) -> BedgenConfig:
    from ..storage.checkpoint import latest_in_run, read_description
    from ..core.hub import resolve_ref

    description = read_description(latest_in_run(resolve_ref(model)))
    if "config" not in description:
        raise BedgenError(
            f"'{model}' has no bedgen.json config, so bedgen cannot rebuild its network for training; "
            "fine-tune a model trained by bedgen (a run folder, checkpoint or Hub id with bedgen.json)"
        )
    config = BedgenConfig.from_dict(description["config"])
    if config.family == "consistency":
        raise BedgenError("consistency models cannot be fine-tuned by bedgen (no consistency training loss)")
    if config.family == "progressive":
        raise BedgenError("progressive-distillation students cannot be fine-tuned by bedgen (their loss needs "
                          "the teacher's DDIM steps, not images)")
    return config


def run_finetune(request: FinetuneRequest, resume: bool = False, progress: bool = True,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Everything ``bedgen finetune`` does; returns the report (or {} with report=False)."""
    from ..models.lpips import LpipsEmbedder
    from .trainer import Trainer

    out = Path(request.out)
    if not resume and RunFolder(out).is_run():
        raise BedgenError(f"'{out}' already holds a run; pass --resume to continue it or choose a new --out")
    if resume and RunFolder(out).is_run():
        config = _resumed_config(out)
        request.model = config.finetune.init_from or request.model
        request.instance_data = config.data.source
    else:
        config = None
    source = source_config(request.model)
    instances = check_instances(request.instance_data, source)
    embedder = LpipsEmbedder("alex", request.lpips_weights) if request.report else None  # fails early
    if embedder is not None:
        embedder.layer_shapes(source.resolution)  # too small for AlexNet -> error now, not after training
    if config is None:
        class_data = _class_data(request, out, progress)
        config = finetune_config(request, source, class_data)
    trainer = Trainer(config, out, resume=resume, progress=progress, on_event=on_event)
    if progress:
        pairs = isinstance(trainer.data, PriorPreservationDataset)
        extra = f" + {len(trainer.data.classes)} class images (λ = {request.prior_weight})" if pairs else ""
        print(f"fine-tuning {request.model} on {len(instances)} instance image(s){extra}, "
              f"{trainer.max_steps} steps -> {out}", file=sys.stderr, flush=True)
        print(f"precision: {trainer.precision}", file=sys.stderr, flush=True)
    checkpoint = trainer.train()
    if embedder is None:
        return {}
    report = measure(request.model, str(checkpoint), instances, embedder, request.report_samples, request.seed,
                     out / REPORT_DIR)
    report.update(prior_weight=config.finetune.prior_weight, class_data=config.finetune.class_data,
                  class_images=len(trainer.data.classes) if isinstance(trainer.data, PriorPreservationDataset) else 0,
                  steps=trainer.state.step, checkpoint=str(checkpoint))
    _write_report(out, checkpoint, report)
    return report


def _resumed_config(out: Path) -> BedgenConfig:
    """The config the run was started with (bedgen-run.json has it from the first moment)."""
    config = BedgenConfig.from_dict(RunFolder(out).state()["config"])
    if not config.finetune.init_from:
        raise BedgenError(f"'{out}' is a training run, not a fine-tuning run; resume it with 'bedgen train --resume'")
    return config


def _class_data(request: FinetuneRequest, out: Path, progress: bool) -> str | None:
    if request.prior_weight == 0:
        return None
    if request.class_data:
        return str(Path(request.class_data).expanduser().resolve())
    if request.num_class_images < 1:
        return None
    from ..sampling.pipeline import load

    folder = out / CLASS_IMAGES
    generate_class_images(load(request.model), folder, request.num_class_images, progress=progress)
    return str(folder.resolve())


def generate_class_images(pipe: Any, folder: Path, count: int, batch_size: int = 16, progress: bool = True,
                          device: str = "auto") -> list[Path]:
    """Samples of the source model, class-i.png from seed CLASS_SEED + i; existing files are kept (resumable)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"class-{i:05d}.png" for i in range(count)]
    missing = [i for i, path in enumerate(paths) if not path.is_file()]
    bar = _bar(len(missing), "class images") if progress and missing else None
    for first, n in _runs(missing, batch_size):
        # one call per run of consecutive files: each image depends on its own seed only
        for i, image in enumerate(pipe.generate(n, seed=CLASS_SEED + first, device=device), start=first):
            # a killed run never leaves half an image behind
            atomic_write(paths[i], lambda handle: image.save(handle, format="PNG"))
        if bar is not None:
            bar.update(n)
    if bar is not None:
        bar.close()
    return paths


def _runs(numbers: list[int], longest: int) -> list[tuple[int, int]]:
    """Sorted numbers as (first, length) runs of consecutive values, each at most ``longest`` long."""
    runs: list[tuple[int, int]] = []
    for number in numbers:
        if runs and runs[-1][0] + runs[-1][1] == number and runs[-1][1] < longest:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((number, 1))
    return runs


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", dynamic_ncols=True)


# --- the report ------------------------------------------------------------------------------


def measure(source_ref: str, finetuned_ref: str, instances: ImageDataset, embedder: Any, samples: int, seed: int,
            sheets: Path | None = None) -> dict[str, Any]:
    """LPIPS to the nearest instance and mean pairwise LPIPS, for source and fine-tuned samples."""
    from ..core.images import grid
    from ..sampling.pipeline import load

    instance_phi = embedder.embed(torch.stack([instances[i]["image"] for i in range(len(instances))]))
    report: dict[str, Any] = {"kind": "finetune", "samples": samples, "seed": seed, "instances": len(instances),
                              "lpips": {"net": embedder.net, "weights": str(embedder.weights or "torchvision")}}
    for name, ref in (("source", source_ref), ("finetuned", finetuned_ref)):
        pipe = load(ref)
        images = pipe.generate(samples, seed=seed)
        phi = embedder.embed(_uint8(images, instances.resolution))
        report[name] = {"lpips_to_nearest_instance": nearest_distance(phi, instance_phi),
                        "mean_pairwise_lpips": mean_pairwise_distance(phi)}
        if sheets is not None:
            sheets.mkdir(parents=True, exist_ok=True)
            grid(images).save(sheets / f"{name}.png")
    return report


def _uint8(images: list[Image.Image], resolution: int) -> torch.Tensor:
    arrays = [np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BICUBIC)) for im in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """LPIPS(x, y) = ‖φ(x) − φ(y)‖² for the φ of :class:`bedgen.models.lpips.LpipsEmbedder`
    (Zhang et al. 2018, Eq. 1: unit-normalised, channel-weighted, spatially averaged)."""
    a, b = a.double(), b.double()
    return (a[:, None, :] - b[None, :, :]).pow(2).sum(-1)


def nearest_distance(samples: torch.Tensor, instances: torch.Tensor) -> float:
    """Mean over samples of the LPIPS to the closest instance image."""
    return float(squared_distances(samples, instances).min(dim=1).values.mean())


def mean_pairwise_distance(samples: torch.Tensor) -> float:
    """Mean LPIPS over the N(N−1)/2 distinct pairs of samples."""
    n = len(samples)
    if n < 2:
        raise BedgenError("mean pairwise LPIPS needs at least 2 samples")
    d = squared_distances(samples, samples)
    upper = torch.triu_indices(n, n, offset=1)
    return float(d[upper[0], upper[1]].mean())


def _write_report(out: Path, checkpoint: Path, report: dict[str, Any]) -> None:
    from ..storage.checkpoint import BEDGEN_JSON
    from ..core.files import write_json

    write_json(out / FINETUNE_REPORT_JSON, report)
    description_file = Path(checkpoint) / BEDGEN_JSON
    description = json.loads(description_file.read_text())
    description["metrics"] = [m for m in description.get("metrics") or [] if m.get("kind") != "finetune"] + [report]
    write_json(description_file, description)
