"""Score-based generative modelling with a ladder of noise levels, as pure functions.

References:
  [SE19] Song & Ermon 2019, "Generative Modeling by Estimating Gradients of the Data
         Distribution" (NCSN): noise-conditional score network, denoising score
         matching over a geometric σ ladder, annealed Langevin dynamics (Alg. 1).
  [SE20] Song & Ermon 2020, "Improved Techniques for Training Score-Based Generative
         Models" (NCSNv2): technique 1 (σ_1 = max pairwise distance), technique 2
         (ratio of consecutive σ), final denoising step.
  [S21]  Song et al. 2021, "Score-Based Generative Modeling through SDEs": the VE SDE
         and predictor-corrector sampling (Alg. 2 predictor, Alg. 4 corrector).

Conventions: data lie in [0, 1] (as in NCSN and NCSN++, so bedgen's score checkpoints
sample the same in diffusers' ScoreSdeVePipeline); ``sigmas`` are ordered from
largest to smallest; a score function maps (x, σ per sample) to ∇ₓ log p_σ(x).
Every random draw takes per-image generators, so image i of a batch does not
depend on the other images in it.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OnEval = Callable[[], None]
OnLevel = Callable[[int, torch.Tensor], None]


def sigma_ladder(sigma_max: float, sigma_min: float, levels: int) -> torch.Tensor:
    """σ_1 > ... > σ_L, a geometric sequence ([SE19] Sec. 4.2), float64."""
    if not sigma_max > sigma_min > 0:
        raise ValueError(f"need sigma_max > sigma_min > 0, got {sigma_max} and {sigma_min}")
    if levels < 1:
        raise ValueError(f"need at least one noise level, got {levels}")
    if levels == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    return torch.exp(torch.linspace(math.log(sigma_max), math.log(sigma_min), levels, dtype=torch.float64))


def max_pairwise_distance(x: torch.Tensor, chunk: int = 1024) -> float:
    """max_{i≠j} ‖x_i − x_j‖₂ over a set of images: σ_1 by [SE20] technique 1.

    Chunked so that 10⁴–10⁵ images fit in memory; computed in float64 because the
    ‖a‖² + ‖b‖² − 2ab expansion cancels badly for near-duplicates.
    """
    flat = x.reshape(x.shape[0], -1).double()
    if flat.shape[0] < 2:
        raise ValueError("need at least two images to measure a pairwise distance")
    norms = flat.pow(2).sum(1)
    best = 0.0
    for start in range(0, flat.shape[0], chunk):
        block = flat[start : start + chunk]
        d2 = norms[start : start + chunk, None] + norms[None, :] - 2 * block @ flat.T
        best = max(best, float(d2.max().clamp_min(0)))
    return math.sqrt(best)


def technique2_ratio_objective(gamma: float, dim: int) -> float:
    """Φ(√(2D)(γ−1) + 3γ) − Φ(√(2D)(γ−1) − 3γ), which [SE20] technique 2 sets to ≈ 0.5.

    γ = σ_{i−1}/σ_i; the objective measures how much of the mass of one noise
    level's shell lies within 3 std of the next, so Langevin can move between them.
    """
    normal = torch.distributions.Normal(0.0, 1.0)
    a = math.sqrt(2 * dim) * (gamma - 1)
    return float(normal.cdf(torch.tensor(a + 3 * gamma)) - normal.cdf(torch.tensor(a - 3 * gamma)))


def levels_by_technique2(sigma_max: float, sigma_min: float, dim: int, target: float = 0.5) -> int:
    """The number of geometric levels whose ratio γ meets technique 2's ≈ ``target``."""
    low, high = 1.0 + 1e-9, 2.0  # the objective falls as γ grows
    for _ in range(100):
        mid = (low + high) / 2
        if technique2_ratio_objective(mid, dim) > target:
            low = mid
        else:
            high = mid
    gamma = (low + high) / 2
    return max(2, math.ceil(math.log(sigma_max / sigma_min) / math.log(gamma)) + 1)


def dsm_loss(sigma_times_score: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Per-sample denoising score matching loss weighted by λ(σ) = σ² ([SE19] Eq. 5–6).

    With x̃ = x + σz the DSM target is −z/σ, so λ(σ)·½‖s(x̃, σ) + z/σ‖² = ½‖σ s + z‖².
    Averaged over dimensions instead of summed, so the learning rate does not depend
    on the resolution (a constant factor 1/D of the paper's objective).
    """
    return 0.5 * (sigma_times_score + noise).pow(2).flatten(1).mean(1)


def langevin_step_size(eps: float, sigma: float, sigma_last: float) -> float:
    """α_i = ε · σ_i² / σ_L² ([SE19] Alg. 1, line 3)."""
    return eps * sigma**2 / sigma_last**2


def per_image_noise(like: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """One standard normal draw per image, each from its own (CPU) generator."""
    noise = torch.stack([torch.randn(like.shape[1:], generator=g, dtype=torch.float32) for g in generators])
    return noise.to(device=like.device, dtype=like.dtype)


def _sigma_batch(sigma: float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(sigma), device=x.device, dtype=torch.float32)


def annealed_langevin(
    score: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    steps_per_level: int,
    eps: float,
    generators: list[torch.Generator],
    denoise: bool = True,
    on_eval: OnEval | None = None,
    on_level: OnLevel | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics ([SE19] Alg. 1), then [SE20]'s final denoising step.

    For each σ_i: T times, x ← x + (α_i/2)·s(x, σ_i) + √α_i · z, α_i = ε σ_i²/σ_L².
    The final step x ← x + σ_L² s(x, σ_L) is Tweedie's posterior mean, which removes
    the last level's noise that Langevin leaves in the samples.
    """
    sigma_last = float(sigmas[-1])
    for level, sigma in enumerate(sigmas.tolist()):
        alpha = langevin_step_size(eps, sigma, sigma_last)
        for _ in range(steps_per_level):
            grad = score(x, _sigma_batch(sigma, x))
            x = x + 0.5 * alpha * grad + math.sqrt(alpha) * per_image_noise(x, generators)
            if on_eval is not None:
                on_eval()
        if on_level is not None:
            on_level(level, x)
    if denoise:
        x = x + sigma_last**2 * score(x, _sigma_batch(sigma_last, x))
        if on_eval is not None:
            on_eval()
    return x


def ve_predictor_corrector(
    score: ScoreFn,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    snr: float,
    corrector_steps: int,
    generators: list[torch.Generator],
    on_eval: OnEval | None = None,
    on_level: OnLevel | None = None,
) -> torch.Tensor:
    """VE-SDE predictor-corrector sampling ([S21] Alg. 2 with the Langevin corrector of Alg. 4).

    Corrector: ε = 2 (r ‖z‖ / ‖s‖)², x ← x + ε s + √(2ε) z, with the norms taken per
    image (the reference code averages them over the batch, which would make an
    image depend on its batch-mates). Predictor (reverse diffusion):
    x ← x + (σ_i² − σ_{i+1}²) s(x, σ_i) + √(σ_i² − σ_{i+1}²) z, with σ_{N+1} = 0 and
    no noise on the last step, so the result is the noise-free mean.
    """
    levels = sigmas.tolist()
    for i, sigma in enumerate(levels):
        for _ in range(corrector_steps):
            grad = score(x, _sigma_batch(sigma, x))
            z = per_image_noise(x, generators)
            step = 2 * (snr * _norms(z) / _norms(grad).clamp_min(1e-12)).pow(2)
            x = x + step * grad + (2 * step).sqrt() * z
            if on_eval is not None:
                on_eval()
        nxt = levels[i + 1] if i + 1 < len(levels) else 0.0
        variance = sigma**2 - nxt**2
        x = x + variance * score(x, _sigma_batch(sigma, x))
        if nxt > 0:
            x = x + math.sqrt(variance) * per_image_noise(x, generators)
        if on_eval is not None:
            on_eval()
        if on_level is not None:
            on_level(i, x)
    return x


def _norms(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norms shaped to broadcast against images."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.ndim - 1)))
