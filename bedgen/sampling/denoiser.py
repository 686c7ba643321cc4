"""The network as every sampler sees it: the one place inference calls the UNet.

A :class:`Denoiser` is built once per loaded model (in ``Pipeline``'s constructor), where
the model's kind is read from its training scheduler; samplers then ask it for what their
update needs instead of calling the UNet, in the spirit of the preconditioned denoiser
of Karras et al. 2022 (EDM, Sec. 5 and Table 1) and k-diffusion's model wrappers:

* :meth:`Denoiser.scheduler_output`: the raw output a diffusers scheduler's ``step`` takes,
  [ε, v] for ancestral DDPM with a learned variance (Nichol & Dhariwal 2021, Sec. 3.1),
  the prediction alone for every other scheduler;
* :meth:`Denoiser.split`: (x̂_0, ε̂) whatever the network predicts (ε, v or x_0), for DDIM
  moves and trajectories (``bedgen.maths.diffusion.split_prediction``);
* :meth:`Denoiser.score`: ∇ₓ log p_σ(x) for σ-conditioned score networks (smld).

Every call goes through :meth:`Denoiser.network`, which owns what a UNet call needs at
inference: the engine (PyTorch eager; for fp32 on the CPU also NNPACK Winograd, ONNX Runtime or
OpenVINO: ``backends.py``),
autocast to the request's compute dtype, channels_last input (the layout
``SharedPlacement`` gives the weights), float32 output. A Denoiser holds the network,
facts about it and its converted programs only; the placement comes with each call, so
two requests can share one.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from diffusers import CMStochasticIterativeScheduler, DDPMScheduler, UNet2DModel
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..core.device import Placement
from ..maths.diffusion import split_prediction
from .backends import ENGINES, choose_backend
from .schedulers import is_score_scheduler

Kind = Literal["vp", "consistency", "score"]
LEARNED_VARIANCES = ("learned", "learned_range")


class Denoiser:
    """A UNet and how to read its output; stateless across requests."""

    def __init__(self, unet: UNet2DModel, kind: Kind, prediction_type: str = "epsilon"):
        self.unet = unet
        self.kind: Kind = kind
        self.prediction_type = prediction_type
        self.channels = int(unet.config.in_channels)
        self.parameters = sum(p.numel() for p in unet.parameters())
        size = unet.config.sample_size  # the side it samples at, unless a request says otherwise
        self.side = None if size is None else int(size if isinstance(size, int) else min(size))
        self.engines = {name: engine(unet, self._forward) for name, engine in ENGINES.items()}

    @classmethod
    def for_model(cls, unet: UNet2DModel, training_scheduler: SchedulerMixin) -> "Denoiser":
        """The model-kind dispatch, done once at load time from the training scheduler."""
        if is_score_scheduler(training_scheduler):
            return cls(unet, "score")
        kind: Kind = "consistency" if isinstance(training_scheduler, CMStochasticIterativeScheduler) else "vp"
        return cls(unet, kind, training_scheduler.config.get("prediction_type", "epsilon"))

    def describe(self, placement: Placement) -> str:
        """``placement.describe()``, and the engine that ran the network where it is not PyTorch:
        only once that engine is ready, so a fall-back to eager is never reported as the engine."""
        engine = choose_backend(placement.backend, placement, self.parameters, side=self.side)[0]
        if engine != "eager" and self.engines[engine].ready:
            return f"{placement.describe()}; on {self.engines[engine].label}"
        return placement.describe()

    def network(self, x: torch.Tensor, t: Any, placement: Placement, keep_variance: bool = False) -> torch.Tensor:
        """The network's output at (x, t) in float32; a learned variance half is dropped
        unless ``keep_variance``. The only UNet call of bedgen's inference."""
        t = torch.as_tensor(t, device=x.device)
        out = None
        engine = choose_backend(placement.backend, placement, self.parameters, side=min(x.shape[2:]))[0]
        if engine != "eager":
            out = self.engines[engine].run(x, t)  # None: it could not, and said why
        if out is None:
            with torch.inference_mode(), placement.autocast():
                out = self._forward(x.contiguous(memory_format=torch.channels_last), t)
        out = out.float()
        return out if keep_variance else out[:, : self.channels]

    def _forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample  # the line every engine runs (the others export it)

    def scheduler_output(self, scheduler: SchedulerMixin, x: torch.Tensor, t: Any,
                         placement: Placement) -> torch.Tensor:
        """What ``scheduler.step(·, t, x)`` takes, with the scheduler's input scaling applied.

        Only ancestral DDPM reads a learned variance (iDDPM Eq. 15); the ODE solvers and
        DDIM use the prediction alone."""
        learned = getattr(scheduler.config, "variance_type", None) in LEARNED_VARIANCES
        keep_variance = isinstance(scheduler, DDPMScheduler) and learned
        return self.network(scheduler.scale_model_input(x, t), t, placement, keep_variance)

    def split(self, x: torch.Tensor, t: Any, abar: torch.Tensor,
              placement: Placement) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) at x = x_t, ᾱ = ``abar`` the schedule's value at t."""
        return self.split_output(self.network(x, t, placement), x, abar)

    def split_output(self, out: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x̂_0, ε̂) from an output already computed (a learned variance half is ignored)."""
        return split_prediction(out[:, : self.channels], x, abar.to(x.device), self.prediction_type)

    def score(self, x: torch.Tensor, sigma: torch.Tensor, placement: Placement) -> torch.Tensor:
        """s_θ(x, σ) ≈ ∇ₓ log p_σ(x) at one σ per image: a score network's output is the score
        itself (diffusers' Fourier-embedded UNet divides by σ inside, as NCSN++ does)."""
        return self.network(x, sigma, placement)
