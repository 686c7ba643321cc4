"""Score-based models with a σ ladder (SMLD: Song & Ermon 2019; NCSNv2: Song & Ermon 2020).

The network is diffusers' ``UNet2DModel`` with Gaussian Fourier features of log σ
(``time_embedding_type="fourier"``), which divides its output by σ: it returns the
score s(x, σ) directly, the NCSNv2/NCSN++ parameterisation. The training schedule
is a ``ScoreSdeVeScheduler`` (σ_min, σ_max, L levels), so a checkpoint is a
``ScoreSdeVePipeline`` directory that diffusers loads as well. Data are scaled to
[0, 1] as in NCSN and NCSN++.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from diffusers import ScoreSdeVeScheduler, UNet2DModel

from ..maths import score as sm
from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from ..core.images import signed_to_unit
from ..models.unet import build_unet
from .base import UNetFamily

# Images used to measure σ_max: the maximum pairwise distance saturates quickly.
SIGMA_MAX_SAMPLE = 4096
SIGMA_MAX_SEED = 0


def build_score_scheduler(config: BedgenConfig) -> ScoreSdeVeScheduler:
    s = config.score
    if s.sigma_max is None:
        raise BedgenError("score.sigma_max is not set; it is measured from the data when training starts")
    return ScoreSdeVeScheduler(
        num_train_timesteps=s.num_levels, sigma_min=s.sigma_min, sigma_max=s.sigma_max,
        snr=s.snr, correct_steps=s.corrector_steps,
    )


def sigma_max_of(dataset: Any, limit: int = SIGMA_MAX_SAMPLE) -> float:
    """NCSNv2 technique 1 on a seeded sample of the training images, in [0, 1] units."""
    rng = np.random.default_rng(SIGMA_MAX_SEED)
    count = min(len(dataset), limit)
    if count < 2:
        raise BedgenError("a score model needs at least two training images to choose its largest noise level")
    rows = np.sort(rng.choice(len(dataset), count, replace=False))
    images = torch.stack([dataset[int(i)]["image"] for i in rows]).float() / 255.0
    return sm.max_pairwise_distance(images)


class ScoreFamily(UNetFamily):
    """Denoising score matching over a geometric σ ladder, weighted by σ² ([SE19] Eq. 5-6)."""

    def __init__(self, config: BedgenConfig):
        self.config = config
        self.num_timesteps = config.score.num_levels
        self._sigmas: torch.Tensor | None = None

    def prepare(self, dataset: Any) -> None:
        """Choose σ_max from the data when the config leaves it open, and record it."""
        if self.config.score.sigma_max is None:
            measured = sigma_max_of(dataset)
            if not measured > self.config.score.sigma_min:
                raise BedgenError(
                    f"the training images are (nearly) identical (largest distance {measured:.4g}); "
                    "set score.sigma_max explicitly"
                )
            self.config.score.sigma_max = measured

    @property
    def sigmas(self) -> torch.Tensor:
        if self._sigmas is None:
            s = self.config.score
            if s.sigma_max is None:
                raise BedgenError("score.sigma_max is not set; call prepare(dataset) first")
            self._sigmas = sm.sigma_ladder(s.sigma_max, s.sigma_min, s.num_levels).float()
        return self._sigmas

    def build_model(self) -> UNet2DModel:
        return build_unet(self.config)

    def training_scheduler(self) -> ScoreSdeVeScheduler:
        return build_score_scheduler(self.config)

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample losses, level indices, the same losses detached)."""
        x = signed_to_unit(x0)
        levels = torch.randint(0, self.num_timesteps, (x.shape[0],), generator=generator, device=x.device)
        sigma = self.sigmas.to(x.device)[levels]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = x + sigma.view(-1, 1, 1, 1) * noise
        score = model(noisy, sigma).sample.float()  # the UNet already divided by σ
        losses = sm.dsm_loss(sigma.view(-1, 1, 1, 1) * score, noise)
        return losses, levels, losses.detach()


__all__ = ["ScoreFamily", "build_score_scheduler", "sigma_max_of"]
