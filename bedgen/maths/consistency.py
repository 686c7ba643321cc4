"""The math of consistency distillation (Song et al. 2023, "Consistency Models") from a VP teacher.

A consistency model f(x, σ) maps any point of a probability-flow ODE trajectory to its
origin. It lives in the variance-exploding (VE) coordinates of Karras et al. 2022 (EDM):
x = x_0 + σ ε. A DDPM teacher lives in variance-preserving (VP) coordinates:
x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε. The two describe the same ODE (EDM, Sec. 2 and App. B):

    σ_t = √((1 - ᾱ_t) / ᾱ_t),   x_VE = x_VP / √ᾱ = x_VP · √(1 + σ²),

so a teacher is asked at the VP point of a VE state, at the (fractional) timestep whose
σ_t equals the state's σ. Pure functions over tensors; no network and no scheduler object.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

# (x̂_0, ε̂) at a VE state (x, σ): what a teacher's one evaluation gives an ODE step.
SplitFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

__all__ = [
    "karras_sigmas", "vp_sigmas", "timestep_of_sigma", "ve_to_vp", "euler_step", "heun_step",
    "pseudo_huber", "SplitFn",
]


def karras_sigmas(sigma_min: float, sigma_max: float, n: int, rho: float = 7.0) -> torch.Tensor:
    """σ_0 > … > σ_{n-1}: EDM Eq. 5, σ_i = (σ_max^{1/ρ} + i/(n-1) (σ_min^{1/ρ} - σ_max^{1/ρ}))^ρ.

    The grid diffusers' ``CMStochasticIterativeScheduler`` samples on, so a student is
    trained on exactly the σs it is later asked at."""
    ramp = np.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.from_numpy((hi + ramp * (lo - hi)) ** rho).float()


def vp_sigmas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """σ_t = √((1 - ᾱ_t) / ᾱ_t) for every timestep of a VP schedule (increasing in t)."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def timestep_of_sigma(sigma: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """The fractional VP timestep whose σ is ``sigma``: linear in log σ between the table's
    integer timesteps, clamped to [0, T-1]. DDPM UNets embed t sinusoidally, so they take
    fractional t; below σ_0 (the teacher's least noise) the teacher is asked at t = 0."""
    log_table = table.double().log().cpu().numpy()
    steps = np.arange(len(log_table), dtype=np.float64)
    t = np.interp(sigma.double().log().cpu().numpy(), log_table, steps)
    return torch.from_numpy(t).float().to(sigma.device)


def ve_to_vp(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x_VP = x_VE / √(1 + σ²), since ᾱ = 1 / (1 + σ²)."""
    return x / (1 + sigma.view(-1, *[1] * (x.ndim - 1)) ** 2).sqrt()


def _direction(split: SplitFn, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE in VE coordinates: (x - x̂_0) / σ = ε̂ (EDM Eq. 3)."""
    return split(x, sigma)[1]


def euler_step(split: SplitFn, x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """One Euler step of the ODE from σ to σ' (= DDIM, Song et al. 2021): x' = x + (σ' - σ) ε̂."""
    return x + _shape(sigma_to - sigma, x) * _direction(split, x, sigma)


def heun_step(split: SplitFn, x: torch.Tensor, sigma: torch.Tensor, sigma_to: torch.Tensor) -> torch.Tensor:
    """Heun's second-order step (EDM Alg. 1, lines 5-8): the solver consistency distillation
    used for its best results (Song et al. 2023, Sec. 6.1); two teacher evaluations."""
    h = _shape(sigma_to - sigma, x)
    d = _direction(split, x, sigma)
    x_euler = x + h * d
    return x + h * (d + _direction(split, x_euler, sigma_to)) / 2


def pseudo_huber(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample √(‖a - b‖² + c²) - c with c = 0.00054 √d (Song & Dhariwal 2023, "Improved
    Techniques for Training Consistency Models", Sec. 3.3): L2 near 0, L1 for outliers, no LPIPS
    network needed. Normalised by √d so its scale does not depend on the image size."""
    d = a[0].numel()
    c = 0.00054 * math.sqrt(d)
    squared = (a.float() - b.float()).pow(2).flatten(1).sum(1)
    return ((squared + c * c).sqrt() - c) / math.sqrt(d)


def _shape(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.ndim - 1)).to(like.dtype)
