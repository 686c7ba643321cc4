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

from ..models import autoencoders as ae
from ..storage.checkpoint import load_autoencoder
from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from ..core.images import to_signed
from .ddpm import DiffusionFamily

SCALE_SEED = 0


class LatentDiffusionFamily(DiffusionFamily):
    """ε-MSE (or any ddpm objective) on z·s, z = E(x), s = 1 / std(z) (Rombach et al. 2022, Sec. 3.2)."""

    def __init__(self, config: BedgenConfig):
        super().__init__(config)
        self._autoencoder: ae.Autoencoder | None = None
        self._cache: LatentCache | None = None

    def prepare(self, dataset: Any) -> None:
        """Load the autoencoder, check it fits the UNet, fix the latent scale from the data
        and, with ``latent.cache``, encode the training set once."""
        model = self._load_checked()
        latent = self.config.latent
        if latent.scaling_factor is None:
            latent.scaling_factor = scale_from_data(model, dataset)
        model.register_to_config(scaling_factor=float(latent.scaling_factor))
        self._autoencoder = model
        if latent.cache:
            self._cache = LatentCache.build(model, dataset, mirrored=self.config.data.flip)

    def _load_checked(self) -> ae.Autoencoder:
        latent = self.config.latent
        if not (latent.autoencoder or "").strip():
            raise BedgenError(
                "ldm needs an autoencoder: --set latent.autoencoder=REF (a local folder or Hub id of an "
                "AutoencoderKL/VQModel, e.g. a run of --preset autoencoder-kl)"
            )
        model = load_autoencoder(latent.autoencoder)
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

    def inputs(self, images: torch.Tensor, generator: torch.Generator, flip: torch.Tensor | None = None,
               indices: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents: from the cache for training rows, else by encoding the pixels.
        Both draw the posterior sample from ``generator`` the same way, so a cached run
        follows the same loss curve as an uncached one."""
        if self._cache is None or indices is None:
            return self.encode(super().inputs(images, generator, flip), generator)
        parameters = self._cache.lookup(indices, flip).to(images.device)
        use = generator if self.config.latent.sample_posterior else None
        z = ae.latents_from(parameters, self.config.latent.kind, use)
        return z.float() * float(self.config.latent.scaling_factor)


class LatentCache:
    """Posterior parameters of every training image (and of its mirror image), row i = dataset[i]."""

    def __init__(self, parameters: torch.Tensor):
        self.parameters = parameters  # (N, 1 or 2 views, channels, h, w)

    @classmethod
    @torch.no_grad()
    def build(cls, model: ae.Autoencoder, dataset: Any, mirrored: bool, batch_size: int = 32,
              progress: bool = True) -> "LatentCache":
        from tqdm import tqdm

        rows = []
        device = next(model.parameters()).device
        bar = tqdm(total=len(dataset), desc="encoding latents", unit="img", dynamic_ncols=True, disable=not progress)
        for start in range(0, len(dataset), batch_size):
            stop = min(start + batch_size, len(dataset))
            x = to_signed(torch.stack([dataset[i]["image"] for i in range(start, stop)]).to(device))
            views = [x, x.flip(-1)] if mirrored else [x]
            rows.append(torch.stack([ae.posterior_parameters(model, v).float().cpu() for v in views], dim=1))
            bar.update(stop - start)
        bar.close()
        return cls(torch.cat(rows))

    def __len__(self) -> int:
        return len(self.parameters)

    def lookup(self, indices: torch.Tensor, flip: torch.Tensor | None) -> torch.Tensor:
        rows = self.parameters[indices.long().cpu()]
        if flip is None or rows.shape[1] == 1:
            return rows[:, 0]
        return torch.where(flip.cpu()[:, None, None, None], rows[:, 1], rows[:, 0])


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
        return to_signed(torch.stack([dataset[int(i)]["image"] for i in picked]))

    return ae.estimate_scaling_factor(model, images, count, batch)
