"""What every family shares: how its network is sampled and saved.

The trainer calls these instead of knowing about UNets or autoencoders, so the
one training loop serves every family (docs/architecture.md: latent = pixel + encoder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import torch

from ..core.images import to_signed


def as_saved(scheduler: Any) -> Any:
    """The schedule as a checkpoint reloads it. diffusers' ``from_config`` lets a sampler
    use its own default for keys the constructor filled in (``_use_default_values``, not
    saved) but not for keys read from a file, so e.g. DPM-Solver's timestep spacing would
    differ between a freshly built schedule and a loaded one. Previews and in-training FID
    then show what ``bedgen sample`` / ``bedgen eval`` give for the saved checkpoint."""
    return type(scheduler).from_config(json.loads(scheduler.to_json_string()))


class FamilyHooks:
    """The hooks a family may leave as they are: nothing to measure, adapt or resume."""

    def prepare(self, dataset: Any) -> None:
        """Measure what the config leaves open from the training data (e.g. σ_max)."""

    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """See the (all-process) losses of a step, e.g. for importance sampling of t."""

    def inputs(self, images: torch.Tensor, generator: torch.Generator, flip: torch.Tensor | None = None,
               indices: torch.Tensor | None = None) -> torch.Tensor:
        """What the loss sees, from uint8 images (B, 3, R, R): pixels in [-1, 1], mirrored where
        ``flip``. ``indices`` (training-set rows) let a family use what it computed in prepare()."""
        x = to_signed(images)
        if flip is not None:
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return x

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class UNetFamily(FamilyHooks):
    """Families whose trained network is a ``UNet2DModel`` sampled with a schedule."""

    network_folder = "unet"  # where a checkpoint keeps the (EMA) weights of the trained network

    def training_scheduler(self) -> Any:
        raise NotImplementedError

    def load_network(self, ref: str) -> torch.nn.Module:
        """The trained network of the model ``ref`` (fine-tuning starts from it)."""
        from ..storage.checkpoint import load_checkpoint

        return load_checkpoint(ref)[0]

    def autoencoder(self) -> torch.nn.Module | None:
        """The frozen first stage of latent models; None on pixels."""
        return None

    def preview(self, pipe: Any, count: int, device: str) -> list[Any]:
        """The images of a preview grid: samples from fixed seeds."""
        return pipe.generate(count, seed=0, device=device)

    def pipeline(self, model: torch.nn.Module, info: Any) -> Any:
        from ..sampling.pipeline import Pipeline

        return Pipeline(model, as_saved(self.training_scheduler()), info, autoencoder=self.autoencoder())

    def write_checkpoint(self, path: Path, model: torch.nn.Module, config: Any, metadata: dict[str, Any],
                         extra: Callable[[Path], None] | None = None) -> Path:
        from ..storage.checkpoint import save_checkpoint

        return save_checkpoint(path, model, self.training_scheduler(), config, metadata=metadata, extra=extra,
                               autoencoder=self.autoencoder())
