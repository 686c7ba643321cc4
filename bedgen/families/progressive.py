"""Progressive distillation (Salimans & Ho 2022, Alg. 2): a DDIM student in ``final_steps`` steps.

Stage k of log₂(start_steps / final_steps) trains a student that takes N = start_steps / 2^(k+1)
DDIM steps to land, at each of its steps, where two DDIM steps of the teacher land
(``bedgen.maths.progressive``). Stage 0's teacher is the diffusion model; at each stage boundary
the teacher becomes a frozen copy of the student's (raw) weights and the student trains on from
them, as in Alg. 2 (η ← θ). The run's ``train.max_steps`` is shared equally between the stages.

The student is a copy of the teacher's UNet (a learned variance's output half dropped: DDIM does
not read it) and a diffusers ``DDIMScheduler`` with trailing timesteps, so a checkpoint is a
``DDIMPipeline`` (``LDMPipeline`` for a latent teacher) that samples in ``final_steps`` steps by
default, in bedgen (sampler ``ddim``) and in diffusers.

Parameterisation. Salimans & Ho (Sec. 4) show that ε-prediction breaks down at 1-2 steps: x̂ =
(z_t - σ_t ε̂) / α_t multiplies the network's error by σ_t / α_t, which is huge at the first step,
and they train x- or v-predicting models instead. Here the student starts as a copy of the teacher
(Alg. 2), so it keeps the teacher's prediction type: reading the same weights as another type
would start it far from the teacher and throw away what the short runs bedgen makes depend on.
What the loss compares is x̂ itself, with the paper's truncated-SNR weight max(α²/σ², 1) (Sec. 4),
so the student is trained on exactly the quantity whose error the breakdown is about, whatever it
outputs; the DDIM sampler clips x̂ to the data range for pixel models, as the teacher's does. A
v-prediction teacher is the paper's own setting. An ε-prediction teacher whose last ᾱ is near 0
(DDPM's linear 1000-step schedule: σ/α ≈ 160 at t = 999) keeps the breakdown at its first step:
the x-space loss there is ε's error times σ²/α², so its 1-2-step stages are the hard case the
paper describes; 4 final steps or a v-prediction teacher avoid it.

EMA. The trainer keeps one EMA over the whole run; across a stage boundary it would average the
previous stage's 2N-step student into the N-step one, so distillation saves the raw weights
(``train.ema_decay = 0``, set by bedgen.training.distill).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from diffusers import DDIMScheduler, UNet2DModel

from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from ..maths import progressive as pd
from ..maths.diffusion import split_prediction
from .teacher import TeacherFamily, on_device


class ProgressiveDistillationFamily(TeacherFamily):
    """Halves a DDIM sampler's steps stage by stage, the student of each stage teaching the next."""

    student = "progressive-distillation student"

    def __init__(self, config: BedgenConfig):
        super().__init__(config)
        d = config.distill
        self.scheduler = self._student_scheduler()
        self.total = int(self.scheduler.config.num_train_timesteps)
        if d.start_steps > self.total:
            raise BedgenError(f"distill.start_steps ({d.start_steps}) exceeds the teacher's {self.total} "
                              "training timesteps")
        self.stages = pd.stage_count(d.start_steps, d.final_steps)
        self.max_steps = self._max_steps()
        # What the saved student samples with (bedgen.json): its own DDIM steps.
        config.sampling.scheduler, config.sampling.steps = "ddim", d.final_steps
        clip = self.scheduler.config
        self.clip = float(clip.clip_sample_range) if clip.clip_sample else None
        self.start = self._student_network()  # every stage's student descends from these weights
        self.teacher_unet: torch.nn.Module = self.teacher.unet
        self.teacher_stage = 0  # the stage whose teacher teacher_unet is
        self.steps_done = 0  # optimizer steps seen (observe); the stage follows from it
        self._grids: dict[int, torch.Tensor] = {}

    def _student_scheduler(self) -> DDIMScheduler:
        teacher = dict(self.teacher.training_scheduler.config)
        teacher.pop("variance_type", None)  # the student has no variance output
        return DDIMScheduler.from_config(teacher, timestep_spacing="trailing")

    def _max_steps(self) -> int:
        steps = self.config.train.max_steps
        if steps is None:
            raise BedgenError("progressive distillation shares train.max_steps between its stages: "
                              "give --max-steps, not --epochs")
        if steps < self.stages:
            d = self.config.distill
            raise BedgenError(f"train.max_steps ({steps}) is fewer than the {self.stages} stages that halve "
                              f"{d.start_steps} DDIM steps down to {d.final_steps}")
        return steps

    def _student_network(self) -> UNet2DModel:
        """The teacher's UNet; a learned variance's half of the last convolution is dropped."""
        unet = copy.deepcopy(self.teacher.unet).float()
        channels = int(unet.config.in_channels)
        if unet.config.out_channels != channels:
            old = unet.conv_out
            new = torch.nn.Conv2d(old.in_channels, channels, old.kernel_size, padding=old.padding)
            with torch.no_grad():
                new.weight.copy_(old.weight[:channels])
                new.bias.copy_(old.bias[:channels])
            unet.conv_out = new
            unet.register_to_config(out_channels=channels)
        return unet.eval().requires_grad_(False)

    # --- what the trainer asks of a family -------------------------------------------------

    def build_model(self) -> UNet2DModel:
        """The teacher's network, trainable: the student starts where the teacher is (Alg. 2)."""
        return copy.deepcopy(self.start).requires_grad_(True).train()

    def training_scheduler(self) -> DDIMScheduler:
        return self.scheduler

    def observe(self, t: torch.Tensor, losses: torch.Tensor) -> None:
        self.steps_done += 1  # once per optimizer step, on every process

    def state_dict(self) -> dict[str, Any]:
        """The step count and, after the first stage, the teacher's weights (the student of the
        stage before): a resumed run goes on with the teacher the uninterrupted one had."""
        state: dict[str, Any] = {"steps_done": self.steps_done, "teacher_stage": self.teacher_stage}
        if self.teacher_stage > 0:
            state["teacher"] = {k: v.detach().cpu() for k, v in self.teacher_unet.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.steps_done, self.teacher_stage = int(state["steps_done"]), int(state["teacher_stage"])
        if self.teacher_stage == 0:
            self.teacher_unet = self.teacher.unet
            return
        self.teacher_unet = self._frozen(state["teacher"])

    @property
    def stage(self) -> int:
        return pd.stage_of(self.steps_done, self.max_steps, self.stages)

    @property
    def student_steps(self) -> int:
        """N, the DDIM steps the current stage's student takes."""
        return pd.stage_steps(self.config.distill.start_steps, self.stage)

    def loss(self, model: torch.nn.Module, x0: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample losses, student timesteps t, the same losses detached): Alg. 2's inner loop."""
        self._follow_stages(model)
        steps = self.student_steps
        grid = self.grid(steps).to(x0.device)
        t = grid[torch.randint(0, steps, (x0.shape[0],), generator=generator, device=x0.device)]
        mid, full = pd.step_sizes(self.total, steps)
        abar, abar_mid, abar_end = (self.abar(s) for s in (t, t - mid, t - full))
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        column = abar.view(-1, 1, 1, 1)
        z = column.sqrt() * x0 + (1 - column).sqrt() * noise
        with torch.no_grad():
            z_end = pd.teacher_target(self.teacher_split, z, t, t - mid, abar_mid, abar_end, self.clip)
            target = pd.x_target(z, z_end, abar, abar_end)
        x_hat = self.student_x(model, z, t)
        losses = pd.truncated_snr_weight(abar) * (x_hat - target).pow(2).mean(dim=(1, 2, 3))
        return losses, t, losses.detach()

    # --- the schedule and the two networks ------------------------------------------------------

    def grid(self, steps: int) -> torch.Tensor:
        """The timesteps the student's sampler evaluates at ``steps`` steps: DDIMScheduler's own."""
        if steps not in self._grids:
            scheduler = DDIMScheduler.from_config(self.scheduler.config)
            scheduler.set_timesteps(steps)
            self._grids[steps] = scheduler.timesteps.long()
        return self._grids[steps]

    def abar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t as the sampler reads it (its float32 table; ᾱ_{-1} = final_alpha_cumprod)."""
        return pd.abar_at(self.scheduler.alphas_cumprod, t, self.scheduler.final_alpha_cumprod).float()

    def _follow_stages(self, model: torch.nn.Module) -> None:
        """At a stage boundary the teacher becomes a frozen copy of the student (Alg. 2: η ← θ)."""
        stage = self.stage
        if stage == self.teacher_stage:
            return
        student = getattr(model, "module", model)  # under DistributedDataParallel
        self.teacher_unet = self._frozen({k: v.detach().cpu() for k, v in student.state_dict().items()})
        self.teacher_stage = stage

    def _frozen(self, weights: dict[str, torch.Tensor]) -> torch.nn.Module:
        """A frozen network of the student's layout holding ``weights``: a stage's teacher."""
        teacher = copy.deepcopy(self.start)
        teacher.load_state_dict(weights)
        return teacher

    def _network_split(self, unet: torch.nn.Module, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = unet(z, t).sample.float()[:, : z.shape[1]]  # a learned variance's half is not DDIM's
        return split_prediction(out, z, self.abar(t).view(-1, 1, 1, 1), self.scheduler.config.prediction_type)

    def teacher_split(self, z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (x̂_0, ε̂) at (z_t, t)."""
        return self._network_split(on_device(self.teacher_unet, z.device), z, t)

    def student_x(self, model: torch.nn.Module, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The student's x̂ at (z_t, t), unclipped (the loss's gradient must reach every pixel)."""
        return self._network_split(model, z, t)[0]


__all__ = ["ProgressiveDistillationFamily"]
