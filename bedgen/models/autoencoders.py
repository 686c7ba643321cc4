"""Convolutional autoencoders: the ``vae`` family's network and the first stage of ``ldm``.

Both are diffusers models, so a bedgen-trained autoencoder and a pretrained one
(e.g. a Stable Diffusion VAE from the Hub) load and run through the same code:

* ``AutoencoderKL``: q(z|x) = N(μ(x), diag σ²(x)) (Kingma & Welling 2013, Sec. 2.4).
* ``VQModel``: z_q = the nearest codebook vector of the encoder output
  (van den Oord et al. 2017, Sec. 3.1); latent diffusion runs on the encoder
  output before quantisation and the decoder quantises (Rombach et al. 2022, Sec. 3.1).

The ELBO terms are pure functions over tensors below; ``families.vae`` adds them up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import AutoencoderKL, VQModel

from ..config.schema import AutoencoderConfig, BedgenConfig
from ..core.errors import BedgenError

Autoencoder = AutoencoderKL | VQModel
CLASSES = {"AutoencoderKL": AutoencoderKL, "VQModel": VQModel}
# Where an autoencoder may sit inside a REF: a bedgen vae checkpoint or a diffusers
# pipeline (vae/, or vqvae/ as in LDMPipeline), or the REF's root (a bare model folder).
SUBFOLDERS = ("vae", "vqvae", "")
HUB_PATTERNS = [
    "bedgen.json", "model_index.json", "config.json", "diffusion_pytorch_model.safetensors",
    "vae/*.json", "vae/*.safetensors", "vqvae/*.json", "vqvae/*.safetensors",
]
SCALE_SAMPLE = 512  # images used to estimate the latent scaling factor


# --- building and loading ---------------------------------------------------------------


def build_autoencoder(config: BedgenConfig) -> Autoencoder:
    """A freshly initialised autoencoder with the config's layout."""
    a: AutoencoderConfig = config.autoencoder
    levels = len(a.block_out_channels)
    common = dict(
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(a.block_out_channels),
        layers_per_block=a.layers_per_block,
        latent_channels=a.latent_channels,
        norm_num_groups=a.norm_num_groups,
        sample_size=config.resolution,
        scaling_factor=1.0,
    )
    if a.kind == "vq":
        return VQModel(num_vq_embeddings=a.num_vq_embeddings, **common)
    return AutoencoderKL(**common)


def kind_of(model: Autoencoder) -> str:
    return "vq" if isinstance(model, VQModel) else "kl"


def downsample_factor(model: Autoencoder) -> int:
    return 2 ** (len(model.config.block_out_channels) - 1)


def latent_channels(model: Autoencoder) -> int:
    return int(model.config.latent_channels)


def find_autoencoder_folder(path: Path) -> Path | None:
    """The folder holding an autoencoder's config.json inside a checkpoint, or None."""
    for sub in SUBFOLDERS:
        folder = path / sub if sub else path
        config = folder / "config.json"
        if config.is_file() and json.loads(config.read_text()).get("_class_name") in CLASSES:
            return folder
    return None


def load_autoencoder_folder(folder: Path, ref: str) -> Autoencoder:
    """The model in ``folder`` (config.json + safetensors weights), frozen."""
    name = json.loads((folder / "config.json").read_text())["_class_name"]
    try:
        model = CLASSES[name].from_pretrained(folder, low_cpu_mem_usage=False, use_safetensors=True)
    except (OSError, ValueError, RuntimeError) as e:
        raise BedgenError(f"could not load the autoencoder of '{ref}': {str(e).splitlines()[0]}") from e
    return model.eval().requires_grad_(False)


# --- encoding and decoding ----------------------------------------------------------------


def encode(model: Autoencoder, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Unscaled latents of images in [-1, 1]: a posterior sample (KL, when a generator is
    given), the posterior mean (KL, no generator) or the pre-quantisation output (VQ)."""
    return latents_from(posterior_parameters(model, x), kind_of(model), generator)


def posterior_parameters(model: Autoencoder, x: torch.Tensor) -> torch.Tensor:
    """What the encoder says about each image: (mean, std) stacked on channels for KL
    (2C channels), the pre-quantisation latent for VQ (C channels)."""
    if isinstance(model, VQModel):
        return model.encode(x).latents
    posterior = model.encode(x).latent_dist
    return torch.cat([posterior.mean, posterior.std], dim=1)


def latents_from(parameters: torch.Tensor, kind: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents from :func:`posterior_parameters`: z = μ + σ·ε with ε ~ N(0, I) drawn from
    ``generator`` (the reparameterisation, Kingma & Welling 2013, Eq. 10), μ without one; VQ as is."""
    if kind == "vq":
        return parameters
    mean, std = parameters.chunk(2, dim=1)
    if generator is None:
        return mean
    noise = torch.randn(mean.shape, generator=generator, device=generator.device)
    return mean + std * noise.to(mean.dtype)


def decode(model: Autoencoder, z: torch.Tensor) -> torch.Tensor:
    """Images (about [-1, 1]) from unscaled latents; VQ latents are quantised first."""
    return model.decode(z).sample


@torch.no_grad()
def estimate_scaling_factor(
    model: Autoencoder, images: Callable[[int], torch.Tensor], count: int, batch_size: int = 32
) -> float:
    """1 / std of the latents over ``count`` images, so scaled latents have unit variance
    like the diffusion's prior (Rombach et al. 2022, Sec. 4.3.2 and App. G)."""
    total, total_sq, n = 0.0, 0.0, 0
    for start in range(0, count, batch_size):
        z = encode(model, images(start).float()).double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        n += z.numel()
    variance = total_sq / n - (total / n) ** 2
    if not (math.isfinite(variance) and variance > 1e-12):
        raise BedgenError("the autoencoder maps the data to constant latents; it cannot be used for ldm")
    return 1.0 / math.sqrt(variance)


# --- the ELBO and VQ terms, per sample ----------------------------------------------------


def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) || N(0, I)) summed over latent dimensions (Kingma & Welling 2013, App. B):
    −½ Σ (1 + log σ² − μ² − σ²)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).flatten(1).sum(1)


def gaussian_nll(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """−log N(x; x̂, σ² I) summed over pixels: Σ (x − x̂)² / 2σ² + D log(σ √(2π))."""
    d = x[0].numel()
    return (x - mean).pow(2).flatten(1).sum(1) / (2 * std**2) + d * math.log(std * math.sqrt(2 * math.pi))


def vq_terms(z_e: torch.Tensor, codes: torch.Tensor, beta: float) -> torch.Tensor:
    """‖sg[z_e] − e‖² + β ‖z_e − sg[e]‖², mean over latent entries (van den Oord et al. 2017, Eq. 3)."""
    codebook = (z_e.detach() - codes).pow(2).flatten(1).mean(1)
    commitment = (z_e - codes.detach()).pow(2).flatten(1).mean(1)
    return codebook + beta * commitment


def quantize(model: VQModel, z_e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(z_q with the straight-through gradient, the chosen codebook vectors e)."""
    z_q, _, (_, _, indices) = model.quantize(z_e)
    codes = model.quantize.embedding(indices.view(-1)).view(z_e.shape[0], z_e.shape[2], z_e.shape[3], -1)
    return z_q, codes.permute(0, 3, 1, 2)


def describe(model: Autoencoder) -> dict[str, Any]:
    return {"class": type(model).__name__, "kind": kind_of(model), "downsample_factor": downsample_factor(model),
            "latent_channels": latent_channels(model)}
