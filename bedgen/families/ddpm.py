"""DDPM (Ho et al. 2020) and improved DDPM (Nichol & Dhariwal 2021) on pixels."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..maths import diffusion as dm
from ..config.schema import BedgenConfig
from ..models.unet import build_training_scheduler, build_unet
from .base import UNetFamily


class DiffusionFamily(UNetFamily):
    """ε / v / x0-prediction UNet; MSE loss or the hybrid loss with a learned variance."""

    def __init__(self, config: BedgenConfig):
        self.config = config
        self.scheduler = build_training_scheduler(config)
        self.schedule = dm.Schedule.from_scheduler(self.scheduler)
        self.num_timesteps = config.diffusion.num_train_timesteps
        importance = config.diffusion.timestep_sampling == "importance"
        self.importance = dm.ImportanceSampler(self.num_timesteps) if importance else None

    def build_model(self) -> UNet2DModel:
        return build_unet(self.config)

    def training_scheduler(self) -> SchedulerMixin:
        return self.scheduler

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(importance-weighted per-sample losses to optimise, timesteps, raw losses).

        The importance sampler must see the raw losses: weighted ones are ~constant
        across t by construction and would flatten its distribution.
        """
        schedule = self.schedule.to(x0.device)
        t, weights = self._timesteps(x0.shape[0], generator, x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = dm.q_sample(schedule, x0, t, noise)  # Ho et al. 2020, Eq. 4
        out = model(xt, t).sample.float()
        d = self.config.diffusion
        if d.loss_type == "hybrid":  # Nichol & Dhariwal 2021, Eq. 16
            losses = dm.hybrid_loss(schedule, out, x0, xt, t, noise, d.vlb_weight, self.num_timesteps)
        else:
            target = self._target(schedule, x0, noise, t)
            losses = (out[:, : x0.shape[1]] - target).pow(2).mean(dim=(1, 2, 3))  # L_simple, Eq. 14
        return losses * weights, t, losses.detach()

    def _target(self, schedule: dm.Schedule, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kind = self.config.diffusion.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        # v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0 (Salimans & Ho 2022, Sec. 4)
        a = dm.extract(schedule.alphas_cumprod, t, x0.ndim)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def _timesteps(self, n: int, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self.importance is not None:
            return self.importance.sample(n, generator, device)
        t = torch.randint(0, self.num_timesteps, (n,), generator=generator, device=device)
        return t, torch.ones(n, device=device)

    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        """Feed the (all-process) losses of a step to the importance sampler."""
        if self.importance is not None:
            self.importance.update(t.cpu(), losses.detach().float().cpu())

    def state_dict(self) -> dict[str, Any]:
        return {"importance": self.importance.state_dict()} if self.importance else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.importance is not None and "importance" in state:
            self.importance.load_state_dict(state["importance"])
