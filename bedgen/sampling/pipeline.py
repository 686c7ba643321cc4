"""Sampling: ``Pipeline.generate`` turns a loaded checkpoint into PIL images.

Image i of seed s is drawn with its own generator seeded ``s + i``: the initial
noise and every stochastic sampler step of that image come from it, so the image
does not depend on the batch it is computed in, and a gallery entry labelled
"seed s+i" can be regenerated alone.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image

from ..storage.checkpoint import CheckpointInfo, load_checkpoint
from ..core.device import Placement, resolve
from ..core.checks import positive_number, whole_number
from ..core.errors import BedgenError
from ..core.images import to_pil, to_signed, unit_to_signed
from ..models import autoencoders
from ..storage.checkpoint import is_autoencoder_checkpoint, latest_in_run, load_autoencoder_checkpoint
from ..core.files import recover_interrupted_save
from ..core.hub import resolve_ref
from .backends import channels_last_weights, check_backend
from .denoiser import Denoiser
from .placement import SharedPlacement
from .schedulers import (
    CONSISTENCY_STEPS, check_distinct_timesteps, check_steps, default_sampler, langevin_evals, make_scheduler, pc_evals, samplers_for,
    sampling_ladder,
)
from ..maths import score as sm

ProgressFn = Callable[[int, int], None]
# (evaluations done, evaluations in all, the images so far: finished batches, then x̂₀ of the current one)
PreviewFn = Callable[[int, int, list[Image.Image]], None]
MAX_SEED = 2**63 - 1
MAX_IMAGES = 100_000


@dataclass
class SampleResult:
    images: list[Image.Image]
    seeds: list[int]
    sampler: str
    steps: int
    placement: str
    seconds: float
    # trajectory[i] = predicted clean images x0 for image i, every k steps
    trajectory: list[list[Image.Image]] | None = None


class Pipeline:
    """A network, its training schedule and its self-description, ready to sample."""

    def __init__(self, unet: UNet2DModel, training_scheduler: SchedulerMixin, info: CheckpointInfo,
                 autoencoder: torch.nn.Module | None = None):
        self.unet = unet.eval().requires_grad_(False)
        self.training_scheduler = training_scheduler
        # What kind of network this is gets decided here, once; every sampler goes through it.
        self.denoiser = Denoiser.for_model(self.unet, training_scheduler)
        self.info = info
        # Latent diffusion: the UNet runs on autoencoder latents z·s (s = scaling_factor).
        self.autoencoder = autoencoder.eval().requires_grad_(False) if autoencoder is not None else None
        self.placement = SharedPlacement(
            lambda: [self.unet] + ([self.autoencoder] if self.autoencoder is not None else []),
            channels_last=lambda placement: channels_last_weights(placement, self.denoiser.parameters,
                                                                  self.denoiser.side))

    @classmethod
    def from_ref(cls, ref: str) -> "Pipeline":
        unet, scheduler, info = load_checkpoint(ref)
        folder = autoencoders.find_autoencoder_folder(info.path)
        autoencoder = autoencoders.load_autoencoder_folder(folder, ref) if folder is not None else None
        if autoencoder is not None and info.family in ("ddpm", "iddpm"):
            info.family = "ldm"  # a foreign LDMPipeline (unet/ + vqvae/ + scheduler/)
        return cls(unet, scheduler, info, autoencoder)

    # --- what this model offers --------------------------------------------------------

    @property
    def latent_resolution(self) -> int:
        """The side of what the UNet denoises (the image itself for pixel models)."""
        size = self.unet.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def resolution(self) -> int:
        """The side of the images this model makes and takes."""
        factor = autoencoders.downsample_factor(self.autoencoder) if self.autoencoder is not None else 1
        return self.latent_resolution * factor

    @property
    def latent_scale(self) -> float:
        return float(self.autoencoder.config.scaling_factor) if self.autoencoder is not None else 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> what the UNet denoises (scaled posterior means for ldm)."""
        if self.autoencoder is None:
            return x
        device = next(self.autoencoder.parameters()).device
        with torch.inference_mode():
            z = autoencoders.encode(self.autoencoder, x.to(device).float())
        return (z.float() * self.latent_scale).to(x.device)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`encode`: images in [-1, 1]."""
        if self.autoencoder is None:
            return z
        device = next(self.autoencoder.parameters()).device
        with torch.inference_mode():
            x = autoencoders.decode(self.autoencoder, z.to(device).float() / self.latent_scale)
        return x.float().clamp(-1, 1).to(z.device)

    @property
    def samplers(self) -> list[str]:
        return list(samplers_for(self.training_scheduler))

    @property
    def default_sampler(self) -> str:
        config = self.info.config
        if config is not None and config.sampling.scheduler in self.samplers:
            return config.sampling.scheduler
        return default_sampler(self.training_scheduler)

    @property
    def default_steps(self) -> int:
        if self.info.family == "consistency":
            return CONSISTENCY_STEPS
        config = self.info.config
        steps = config.sampling.steps if config is not None else 20
        return min(steps, self.max_steps)

    @property
    def max_steps(self) -> int:
        return int(self.training_scheduler.config.num_train_timesteps)

    # --- sampling -----------------------------------------------------------------------

    def generate(
        self,
        n: int = 1,
        seed: int = 0,
        steps: int | None = None,
        scheduler: str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: ProgressFn | None = None,
        step_size: float | None = None,
        backend: str | None = None,
    ) -> list[Image.Image]:
        """``n`` images from seeds ``seed .. seed+n-1``."""
        return self.sample(n, seed, steps, scheduler, batch_size, device, dtype, progress,
                           step_size=step_size, backend=backend).images

    def sample(
        self,
        n: int = 1,
        seed: int = 0,
        steps: int | None = None,
        scheduler: str | None = None,
        batch_size: int | None = None,
        device: str = "auto",
        dtype: str = "auto",
        progress: ProgressFn | None = None,
        trajectory_every: int = 0,
        step_size: float | None = None,
        on_preview: PreviewFn | None = None,
        backend: str | None = None,
    ) -> SampleResult:
        """Like :meth:`generate`, with timing and (optionally) the denoising trajectory.

        ``step_size`` is for score models only: Langevin's ε, or the corrector's
        signal-to-noise ratio for ``pc`` (default: the model's config). ``on_preview`` is
        called with each trajectory frame as it is made (so only when ``trajectory_every`` > 0).
        ``backend``: auto|eager|winograd|onnxruntime|openvino (default ``BEDGEN_BACKEND``, else auto; see ``backends.py``).
        """
        n = whole_number("number of images", n, 1, MAX_IMAGES)
        seed = whole_number("seed", seed, 0, MAX_SEED - n)
        sampler = scheduler or self.default_sampler
        steps = check_steps(self.default_steps if steps is None else steps, self.training_scheduler)
        evals_per_batch = self._evals(sampler, steps)  # also rejects an unknown sampler name
        placement = replace(resolve(device, dtype), backend=check_backend(backend))
        if batch_size is None:
            batch_size = 32 if placement.device.type == "cuda" else 8
        batch_size = whole_number("batch size", batch_size, 1, 4096)
        trajectory_every = whole_number("trajectory_every", trajectory_every, 0, steps)
        step_size = self._check_step_size(step_size)
        with self.placement.use(placement):
            return self._sample(n, seed, sampler, steps, batch_size, placement, progress, trajectory_every,
                                step_size, evals_per_batch, on_preview)

    def _sample(self, n: int, seed: int, sampler: str, steps: int, batch_size: int, placement: Placement,
                progress: ProgressFn | None, trajectory_every: int, step_size: float | None,
                evals_per_batch: int, on_preview: PreviewFn | None = None) -> SampleResult:
        start = time.perf_counter()
        seeds = list(range(seed, seed + n))
        batches = [seeds[i : i + batch_size] for i in range(0, n, batch_size)]
        done = 0

        def on_eval() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, evals_per_batch * len(batches))

        images: list[Image.Image] = []
        trajectory: list[list[Image.Image]] = []

        def on_frame(frame: torch.Tensor) -> None:
            if on_preview is not None:
                on_preview(done, evals_per_batch * len(batches), images + to_pil(frame))

        for batch_seeds in batches:
            final, frames = self._sample_batch(
                batch_seeds, sampler, steps, placement, on_eval, trajectory_every, step_size, on_frame
            )
            images += to_pil(final)
            if trajectory_every:
                per_frame = [to_pil(frame) for frame in frames]
                trajectory += [[frame[i] for frame in per_frame] for i in range(len(batch_seeds))]
        return SampleResult(
            images=images,
            seeds=seeds,
            sampler=sampler,
            steps=steps,
            placement=self.denoiser.describe(placement),
            seconds=time.perf_counter() - start,
            trajectory=trajectory if trajectory_every else None,
        )

    @property
    def is_score_model(self) -> bool:
        return self.denoiser.kind == "score"

    def _score_config(self) -> Any:
        from ..config.schema import ScoreConfig

        config = self.info.config
        return config.score if config is not None and config.family == "smld" else ScoreConfig()

    def _check_step_size(self, step_size: float | None) -> float | None:
        if step_size is None:
            return None
        if not self.is_score_model:
            raise BedgenError("step size applies to score models (smld) only; leave it empty for this model")
        return positive_number("step size", step_size)

    def _evals(self, sampler: str, steps: int) -> int:
        """Network evaluations per batch (what progress counts)."""
        scheduler = make_scheduler(sampler, self.training_scheduler)  # rejects unknown names
        if self.is_score_model:
            s = self._score_config()
            if sampler == "langevin":
                return langevin_evals(steps, s.langevin_steps, s.final_step == "denoise")
            return pc_evals(steps, s.corrector_steps)
        scheduler.set_timesteps(steps)
        check_distinct_timesteps(sampler, scheduler, steps)
        return len(scheduler.timesteps)

    @torch.inference_mode()
    def _sample_batch(
        self,
        seeds: list[int],
        sampler: str,
        steps: int,
        placement: Placement,
        on_eval: Callable[[], None],
        trajectory_every: int,
        step_size: float | None = None,
        on_frame: Callable[[torch.Tensor], None] = lambda frame: None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        if self.is_score_model:
            return self._sample_score_batch(seeds, sampler, steps, placement, on_eval, trajectory_every, step_size,
                                            on_frame)
        scheduler = make_scheduler(sampler, self.training_scheduler)
        scheduler.set_timesteps(steps)
        # CPU generators: the same seed gives the same noise on every device.
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        channels, size = self.unet.config.in_channels, self.latent_resolution
        noise = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators])
        x = (noise * scheduler.init_noise_sigma).to(placement.device)
        # Deterministic solvers (UniPC, DPM-Solver++) take no generator.
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        noise_kwargs = {"generator": generators} if takes_generator else {}
        frames: list[torch.Tensor] = []
        timesteps = scheduler.timesteps
        for i, t in enumerate(timesteps):
            out = self.denoiser.scheduler_output(scheduler, x, t, placement)
            x0 = self._trajectory_x0(scheduler, out, t, x) if trajectory_every else None
            step = scheduler.step(out, t, x, **noise_kwargs)
            x = step.prev_sample
            on_eval()
            if trajectory_every and (i % trajectory_every == 0 or i == len(timesteps) - 1):
                pred = getattr(step, "pred_original_sample", None)
                frames.append(self.decode(pred if pred is not None else x0).cpu())
                on_frame(frames[-1])
        return self.decode(x).cpu(), frames

    def _sample_score_batch(
        self,
        seeds: list[int],
        sampler: str,
        levels: int,
        placement: Placement,
        on_eval: Callable[[], None],
        trajectory_every: int,
        step_size: float | None,
        on_frame: Callable[[torch.Tensor], None] = lambda frame: None,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Annealed Langevin or predictor-corrector on the model's σ ladder; output in [-1, 1]."""
        s = self._score_config()
        sigmas = sampling_ladder(self.training_scheduler, levels)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        channels, size = self.unet.config.in_channels, self.latent_resolution
        x = torch.stack([torch.randn(channels, size, size, generator=g) for g in generators])
        x = (x * float(sigmas[0])).to(placement.device)  # the prior N(0, σ_1² I)
        frames: list[torch.Tensor] = []
        score = partial(self.denoiser.score, placement=placement)

        def keep_frame(level: int, x: torch.Tensor) -> None:
            if trajectory_every and level % trajectory_every == 0:
                frames.append(unit_to_signed(x.clamp(0, 1)).cpu())
                on_frame(frames[-1])

        if sampler == "langevin":
            x = sm.annealed_langevin(score, x, sigmas, s.langevin_steps, step_size or s.step_size, generators,
                                     denoise=s.final_step == "denoise", on_eval=on_eval, on_level=keep_frame)
        else:
            x = sm.ve_predictor_corrector(score, x, sigmas, step_size or s.snr, s.corrector_steps, generators,
                                          on_eval=on_eval, on_level=keep_frame)
        final = unit_to_signed(x.clamp(0, 1)).cpu()
        if trajectory_every:
            frames.append(final)
        return final, frames

    def _trajectory_x0(self, scheduler: SchedulerMixin, out: torch.Tensor, t: Any, x: torch.Tensor) -> torch.Tensor:
        """x̂0 for a trajectory frame, with the sampler's own ᾱ; a scheduler without an ᾱ
        schedule (consistency) shows x_t itself."""
        alphas = getattr(scheduler, "alphas_cumprod", None)
        if alphas is None:
            return x
        return self.denoiser.split_output(out, x, alphas[int(t)])[0]


class AutoencoderPipeline:
    """A ``vae`` family model: decodes z ~ N(0, I) (KL) and reconstructs images.

    Same sampling interface as :class:`Pipeline` (seeds, batches, progress), with a
    single "sampler" (``prior``) and one decoder evaluation per batch.
    """

    samplers = ["prior"]
    default_sampler = "prior"
    default_steps = 1
    max_steps = 1
    is_score_model = False

    def __init__(self, autoencoder: torch.nn.Module, info: CheckpointInfo):
        self.autoencoder = autoencoder.eval().requires_grad_(False)
        self.info = info
        self.placement = SharedPlacement(lambda: [self.autoencoder])

    @classmethod
    def from_ref(cls, ref: str) -> "AutoencoderPipeline":
        path = latest_in_run(resolve_ref(ref, autoencoders.HUB_PATTERNS))
        model, info = load_autoencoder_checkpoint(ref, path)
        return cls(model, info)

    @property
    def kind(self) -> str:
        return autoencoders.kind_of(self.autoencoder)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // autoencoders.downsample_factor(self.autoencoder)
        return autoencoders.latent_channels(self.autoencoder), side, side

    @property
    def resolution(self) -> int:
        size = self.autoencoder.config.sample_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> posterior means (KL) or pre-quantisation latents (VQ)."""
        device = next(self.autoencoder.parameters()).device
        with torch.inference_mode():
            return autoencoders.encode(self.autoencoder, x.to(device).float()).float().cpu()

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        device = next(self.autoencoder.parameters()).device
        with torch.inference_mode():
            return autoencoders.decode(self.autoencoder, z.to(device).float()).float().clamp(-1, 1).cpu()

    def generate(self, n: int = 1, seed: int = 0, steps: int | None = None, scheduler: str | None = None,
                 batch_size: int | None = None, device: str = "auto", dtype: str = "auto",
                 progress: ProgressFn | None = None, step_size: float | None = None) -> list[Image.Image]:
        return self.sample(n, seed, steps, scheduler, batch_size, device, dtype, progress,
                           step_size=step_size).images

    def sample(self, n: int = 1, seed: int = 0, steps: int | None = None, scheduler: str | None = None,
               batch_size: int | None = None, device: str = "auto", dtype: str = "auto",
               progress: ProgressFn | None = None, trajectory_every: int = 0,
               step_size: float | None = None, on_preview: PreviewFn | None = None) -> SampleResult:
        """Decode z ~ N(0, I) drawn per image from seed + i (Kingma & Welling 2013, Sec. 2.1).
        One decoder pass: nothing forms step by step, so ``on_preview`` is never called."""
        n = whole_number("number of images", n, 1, MAX_IMAGES)
        seed = whole_number("seed", seed, 0, MAX_SEED - n)
        if scheduler not in (None, "prior"):
            raise BedgenError(f"a vae samples from its prior only (sampler 'prior'), not {scheduler!r}")
        if step_size is not None:
            raise BedgenError("step size applies to score models (smld) only; leave it empty for this model")
        # steps: one decoder pass, whatever is asked (the Generate tab's slider is shared)
        if self.kind != "kl":
            raise BedgenError(
                "this autoencoder is a VQ model: it has no N(0, I) prior to sample from; use it as the "
                "first stage of latent diffusion (--preset ldm-vq) or to reconstruct images"
            )
        placement = resolve(device, dtype)
        batch_size = whole_number("batch size", batch_size or (32 if placement.device.type == "cuda" else 16), 1, 4096)
        with self.placement.use(placement):
            return self._sample(n, seed, batch_size, placement, progress, trajectory_every)

    def _sample(self, n: int, seed: int, batch_size: int, placement: Placement, progress: ProgressFn | None,
                trajectory_every: int) -> SampleResult:
        start = time.perf_counter()
        seeds = list(range(seed, seed + n))
        batches = [seeds[i : i + batch_size] for i in range(0, n, batch_size)]
        images: list[Image.Image] = []
        for done, batch_seeds in enumerate(batches, 1):
            z = torch.stack([torch.randn(self.latent_shape, generator=torch.Generator("cpu").manual_seed(s))
                             for s in batch_seeds])
            with placement.autocast():
                images += to_pil(self.decode(z.to(placement.device)))
            if progress is not None:
                progress(done, len(batches))
        return SampleResult(images=images, seeds=seeds, sampler="prior", steps=1,
                            placement=placement.describe(), seconds=time.perf_counter() - start,
                            trajectory=[[image] for image in images] if trajectory_every else None)

    def reconstruct(self, images: list[Any], device: str = "auto", dtype: str = "auto") -> list[Image.Image]:
        """x̂ = D(E(x)) for uploaded images (preprocessed like the training data)."""
        from ..data.datasets import preprocess
        from ..core.images import load_image

        placement = resolve(device, dtype)
        config = self.info.config
        square = config.data.square if config is not None else "crop"
        pixels = [preprocess(load_image(image, f"image {i + 1}"), self.resolution, square)
                  for i, image in enumerate(images)]
        x = to_signed(np.stack(pixels))
        with self.placement.use(placement), placement.autocast():
            return to_pil(self.decode(self.encode(x.to(placement.device))))




def load(ref: str) -> "Pipeline | AutoencoderPipeline":
    """Load a model REF (local directory or Hub id ``org/name[@revision]``)."""
    local = Path(str(ref)).expanduser()
    recover_interrupted_save(local)
    if local.is_dir() and is_autoencoder_checkpoint(latest_in_run(local)):
        return AutoencoderPipeline.from_ref(ref)
    if not local.exists():
        try:
            path = latest_in_run(resolve_ref(ref))
        except BedgenError:
            path = None  # let the diffusion loader give its own (more specific) error
        if path is not None and is_autoencoder_checkpoint(path):
            return AutoencoderPipeline.from_ref(ref)
    return Pipeline.from_ref(ref)
