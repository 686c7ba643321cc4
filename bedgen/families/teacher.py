"""What the distillation families share: a diffusion teacher and its first stage.

``bedgen distill`` names the teacher (``distill.teacher``: a ddpm, iddpm or ldm run, checkpoint or
Hub DDPM); the student sees what the teacher denoises (pixels, or the latents of the teacher's own
autoencoder) and is decoded by the same autoencoder.
"""

from __future__ import annotations

import torch

from ..config.schema import BedgenConfig
from ..core.errors import BedgenError
from .base import UNetFamily


class TeacherFamily(UNetFamily):
    """A family whose network learns from a frozen diffusion teacher."""

    student = "student"  # what the family makes, for messages

    def __init__(self, config: BedgenConfig):
        from ..sampling.pipeline import Pipeline

        self.config = config
        d = config.distill
        if not (d.teacher or "").strip():
            raise BedgenError(f"a {self.student} is distilled from a teacher: bedgen distill --teacher REF "
                              "(a ddpm, iddpm or ldm checkpoint, or a Hub DDPM)")
        self.teacher = Pipeline.from_ref(d.teacher)
        if self.teacher.denoiser.kind != "vp":
            raise BedgenError(f"'{d.teacher}' is a {self.teacher.info.family} model; the teacher must be a "
                              "diffusion model (ddpm, iddpm or ldm) with a β schedule")

    def autoencoder(self) -> torch.nn.Module | None:
        return self.teacher.autoencoder  # a latent teacher's first stage decodes the student too

    def inputs(self, images: torch.Tensor, generator: torch.Generator, flip: torch.Tensor | None = None,
               indices: torch.Tensor | None = None) -> torch.Tensor:
        x = super().inputs(images, generator, flip)
        return self.teacher.encode(x).clone() if self.teacher.autoencoder is not None else x

    def teacher_network(self, device: torch.device) -> torch.nn.Module:
        """The teacher's UNet, on ``device`` (it is loaded on the CPU)."""
        return on_device(self.teacher.unet, device)


def on_device(unet: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``unet``, moved to ``device`` the first time a batch there needs it (a frozen network)."""
    if next(unet.parameters()).device != device:
        unet.to(device)
    return unet


__all__ = ["TeacherFamily", "on_device"]
