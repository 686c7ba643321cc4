"""The VAE baseline and the autoencoders of latent diffusion, trained by the one trainer.

Per-sample loss, in nats per pixel dimension D = 3·H·W:

* ``kl``: ( −log p(x|z) + β·KL(q(z|x) ‖ N(0, I)) ) / D with z ~ q(z|x) by the
  reparameterisation trick (Kingma & Welling 2013, Eq. 10; β-VAE, Higgins et al. 2017).
  β = 1 is the negative ELBO; p(x|z) = N(x̂, σ² I) with σ = ``decoder_std``.
* ``vq``: −log p(x|z_q) / D + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖² (van den Oord et al. 2017, Eq. 3).
* both: + w·LPIPS(x, x̂) when ``perceptual_weight`` w > 0 (Rombach et al. 2022, App. G).

Sampling (``kl``) decodes z ~ N(0, I); a checkpoint is the model folder ``vae/``
(diffusers ``AutoencoderKL`` / ``VQModel``) plus ``bedgen.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import VQModel

from ..models import autoencoders as ae
from ..storage.checkpoint import load_autoencoder
from ..config.schema import BedgenConfig
from .base import FamilyHooks


class AutoencoderFamily(FamilyHooks):
    network_folder = "vae"

    def __init__(self, config: BedgenConfig):
        self.config = config
        self._lpips: torch.nn.Module | None = None
        if config.autoencoder.perceptual_weight > 0:
            check_perceptual_resolution(config.resolution)
            self._lpips = perceptual_model(config.autoencoder.lpips_weights)  # a bad file fails before training

    def prepare(self, dataset: Any) -> None:
        """Keep a few fixed training images for the reconstruction previews."""
        count = min(len(dataset), self.config.train.preview_images)
        self._preview_images = [dataset[i]["image"] for i in range(count)]

    @property
    def samples_from_prior(self) -> bool:
        """A VAE (KL weight near 1) is previewed by its samples; an LDM first stage (tiny KL
        weight: no usable prior) or a VQ model by reconstructions of fixed training images."""
        a = self.config.autoencoder
        return a.kind == "kl" and a.kl_weight >= 0.01

    def preview(self, pipe: Any, count: int, device: str) -> list[Any]:
        if self.samples_from_prior or not getattr(self, "_preview_images", None):
            return pipe.generate(count, seed=0, device=device)
        from PIL import Image

        originals = [Image.fromarray(image.permute(1, 2, 0).numpy()) for image in self._preview_images]
        return pipe.reconstruct(originals, device=device)

    def build_model(self) -> ae.Autoencoder:
        return ae.build_autoencoder(self.config)

    def load_network(self, ref: str) -> ae.Autoencoder:
        """The trained autoencoder of the model ``ref`` (fine-tuning starts from it)."""
        return load_autoencoder(ref)

    def loss(
        self, model: torch.nn.Module, x0: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(per-sample losses, zeros in place of timesteps, the same losses detached)."""
        a = self.config.autoencoder
        net = model.module if hasattr(model, "module") else model  # DDP wraps; the parts are on the module
        d = x0[0].numel()
        if isinstance(net, VQModel):
            z_e = net.encode(x0).latents
            z_q, codes = ae.quantize(net, z_e)
            x_hat = net.decode(z_q, force_not_quantize=True).sample.float()
            regulariser = ae.vq_terms(z_e.float(), codes.float(), a.vq_commitment)
        else:
            posterior = net.encode(x0).latent_dist
            noise = torch.randn(posterior.mean.shape, generator=generator, device=x0.device)
            z = posterior.mean + posterior.std * noise.to(posterior.mean.dtype)  # reparameterisation
            x_hat = net.decode(z).sample.float()
            regulariser = a.kl_weight * ae.gaussian_kl(posterior.mean.float(), posterior.logvar.float()) / d
        losses = ae.gaussian_nll(x0.float(), x_hat, a.decoder_std) / d + regulariser
        if self._lpips is not None:
            lpips = self._lpips.to(x0.device)
            losses = losses + a.perceptual_weight * lpips(x_hat.clamp(-1, 1), x0.float()).flatten()
        zeros = torch.zeros(x0.shape[0], dtype=torch.long, device=x0.device)
        return losses, zeros, losses.detach()

    def pipeline(self, model: torch.nn.Module, info: Any) -> Any:
        from ..sampling.pipeline import AutoencoderPipeline

        return AutoencoderPipeline(model, info)

    def write_checkpoint(self, path: Path, model: torch.nn.Module, config: Any, metadata: dict[str, Any],
                         extra: Callable[[Path], None] | None = None) -> Path:
        from ..storage.checkpoint import save_autoencoder_checkpoint

        return save_autoencoder_checkpoint(path, model, config, metadata=metadata, extra=extra)


def check_perceptual_resolution(resolution: int) -> None:
    from ..core.errors import BedgenError
    from ..models.lpips import MIN_RESOLUTION

    if resolution < MIN_RESOLUTION["alex"]:
        raise BedgenError(
            f"the LPIPS term needs images of at least {MIN_RESOLUTION['alex']} px (AlexNet's poolings), "
            f"got {resolution}: raise --resolution or set autoencoder.perceptual_weight=0"
        )


def perceptual_model(weights: str | None) -> torch.nn.Module:
    """LPIPS (AlexNet) as a frozen, differentiable loss; the backbone from ``weights`` or torchvision."""
    from ..models.lpips import lpips_network

    return lpips_network("alex", weights).requires_grad_(False)
