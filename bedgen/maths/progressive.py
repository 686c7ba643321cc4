"""The math of progressive distillation (Salimans & Ho 2022, "Progressive Distillation for Fast
Sampling of Diffusion Models", Alg. 2) on a discrete DDPM schedule.

A student that samples in N DDIM steps learns, at each of its timesteps t, the x-prediction x̃
for which one DDIM step from z_t lands where two DDIM steps of the teacher (a 2N-step sampler)
land. In (α, σ) coordinates, α_t = √ᾱ_t and σ_t = √(1 - ᾱ_t), z_t = α_t x + σ_t ε.

The grid is diffusers' ``DDIMScheduler`` with ``timestep_spacing="trailing"``: at N steps it
evaluates the network at its ``timesteps`` and steps from t to t - T // N (``DDIMScheduler.step``),
where ᾱ_{-1} is the scheduler's ``final_alpha_cumprod`` (1: a clean image). The teacher's two
steps go t → t - T // (2N) → t - T // N, its own first 2N-step move, then on to where the
student's one step ends; so one student step with x̂ = x̃ is exactly the saved sampler's step
(tests/test_distill_progressive.py). Where T is a multiple of 2N the points are the 2N grid's own;
otherwise diffusers' rounding of trailing timesteps puts the middle point up to one timestep off
the 2N grid, where the teacher network is still smooth in t.

Pure functions over tensors; the DDIM move and the parameterisations are bedgen.maths.diffusion's.
"""

from __future__ import annotations

from typing import Callable

import torch

from .diffusion import ddim_move

# (x̂_0, ε̂) of a network at (z_t, t): what one DDIM step needs of the teacher.
SplitFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

__all__ = [
    "SplitFn", "stage_count", "stage_steps", "stage_of", "step_sizes", "abar_at", "ddim_step",
    "teacher_target", "x_target", "truncated_snr_weight",
]


def stage_count(start_steps: int, final_steps: int) -> int:
    """log₂(start / final): one stage per halving (Alg. 2's outer loop)."""
    return (start_steps // final_steps).bit_length() - 1


def stage_steps(start_steps: int, stage: int) -> int:
    """N, the student's DDIM steps in ``stage`` (0-based): stage 0 halves the teacher's start_steps."""
    return start_steps >> (stage + 1)


def stage_of(step: int, max_steps: int, stages: int) -> int:
    """The stage that optimizer step ``step`` (0-based) belongs to: the run's steps split into
    ``stages`` equal shares (within one step), in order."""
    return min(step * stages // max_steps, stages - 1)


def step_sizes(num_train_timesteps: int, student_steps: int) -> tuple[int, int]:
    """(the teacher's first move, the student's move) in timesteps: T // 2N and T // N, as
    ``DDIMScheduler.step`` moves at 2N and N steps."""
    return num_train_timesteps // (2 * student_steps), num_train_timesteps // student_steps


def abar_at(alphas_cumprod: torch.Tensor, t: torch.Tensor, final: float | torch.Tensor) -> torch.Tensor:
    """ᾱ_t for integer timesteps t ≥ -1, with ᾱ_{-1} = ``final`` (DDIMScheduler's final_alpha_cumprod)."""
    table = alphas_cumprod.to(t.device)
    inside = table[t.clamp(min=0).long()]
    return torch.where(t >= 0, inside, torch.as_tensor(final, dtype=table.dtype, device=t.device))


def ddim_step(split: SplitFn, z: torch.Tensor, t: torch.Tensor, abar_to: torch.Tensor,
              clip: float | None = None) -> torch.Tensor:
    """One DDIM step (η = 0) of the network ``split`` from (z, t) to ᾱ_to; with ``clip``, x̂ is
    clamped to [-clip, clip] and ε̂ kept, as ``DDIMScheduler.step`` does with clip_sample."""
    x0, eps = split(z, t)
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
    return ddim_move(x0, eps, _column(abar_to, z))


def teacher_target(split: SplitFn, z: torch.Tensor, t: torch.Tensor, t_mid: torch.Tensor, abar_mid: torch.Tensor,
                   abar_to: torch.Tensor, clip: float | None = None) -> torch.Tensor:
    """z'': two teacher DDIM steps, t → t_mid → the end point (Alg. 2, the teacher's 2N-step sampler)."""
    z_mid = ddim_step(split, z, t, abar_mid, clip)
    return ddim_step(split, z_mid, t_mid, abar_to, clip)


def x_target(z: torch.Tensor, z_end: torch.Tensor, abar: torch.Tensor, abar_end: torch.Tensor) -> torch.Tensor:
    """x̃ = (z'' - (σ''/σ_t) z_t) / (α'' - (σ''/σ_t) α_t) (Alg. 2): the x̂ whose DDIM step from z_t,
    z'' = α'' x̂ + σ'' (z_t - α_t x̂) / σ_t, is z''. At the last step (σ'' = 0) it is z'' itself."""
    a, s = _column(abar, z).sqrt(), (1 - _column(abar, z)).sqrt()
    a_end, s_end = _column(abar_end, z).sqrt(), (1 - _column(abar_end, z)).clamp(min=0).sqrt()
    ratio = s_end / s
    return (z_end - ratio * z) / (a_end - ratio * a)


def truncated_snr_weight(abar: torch.Tensor) -> torch.Tensor:
    """max(α²/σ², 1): the 'truncated SNR' weight of the x-space error (Salimans & Ho 2022, Sec. 4), so that at high noise, where α → 0, the loss does not vanish as the SNR weight would."""
    return (abar / (1 - abar)).clamp(min=1.0)


def _column(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *[1] * (like.ndim - 1)).to(like.dtype)
