"""Consistency distillation (Song et al. 2023, Alg. 2): a 1-4-step student of a diffusion teacher.

The student is the teacher's UNet (same layout, initialised from its weights, as in the
paper's Sec. 6) read through the consistency parameterisation of the paper's App. C,

    f_θ(x, σ) = c_skip(σ) x + c_out(σ) F_θ(c_in(σ) x, 250 ln σ),   c_in = 1 / √(σ² + σ_data²),

with c_skip, c_out from diffusers' ``CMStochasticIterativeScheduler`` (f(x, σ_min) = x), so a
checkpoint is a ``ConsistencyModelPipeline`` directory that diffusers and bedgen sample.

One training step: draw x_0, a grid index n and x_{n+1} = x_0 + σ_{n+1} z; run the teacher's
probability-flow ODE one step down to σ_n (Heun or Euler, in VE coordinates:
``bedgen.maths.consistency``); the loss is d(f_θ(x_{n+1}, σ_{n+1}), f_θ⁻(x̂_n, σ_n)) with the
pseudo-Huber metric. θ⁻ is θ without gradient (μ = 0): Song & Dhariwal 2023 (Sec. 3.2) show the
EMA target of the original paper is not needed; the trainer's EMA still makes the saved weights.

Consistency distillation against progressive distillation (Salimans & Ho 2022,
``bedgen.families.progressive``, ``bedgen distill --method progressive``): one training phase gives
a student for every step count 1-N, where progressive distillation needs log₂(N/k) stages, one per
halving, and makes a student for k steps; progressive distillation keeps the teacher's own
parameterisation and a plain DDIM sampler.
"""

from __future__ import annotations

import copy

import torch
from diffusers import CMStochasticIterativeScheduler, UNet2DModel

from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from ..maths import consistency as cm
from ..maths.diffusion import Schedule, split_prediction
from .teacher import TeacherFamily

MAX_SIGMA = 80.0  # EDM's and the consistency paper's σ_max; a VP teacher's last σ is often larger


class ConsistencyDistillationFamily(TeacherFamily):
    """Trains f_θ to agree with itself across one teacher ODE step."""

    student = "consistency model"

    def __init__(self, config: BedgenConfig):
        super().__init__(config)
        d = config.distill
        self.table = cm.vp_sigmas(Schedule.from_scheduler(self.teacher.training_scheduler).alphas_cumprod)
        self.scheduler = self._student_scheduler()
        self.sigmas = cm.karras_sigmas(d.sigma_min, self.scheduler.config.sigma_max, d.num_scales, d.rho)
        self.num_timesteps = d.num_scales

    def _student_scheduler(self) -> CMStochasticIterativeScheduler:
        d = self.config.distill
        sigma_max = d.sigma_max if d.sigma_max is not None else min(float(self.table[-1]), MAX_SIGMA)
        if not sigma_max > d.sigma_min:
            raise BedgenError(f"distill.sigma_max ({sigma_max:.4g}) must exceed distill.sigma_min ({d.sigma_min})")
        return CMStochasticIterativeScheduler(
            num_train_timesteps=d.num_scales, sigma_min=d.sigma_min, sigma_max=sigma_max,
            sigma_data=d.sigma_data, rho=d.rho, clip_denoised=self.teacher.autoencoder is None,
        )

    # --- what the trainer asks of a family -------------------------------------------------

    def build_model(self) -> UNet2DModel:
        """The teacher's network, trainable: the student starts where the teacher is."""
        return copy.deepcopy(self.teacher.unet).requires_grad_(True).train()

    def training_scheduler(self) -> CMStochasticIterativeScheduler:
        return self.scheduler

    def loss(self, model: torch.nn.Module, x0: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample losses, grid indices n, the same losses detached): Song et al. 2023, Alg. 2."""
        sigmas = self.sigmas.to(x0.device)
        n = torch.randint(0, len(sigmas) - 1, (x0.shape[0],), generator=generator, device=x0.device)
        sigma_hi, sigma_lo = sigmas[n], sigmas[n + 1]  # the grid descends: n + 1 is the less noisy end
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_hi = x0 + sigma_hi.view(-1, 1, 1, 1) * noise
        step = cm.heun_step if self.config.distill.solver == "heun" else cm.euler_step
        with torch.no_grad():
            x_lo = step(self.teacher_split, x_hi, sigma_hi, sigma_lo)
            target = self.consistency(model, x_lo, sigma_lo)
        pred = self.consistency(model, x_hi, sigma_hi)
        if self.config.distill.loss == "l2":
            losses = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))
        else:
            losses = cm.pseudo_huber(pred, target)
        return losses, n, losses.detach()

    # --- the two networks ---------------------------------------------------------------------

    def consistency(self, model: torch.nn.Module, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """f_θ(x, σ) in VE coordinates (Song et al. 2023, App. C; the scheduler's own c_skip and
        c_out, and its time input 1000 · ¼ ln σ, so sampling reads the network the same way)."""
        c_skip, c_out = self.scheduler.get_scalings_for_boundary_condition(sigma)
        c_in = 1 / (sigma**2 + self.scheduler.config.sigma_data**2).sqrt()
        t = 1000 * 0.25 * torch.log(sigma + 1e-44)
        out = model(x * c_in.view(-1, 1, 1, 1), t).sample.float()
        return c_skip.view(-1, 1, 1, 1) * x + c_out.view(-1, 1, 1, 1) * out

    def teacher_split(self, x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (x̂_0, ε̂) at the VE state (x, σ): asked at its VP point and timestep."""
        unet = self.teacher_network(x.device)
        abar = (1 / (1 + sigma**2)).view(-1, 1, 1, 1)
        x_vp = cm.ve_to_vp(x, sigma)
        out = unet(x_vp, cm.timestep_of_sigma(sigma, self.table)).sample.float()[:, : x.shape[1]]
        return split_prediction(out, x_vp, abar, self.teacher.denoiser.prediction_type)


__all__ = ["ConsistencyDistillationFamily", "MAX_SIGMA"]
