"""Latent diffusion (Rombach et al. 2022): DDPM on the scaled latents of a frozen autoencoder.

Latent = pixel + encoder: the loss encodes the batch and hands the latents to
the pixel family's loss, so the trainer and the diffusion math are the same as
for ``ddpm``. The checkpoint is an ``LDMPipeline`` directory (vqvae/ + unet/ +
scheduler/); the autoencoder's ``scaling_factor`` holds the latent scale, as
diffusers' pipeline expects.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .. import autoencoders as ae
from ..config import BedgenConfig
from ..errors import BedgenError
from .ddpm import DiffusionFamily

SCALE_SEED = 0


class LatentDiffusionFamily(DiffusionFamily):
    """ε-MSE (or any ddpm objective) on z·s, z = E(x), s = 1 / std(z) (Rombach et al. 2022, Sec. 3.2)."""

    def __init__(self, config: BedgenConfig):
        super().__init__(config)
        self._autoencoder: ae.Autoencoder | None = None

    def prepare(self, dataset: Any) -> None:
        """Load the autoencoder, check it fits the UNet, and fix the latent scale from the data."""
        model = self._load_checked()
        latent = self.config.latent
        if latent.scaling_factor is None:
            latent.scaling_factor = scale_from_data(model, dataset)
        model.register_to_config(scaling_factor=float(latent.scaling_factor))
        self._autoencoder = model

    def _load_checked(self) -> ae.Autoencoder:
        latent = self.config.latent
        if not (latent.autoencoder or "").strip():
            raise BedgenError(
                "ldm needs an autoencoder: --set latent.autoencoder=REF (a local folder or Hub id of an "
                "AutoencoderKL/VQModel, e.g. a run of --preset autoencoder-kl)"
            )
        model = ae.load_autoencoder(latent.autoencoder)
        check_fits(model, self.config)
        return model

    def autoencoder(self) -> ae.Autoencoder:
        if self._autoencoder is None:
            raise BedgenError("the ldm family has no autoencoder yet; call prepare(dataset) first")
        return self._autoencoder

    def encode(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """Scaled latents of a pixel batch; the autoencoder stays frozen."""
        model = self.autoencoder()
        if next(model.parameters()).device != x.device:
            model.to(x.device)
        use = generator if self.config.latent.sample_posterior else None
        with torch.no_grad():
            return ae.encode(model, x, use).float() * float(self.config.latent.scaling_factor)

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return super().loss(model, self.encode(x0, generator), generator)


def check_fits(model: ae.Autoencoder, config: BedgenConfig) -> None:
    """The errors a mismatched autoencoder would otherwise cause deep inside training."""
    latent = config.latent
    kind = ae.kind_of(model)
    if kind != latent.kind:
        raise BedgenError(
            f"the autoencoder '{latent.autoencoder}' is a {type(model).__name__} ({kind}) but this preset expects "
            f"a {'VQModel' if latent.kind == 'vq' else 'AutoencoderKL'}: use --preset ldm-{kind} "
            f"or --set latent.kind={kind}"
        )
    channels = ae.latent_channels(model)
    if channels != config.in_channels:
        raise BedgenError(
            f"the autoencoder '{latent.autoencoder}' has {channels} latent channels but the UNet takes "
            f"{config.in_channels}: set --set in_channels={channels}"
        )
    factor = ae.downsample_factor(model)
    if factor != latent.downsample_factor:
        raise BedgenError(
            f"the autoencoder '{latent.autoencoder}' downsamples by f = {factor} but the config says "
            f"{latent.downsample_factor}: set --set latent.downsample_factor={factor}"
        )
    config.validate()  # the resolution must still divide by f x the UNet's own factor


def scale_from_data(model: ae.Autoencoder, dataset: Any, count: int = ae.SCALE_SAMPLE) -> float:
    """1 / std of the latents of a seeded sample of the training images."""
    rng = np.random.default_rng(SCALE_SEED)
    count = min(len(dataset), count)
    rows = np.sort(rng.choice(len(dataset), count, replace=False))
    batch = 32

    def images(start: int) -> torch.Tensor:
        picked = rows[start : start + batch]
        return torch.stack([dataset[int(i)]["image"] for i in picked]).float() / 127.5 - 1

    return ae.estimate_scaling_factor(model, images, count, batch)
