"""Interpolation between two images through the diffusion's noised states.

Both images are preprocessed like the model's training data, brought to a
noise level t, mixed by spherical interpolation at weights λ, and denoised back
(Ho et al. 2020, Sec. 4.3 and Fig. 8, interpolate in the latents of the forward
process; Song et al. 2021, DDIM Sec. 5.3, interpolate deterministic DDIM latents):

* ``noise``: x_t = √ᾱ_t x_0 + √(1-ᾱ_t) ε with ONE ε shared by both images, so
  the two noised images differ only through their content; frames are
  slerp(x_t^a, x_t^b; λ) denoised with deterministic DDIM. The seed picks ε.
* ``ddim-inversion``: both images are inverted to t by running the DDIM ODE
  forwards (Song et al. 2021, Eq. 13 read from t to t+Δ), the inverted latents
  are slerped and denoised with DDIM from t. No randomness: λ = 0 and λ = 1
  give back the inputs up to the ODE's discretisation error, which is small
  when t is small.

t is a fraction of the training steps. Small t keeps both pictures almost as
they are, so the middle frames are see-through blends; large t keeps almost
nothing of either, so frames become unrelated rooms. Around t = 0.5 the layout
and colours survive while the network repaints the details into one room.

Consistency models (no ᾱ schedule, one-step denoiser) support ``noise`` only:
x_σ = x_0 + σ ε with σ on their Karras grid, denoised in one step.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from ..config.schema import (
    INTERPOLATION_FRAMES, INTERPOLATION_METHOD, INTERPOLATION_METHODS, INTERPOLATION_STEPS, INTERPOLATION_T, MAX_INTERPOLATION_FRAMES,
)
from ..data.datasets import preprocess
from ..core.device import resolve
from ..maths.diffusion import Schedule, ddim_move
from ..core.checks import fraction, whole_number
from ..core.errors import BedgenError
from ..core.images import grid, load_image, to_pil, to_signed
from .pipeline import MAX_SEED, AutoencoderPipeline, Pipeline

GIF_FRAME_MS = 250

ProgressFn = Callable[[int, int], None]
ImageInput = "str | Path | bytes | Image.Image"


@dataclass
class InterpolationResult:
    frames: list[Image.Image]
    weights: list[float]
    inputs: tuple[Image.Image, Image.Image]  # both images as the model sees them
    method: str
    t: float
    timestep: int  # t on the model's training grid
    steps: int
    seed: int
    placement: str
    seconds: float
    evaluations: int = 0
    notes: list[str] = field(default_factory=list)
    student: str | None = None  # the consistency student that denoised the frames in one step, if one did

    def strip(self) -> Image.Image:
        """Input A, the frames, input B, in one row."""
        return grid([self.inputs[0], *self.frames, self.inputs[1]], columns=len(self.frames) + 2)

    def save(self, out: str | Path) -> list[Path]:
        """frame-XX.png for every frame, strip.png, interpolation.gif (forth and back)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for i, frame in enumerate(self.frames):
            written.append(out / f"frame-{i:02d}.png")
            frame.save(written[-1])
        written.append(out / "strip.png")
        self.strip().save(written[-1])
        written.append(out / "interpolation.gif")
        loop = self.frames + self.frames[-2:0:-1]  # ping-pong, so the GIF loops smoothly
        loop[0].save(written[-1], save_all=True, append_images=loop[1:], duration=GIF_FRAME_MS, loop=0)
        return written


# --- the maths --------------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Spherical interpolation of each sample's flattened vector (Shoemake 1985).

    slerp(a, b; λ) = sin((1-λ)θ)/sin θ · a + sin(λθ)/sin θ · b, θ the angle between
    a and b. Unlike a linear mix it keeps the norm a Gaussian-noised state has at
    its noise level, so the denoiser sees an in-distribution input.
    """
    flat_a, flat_b = a.flatten(1).double(), b.flatten(1).double()
    cos = (flat_a * flat_b).sum(1) / (flat_a.norm(dim=1) * flat_b.norm(dim=1)).clamp_min(1e-12)
    theta = torch.arccos(cos.clamp(-1, 1))
    sin = torch.sin(theta)
    nearly_parallel = sin < 1e-6
    wa = torch.where(nearly_parallel, 1 - weight, torch.sin((1 - weight) * theta) / sin.clamp_min(1e-12))
    wb = torch.where(nearly_parallel, torch.as_tensor(weight, dtype=sin.dtype), torch.sin(weight * theta) / sin.clamp_min(1e-12))
    mixed = wa[:, None] * flat_a + wb[:, None] * flat_b
    return mixed.reshape(a.shape).to(a.dtype)


def ddim_grid(timestep: int, steps: int) -> list[int]:
    """Increasing training timesteps 0 = τ_0 < ... < τ_S = timestep (at most ``steps`` gaps)."""
    return sorted({int(round(x)) for x in np.linspace(0, timestep, steps + 1)})


# --- the API ----------------------------------------------------------------------------


def interpolate(
    pipe: Pipeline,
    image_a: Any,
    image_b: Any,
    t: float = INTERPOLATION_T,
    weights: float | Sequence[float] | None = None,
    frames: int = INTERPOLATION_FRAMES,
    method: str = INTERPOLATION_METHOD,
    steps: int = INTERPOLATION_STEPS,
    seed: int = 0,
    device: str = "auto",
    dtype: str = "auto",
    batch_size: int | None = None,
    progress: ProgressFn | None = None,
    student: Pipeline | None = None,
) -> InterpolationResult:
    """Frames between two images (paths, bytes or PIL) at weights λ.

    ``weights`` gives λ values explicitly (one or a list); otherwise ``frames``
    values evenly spaced from 0 to 1. ``student``, a consistency model distilled from
    ``pipe`` (``bedgen distill``), denoises the mixed states in one evaluation instead of
    ``steps`` DDIM steps: the same noised states, read at their σ (see :func:`_student_frames`).
    """
    t = fraction("t", t, low_open=True)
    lambdas = _weights(weights, frames)
    if method not in INTERPOLATION_METHODS:
        raise BedgenError(f"method must be one of {', '.join(INTERPOLATION_METHODS)}, not {method!r}")
    vae = isinstance(pipe, AutoencoderPipeline)
    steps = whole_number("steps", steps, 1, pipe.max_steps) if not vae else 0
    seed = whole_number("seed", seed, 0, MAX_SEED)
    placement = resolve(device, dtype)
    with pipe.placement.use(placement):  # the networks stay on this device until the frames are done
        batch_size = whole_number("batch size", batch_size or (32 if placement.device.type == "cuda" else 8), 1, 4096)
        inputs = tuple(_model_input(pipe, im, name) for im, name in ((image_a, "image A"), (image_b, "image B")))
        x0 = torch.cat(inputs)
        start = time.perf_counter()
        runner = None
        notes: list[str] = []
        denoised_by = None  # a student's ref when one finished the frames
        if vae:
            result_frames, timestep, used_steps = _vae_frames(pipe, x0, lambdas, method, placement), 0, 0
        else:
            runner = _Runner(pipe, placement, batch_size, progress)
            z0 = pipe.encode(x0)  # latent diffusion interpolates latents; pixel models pass through
            if pipe.info.family == "consistency":
                frames, timestep, used_steps = _consistency_frames(pipe, runner, z0, t, lambdas, method, seed)
            else:
                finisher = _StudentFinisher(pipe, student, runner, placement) if student is not None else None
                frames, timestep, used_steps = _vp_frames(pipe, runner, z0, t, lambdas, method, steps, seed,
                                                          finisher)
                if finisher is not None:
                    notes += finisher.notes
                    denoised_by = student.info.ref if finisher.used else denoised_by
            result_frames = pipe.decode(frames)
        return InterpolationResult(
            frames=to_pil(result_frames),
            weights=lambdas,
            inputs=tuple(to_pil(x0)),  # type: ignore[arg-type]
            method=method,
            t=t,
            timestep=timestep,
            steps=used_steps,
            seed=seed,
            placement=placement.describe() if vae else pipe.denoiser.describe(placement),
            seconds=time.perf_counter() - start,
            evaluations=runner.evaluations if runner is not None else 1,
            notes=notes,
            student=denoised_by,
        )


def _vae_frames(pipe: AutoencoderPipeline, x0: torch.Tensor, lambdas: list[float], method: str, placement) -> torch.Tensor:
    """Decode slerp(E(a), E(b); λ): a VAE's latent is already where the images mix."""
    if method != "noise":
        raise BedgenError("a vae has no diffusion to invert; use method 'noise' (latent interpolation)")
    with placement.autocast():
        z = pipe.encode(x0.to(placement.device))
        mixed = torch.cat([slerp(z[:1], z[1:], lam) for lam in lambdas])
        return pipe.decode(mixed.to(placement.device))


def _vp_frames(pipe, runner, x0, t, lambdas, method, steps, seed, finisher=None):
    schedule = Schedule.from_scheduler(pipe.training_scheduler)
    last = len(schedule.alphas_cumprod) - 1
    timestep = min(last, max(1, round(t * last)))
    taus = ddim_grid(timestep, steps)
    abar = schedule.alphas_cumprod
    if method == "noise":
        eps = torch.randn(x0.shape[1:], generator=torch.Generator("cpu").manual_seed(seed))
        a = abar[timestep]
        latents = a.sqrt() * x0 + (1 - a).sqrt() * eps  # one ε for both images
    else:
        latents = runner.ddim(x0, taus, abar, clip=False)  # τ_0 -> τ_S: inversion
    mixed = torch.cat([slerp(latents[:1], latents[1:], lam) for lam in lambdas])
    if finisher is not None:
        frames = finisher(mixed, abar[timestep])
        if frames is not None:
            return frames, timestep, 1
    frames = runner.ddim(mixed, taus[::-1], abar, clip=_clips(pipe))
    return frames, timestep, len(taus) - 1


class _StudentFinisher:
    """Denoises a teacher's mixed states in one evaluation of its student, where it can."""

    def __init__(self, pipe: Pipeline, student: Pipeline, runner: "_Runner", placement) -> None:
        if student.info.family != "consistency" or student.latent_resolution != pipe.latent_resolution:
            raise BedgenError("the student must be a consistency model distilled from this model (bedgen distill)")
        self.student, self.runner, self.placement = student, runner, placement
        self.used = False
        self.notes: list[str] = []

    def __call__(self, mixed: torch.Tensor, abar: torch.Tensor) -> torch.Tensor | None:
        with self.student.placement.use(self.placement):
            frames = _student_frames(self.student, self.runner, mixed, abar)
        self.used = frames is not None
        if not self.used:
            self.notes.append(f"the noise level is above what the student {self.student.info.ref} was trained on: "
                              "denoised by DDIM")
        return frames


def _student_frames(student, runner, mixed_vp: torch.Tensor, abar: torch.Tensor) -> torch.Tensor | None:
    """The student's f(x, σ) at the teacher's noised states: x_VE = x_t / √ᾱ_t at
    σ = √((1 - ᾱ_t) / ᾱ_t) (Karras et al. 2022, App. B; bedgen.maths.consistency). slerp
    commutes with the common factor 1/√ᾱ_t, so the mix is the same in either coordinate.
    None above the student's σ_max, where it was never trained."""
    sigma = float(((1 - abar) / abar).sqrt())
    config = student.training_scheduler.config
    if sigma > float(config.sigma_max):
        return None
    # A scheduler whose grid starts at exactly this σ: its first custom timestep evaluates f(·, σ).
    scheduler = type(student.training_scheduler).from_config({**config, "sigma_max": sigma})
    return runner.consistency(mixed_vp / abar.sqrt(), scheduler, 0, seed=0, denoiser=student.denoiser)


def _consistency_frames(pipe, runner, x0, t, lambdas, method, seed):
    if method != "noise":
        raise BedgenError(
            "consistency models map noise to an image in one step and have no ODE to invert; "
            "use method 'noise' with this model"
        )
    scheduler = type(pipe.training_scheduler).from_config(pipe.training_scheduler.config)
    last = scheduler.config.num_train_timesteps - 1
    # Custom timestep k sits at ramp k/(T-1) of the Karras grid, from σ_max (k=0) to σ_min.
    k = min(last, max(0, round((1 - t) * last)))
    scheduler.set_timesteps(timesteps=[k])
    sigma = scheduler.sigmas[0]
    generator = torch.Generator("cpu").manual_seed(seed)
    eps = torch.randn(x0.shape[1:], generator=generator)
    latents = x0 + sigma * eps  # VE forward process x_σ = x_0 + σ ε, one ε for both
    mixed = torch.cat([slerp(latents[:1], latents[1:], lam) for lam in lambdas])
    return runner.consistency(mixed, scheduler, k, seed), k, 1


class _Runner:
    """Runs the model's denoiser over the batches of one request, counting evaluations for progress."""

    def __init__(self, pipe: Pipeline, placement, batch_size: int, progress: ProgressFn | None):
        self.denoiser, self.placement, self.batch_size, self.progress = pipe.denoiser, placement, batch_size, progress
        self.evaluations = 0
        self.total = 0

    def _evaluated(self) -> None:
        self.evaluations += 1
        if self.progress is not None:
            self.progress(self.evaluations, max(self.total, self.evaluations))

    def _batches(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(torch.split(x, self.batch_size))

    def ddim(self, x: torch.Tensor, taus: list[int], abar: torch.Tensor, clip: bool) -> torch.Tensor:
        """Move every sample along ``taus`` (increasing = invert, decreasing = denoise)."""
        self.total += (len(taus) - 1) * math.ceil(len(x) / self.batch_size)
        done = []
        for batch in self._batches(x):
            for here, there in zip(taus, taus[1:]):
                x0, eps = self.denoiser.split(batch.to(self.placement.device), here, abar[here], self.placement)
                self._evaluated()
                x0, eps = x0.cpu(), eps.cpu()
                if clip:
                    x0 = x0.clamp(-1, 1)
                batch = ddim_move(x0, eps, abar[there])
            done.append(batch)
        return torch.cat(done)

    def consistency(self, x: torch.Tensor, scheduler, k: int, seed: int, denoiser=None) -> torch.Tensor:
        """One consistency-function step from the custom timestep k to a clean image (by ``denoiser``,
        default this model's: a student finishes its teacher's frames)."""
        denoiser = denoiser or self.denoiser
        self.total += math.ceil(len(x) / self.batch_size)
        done = []
        for batch in self._batches(x):
            scheduler.set_timesteps(timesteps=[k])  # resets the scheduler's step counter
            timestep = scheduler.timesteps[0]
            out = denoiser.scheduler_output(scheduler, batch.to(self.placement.device), timestep, self.placement)
            self._evaluated()
            out = out.cpu()
            generator = torch.Generator("cpu").manual_seed(seed)
            done.append(scheduler.step(out, timestep, batch, generator=generator).prev_sample)
        return torch.cat(done)


def _clips(pipe: Pipeline) -> bool:
    return bool(pipe.training_scheduler.config.get("clip_sample", False))


# --- inputs -----------------------------------------------------------------------------


def _model_input(pipe: Pipeline, image: Any, name: str) -> torch.Tensor:
    """An image as the model's training data looked: squared, resized, in [-1, 1]."""
    if image is None:
        raise BedgenError(f"{name} is missing; upload an image")
    config = pipe.info.config
    square = config.data.square if config is not None else "crop"
    pixels = preprocess(load_image(image, name), pipe.resolution, square)
    return to_signed(pixels)[None]


def _weights(weights: float | Sequence[float] | None, frames: int) -> list[float]:
    if weights is None:
        frames = whole_number("frames", frames, 1, MAX_INTERPOLATION_FRAMES)
        return [0.5] if frames == 1 else [float(x) for x in np.linspace(0, 1, frames)]
    values = [weights] if isinstance(weights, (int, float, str)) else list(weights)
    if not 1 <= len(values) <= MAX_INTERPOLATION_FRAMES:
        raise BedgenError(f"give between 1 and {MAX_INTERPOLATION_FRAMES} weights λ, got {len(values)}")
    return [fraction("λ (interpolation weight)", v) for v in values]
