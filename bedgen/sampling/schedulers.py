"""Samplers by name, configured from the checkpoint's training schedule.

Every checkpoint carries the scheduler it was trained with (betas, timesteps,
prediction type). A sampler name picks a diffusers scheduler class and builds it
``from_config`` of that training schedule, so the noise levels always match what
the network learned; only the solver changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers import (
    CMStochasticIterativeScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    ScoreSdeVeScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.checks import whole_number
from ..core.errors import BedgenError
from ..maths.diffusion import split_prediction
from ..maths.score import sigma_ladder


class DDIMClipMixin:
    """Clip x̂0 the way DDIM does, in a multistep data-prediction solver.

    DDIM with ``clip_sample`` (Song et al. 2021, Eq. 12, as in Ho et al. 2020's code) moves to
    x_s = √ᾱ_s clip(x̂0) + √(1-ᾱ_s) ε̂ with the network's own ε̂. The solvers' ``thresholding``
    instead steps with clip(x̂0) and the ε that clip(x̂0) implies at x_t, which carries the
    clipped-off part of x̂0 into the noise term and on to every later step. Moving x_t first to
    x_t + √ᾱ_t (clip(x̂0) - x̂0) = √ᾱ_t clip(x̂0) + √(1-ᾱ_t) ε̂ makes the solver's implied ε the
    network's again: its first-order step is then exactly DDIM's, and its higher-order terms
    use the clipped x̂0's. (bench/RESULTS.md measures both ways.)
    """

    clip_range: float = 1.0

    def step(self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args, **kwargs):
        if self.step_index is None:
            self._init_step_index(timestep)
        alpha, _ = self._sigma_to_alpha_sigma_t(self.sigmas[self.step_index])
        x0, _ = split_prediction(model_output, sample, alpha**2, self.config.prediction_type)
        sample = sample + alpha * (x0.clamp(-self.clip_range, self.clip_range) - x0)
        return super().step(model_output, timestep, sample, *args, **kwargs)


class DDIMClipDPMSolver(DDIMClipMixin, DPMSolverMultistepScheduler):
    """DPM-Solver++ whose x̂0 clip keeps the network's ε̂ (:class:`DDIMClipMixin`)."""


class DDIMClipUniPC(DDIMClipMixin, UniPCMultistepScheduler):
    """UniPC whose x̂0 clip keeps the network's ε̂ (:class:`DDIMClipMixin`)."""


@dataclass(frozen=True)
class SamplerSpec:
    cls: type[SchedulerMixin]
    description: str
    overrides: dict[str, Any] = field(default_factory=dict)


# Variance-preserving (DDPM-trained) samplers; all share the training betas.
VP_SAMPLERS: dict[str, SamplerSpec] = {
    "ddpm": SamplerSpec(DDPMScheduler, "ancestral DDPM (Ho et al. 2020); needs many steps"),
    # "trailing" spacing starts at t = T even with few steps (Lin et al. 2024, Sec. 3.3).
    "ddim": SamplerSpec(
        DDIMScheduler, "deterministic DDIM (Song et al. 2021)", {"timestep_spacing": "trailing"}
    ),
    "dpmsolver++": SamplerSpec(
        DPMSolverMultistepScheduler,
        "DPM-Solver++ 2M (Lu et al. 2022); good images in 15-25 steps",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "variance_type": None},
    ),
    "unipc": SamplerSpec(
        UniPCMultistepScheduler, "UniPC (Zhao et al. 2023); good in 10-20 steps", {"variance_type": None}
    ),
    "euler": SamplerSpec(EulerDiscreteScheduler, "Euler ODE in sigma space (Karras et al. 2022)"),
    "euler-a": SamplerSpec(EulerAncestralDiscreteScheduler, "Euler ancestral (stochastic)"),
    "heun": SamplerSpec(HeunDiscreteScheduler, "Heun 2nd order (Karras et al. 2022); 2 evals/step"),
}

# Consistency models (Song et al. 2023) only sample with their own scheduler. Two steps by default:
# on LSUN Bedroom 256 a second step took CD (LPIPS) from FID 7.80 to 5.22 (the paper's Table 3),
# better than the 1000-step DDPM's 6.36 (Ho et al. 2020), for twice the one-step time.
CONSISTENCY_STEPS = 2
CONSISTENCY_SAMPLERS: dict[str, SamplerSpec] = {
    "consistency": SamplerSpec(CMStochasticIterativeScheduler, "consistency sampling, 1-2 steps"),
}

# Score models on a σ ladder (variance exploding); bedgen runs these loops itself
# (bedgen.maths.score) so every image draws its noise from its own generator.
SCORE_SAMPLERS: dict[str, SamplerSpec] = {
    "langevin": SamplerSpec(
        ScoreSdeVeScheduler, "annealed Langevin dynamics (Song & Ermon 2019, Alg. 1) + final denoising step"
    ),
    "pc": SamplerSpec(ScoreSdeVeScheduler, "VE predictor-corrector (Song et al. 2021, Alg. 2)"),
}

ALL_SAMPLERS = {**VP_SAMPLERS, **CONSISTENCY_SAMPLERS, **SCORE_SAMPLERS}
# Data-prediction solvers that clip x̂0 as DDIM does when the model was trained to be clipped.
CLIPPING_SOLVERS = {"dpmsolver++": DDIMClipDPMSolver, "unipc": DDIMClipUniPC}


def samplers_for(training_scheduler: SchedulerMixin) -> dict[str, SamplerSpec]:
    """The samplers that can drive a network trained with ``training_scheduler``."""
    if isinstance(training_scheduler, CMStochasticIterativeScheduler):
        return CONSISTENCY_SAMPLERS
    if isinstance(training_scheduler, ScoreSdeVeScheduler):
        return SCORE_SAMPLERS
    return VP_SAMPLERS


def default_sampler(training_scheduler: SchedulerMixin) -> str:
    if isinstance(training_scheduler, CMStochasticIterativeScheduler):
        return "consistency"
    if isinstance(training_scheduler, ScoreSdeVeScheduler):
        # NCSN++ models were trained for predictor-corrector sampling; bedgen's for Langevin.
        return "pc"
    return "dpmsolver++"


def make_scheduler(name: str, training_scheduler: SchedulerMixin) -> SchedulerMixin:
    """A fresh sampler ``name`` configured from the training schedule."""
    available = samplers_for(training_scheduler)
    if name not in available:
        raise BedgenError(
            f"unknown scheduler '{name}' for this model; choose one of {', '.join(available)}"
        )
    spec = available[name]
    if name in CLIPPING_SOLVERS and training_scheduler.config.get("clip_sample", False):
        # Clip x̂0 to the data range inside the solver, as DDPM/DDIM do with clip_sample: without
        # it young pixel models give saturated noise.
        scheduler = CLIPPING_SOLVERS[name].from_config(training_scheduler.config, **spec.overrides)
        scheduler.clip_range = float(training_scheduler.config.get("clip_sample_range", 1.0))
        return scheduler
    return spec.cls.from_config(training_scheduler.config, **spec.overrides)


def max_steps(training_scheduler: SchedulerMixin) -> int:
    """The largest number of sampling steps: one per training timestep."""
    return int(training_scheduler.config.num_train_timesteps)


def check_steps(steps: Any, training_scheduler: SchedulerMixin) -> int:
    """Validate a user-given step count; returns it as an int."""
    return whole_number("steps", steps, 1, max_steps(training_scheduler), why="(the model's training steps)")


def check_distinct_timesteps(name: str, scheduler: SchedulerMixin, steps: int) -> None:
    """Refuse a step count the sampler cannot place on the training grid.

    With "leading" spacing, DPM-Solver++ and UniPC space their timesteps by
    T // (steps + 1), which is 0 when steps = T: every timestep becomes 0 and the
    solver runs off the end of its σ table half-way through a long request.
    """
    distinct = len(set(scheduler.timesteps.tolist()))
    if distinct < steps:
        total = int(scheduler.config.num_train_timesteps)
        raise BedgenError(f"{name} cannot take {steps} steps on this model's {total}-step schedule "
                          f"(its timesteps would repeat); use at most {total - 1}, or ddpm/ddim")


# --- score models (SMLD / NCSN): a σ ladder instead of a diffusers sampler -------------------


def sampling_ladder(scheduler: ScoreSdeVeScheduler, levels: int) -> torch.Tensor:
    """``levels`` geometric σ's between the model's σ_max and σ_min (fewer levels = faster)."""
    c = scheduler.config
    return sigma_ladder(float(c.sigma_max), float(c.sigma_min), levels).float()


def is_score_scheduler(scheduler: Any) -> bool:
    return isinstance(scheduler, ScoreSdeVeScheduler)


def langevin_evals(levels: int, steps_per_level: int, denoise: bool) -> int:
    return levels * steps_per_level + int(denoise)


def pc_evals(levels: int, corrector_steps: int) -> int:
    return levels * (corrector_steps + 1)
