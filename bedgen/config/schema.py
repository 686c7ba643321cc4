"""Configuration: dataclasses are the single source of truth, presets are named instances.

A config travels inside every checkpoint (``bedgen.json``), so a model can always
be rebuilt from it. CLI flags and app controls are derived from these fields.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from ..core.checks import real_number, whole_number
from ..core.errors import BedgenError

Square = Literal["crop", "pad-white"]
Split = Literal["train", "validation"]
SQUARES: tuple[str, ...] = ("crop", "pad-white")

Family = Literal["ddpm", "iddpm", "ldm", "smld", "vae", "consistency", "progressive"]
DistillMethod = Literal["consistency", "progressive"]
DISTILL_METHODS = ("consistency", "progressive")  # each is also the family that trains it
# Choices are Literals, not booleans (improved-diffusion's ModelMeanType / ModelVarType).
PredictionType = Literal["epsilon", "v_prediction", "sample"]
BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
VarianceType = Literal["fixed_small", "fixed_large", "learned_range"]
LossType = Literal["mse", "hybrid"]
TimestepSampling = Literal["uniform", "importance"]
OptimizerName = Literal["adamw", "adam", "sgd", "adadelta"]
MixedPrecision = Literal["auto", "no", "fp16", "bf16"]
LRSchedule = Literal["constant", "cosine"]
NanPolicy = Literal["stop", "rollback"]
AutoencoderKind = Literal["kl", "vq"]

# Interpolation through noised latents (sampling/interpolate.py): the CLI's flags and the
# app's sliders start from these, and reading them must not import the sampler.
INTERPOLATION_METHODS: tuple[str, ...] = ("noise", "ddim-inversion")
INTERPOLATION_METHOD = INTERPOLATION_METHODS[0]  # the default: one forward noising, no inversion pass
INTERPOLATION_T = 0.5
INTERPOLATION_FRAMES = 8
INTERPOLATION_STEPS = 25  # DDIM steps from t down to 0 (and from 0 up to t when inverting)
MAX_INTERPOLATION_FRAMES = 64

# Choices of evaluation/ and models/lpips.py that the CLI offers: here, so that building its
# parser (``bedgen --help``) imports no torch.
LPIPS_NETS: tuple[str, ...] = ("alex", "vgg")
FEATURE_LAYERS: tuple[str, ...] = ("64", "192", "768", "2048")  # Inception layers by torch-fidelity's names = dimensions
DEFAULT_MAX_FEATURES = 10_000  # Inception features kept for KID/PR: 80 MB; KID subsets are 1000


@dataclass
class UNetConfig:
    """Layout of a diffusers ``UNet2DModel`` (channels, depth, where attention sits)."""

    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")
    # None = one attention head over all channels, as in the DDPM paper's UNet.
    attention_head_dim: int | None = None
    norm_num_groups: int = 8
    dropout: float = 0.0
    # "scale_shift" = adaptive group norm on the timestep (Dhariwal & Nichol 2021, Sec. 3)
    resnet_time_scale_shift: Literal["default", "scale_shift"] = "default"

    def validate(self) -> None:
        n = len(self.block_out_channels)
        if len(self.down_block_types) != n or len(self.up_block_types) != n:
            raise BedgenError(
                f"unet: {n} block_out_channels but {len(self.down_block_types)} down and "
                f"{len(self.up_block_types)} up block types; give one of each per level"
            )
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise BedgenError(
                f"unet: channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )

    @property
    def downsample_factor(self) -> int:
        """Every level but the last halves the resolution."""
        return 2 ** (len(self.block_out_channels) - 1)


@dataclass
class DiffusionConfig:
    """The forward process and what the network predicts (Ho et al. 2020, Sec. 2)."""

    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    prediction_type: PredictionType = "epsilon"
    variance_type: VarianceType = "fixed_small"
    clip_sample: bool = True
    # "hybrid" = L_simple + λ·L_vlb (Nichol & Dhariwal 2021, Eq. 16); needs learned_range
    loss_type: LossType = "mse"
    vlb_weight: float = 0.001
    timestep_sampling: TimestepSampling = "uniform"


@dataclass
class TrainConfig:
    """Optimisation, EMA, checkpointing and logging of one training run."""

    max_steps: int | None = 2500  # optimizer updates; None = run --epochs
    epochs: int | None = None
    batch_size: int = 32  # per process, per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    optimizer: OptimizerName = "adamw"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only
    warmup_steps: int = 200
    lr_schedule: LRSchedule = "constant"
    grad_clip: float = 1.0  # 0 = off
    ema_decay: float = 0.999
    # EMA warm-up: decay_k = min(ema_decay, 1 - (1 + k)^-power) so early samples use recent weights
    ema_power: float = 0.75
    ema_every: int = 1
    mixed_precision: MixedPrecision = "auto"  # bf16 autocast where native, else fp32
    seed: int = 0
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    preview_every: int = 500
    preview_images: int = 16
    log_every: int = 10
    nan_policy: NanPolicy = "stop"
    validate_every: int = 0  # 0 = never; needs data.validation_fraction > 0
    early_stop_patience: int = 0  # validations without improvement before stopping; 0 = off
    num_workers: int = 0
    # FID during training (Heusel et al. 2017), logged to metrics.jsonl; the best EMA
    # weights are kept in RUN/best-fid/. 0 = off; when on, also at the last step.
    fid_every: int = 0
    fid_samples: int = 1000  # samples per evaluation (seeds seed .. seed+N-1, the same each time)
    fid_ref: str | None = None  # .npz from `bedgen ref-stats`, an ADM reference batch, or a data source
    fid_batch_size: int = 32  # images per sampling + Inception batch (per process)
    inception_weights: str | None = None  # torch-fidelity Inception weights file; None = the standard download

    def validate(self) -> None:
        if self.batch_size < 1:
            raise BedgenError(f"batch size must be at least 1, got {self.batch_size}")
        if self.grad_accum < 1:
            raise BedgenError(f"grad accumulation must be at least 1, got {self.grad_accum}")
        if (self.max_steps is None) == (self.epochs is None):
            raise BedgenError("give exactly one of --max-steps and --epochs")
        if (self.max_steps or 1) < 1 or (self.epochs or 1) < 1:
            raise BedgenError("--max-steps / --epochs must be at least 1")
        if not self.lr > 0:
            raise BedgenError(f"learning rate must be positive, got {self.lr}")
        if not 0 <= self.ema_decay < 1:
            raise BedgenError(f"EMA decay must be in [0, 1), got {self.ema_decay}")
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise BedgenError("--checkpoint-every and keep_checkpoints must be at least 1")
        self._validate_fid()

    def _validate_fid(self) -> None:
        if self.fid_every < 0:
            raise BedgenError(f"--fid-every must be 0 (off) or a number of steps, got {self.fid_every}")
        if self.fid_every == 0:
            return
        if not (self.fid_ref or "").strip():
            raise BedgenError(
                "--fid-every needs --fid-ref: a .npz from 'bedgen ref-stats', an ADM reference batch, "
                "or a data source (e.g. the training data) whose statistics are computed and cached"
            )
        if self.fid_samples < 2:
            raise BedgenError(f"--fid-samples must be at least 2 (FID needs a covariance), got {self.fid_samples}")
        if self.fid_batch_size < 1:
            raise BedgenError(f"--fid-batch-size must be at least 1, got {self.fid_batch_size}")


FinalStep = Literal["denoise", "none"]


@dataclass
class ScoreConfig:
    """Noise levels and Langevin settings of the score-based family (``smld``).

    Song & Ermon 2019 (NCSN) with the improvements of Song & Ermon 2020 (NCSNv2).
    """

    sigma_min: float = 0.01
    # None: the largest pairwise distance between training images (NCSNv2 technique 1),
    # measured when training starts and written back into the saved config.
    sigma_max: float | None = None
    num_levels: int = 200  # L, the training ladder
    langevin_steps: int = 5  # T, Langevin steps per level when sampling
    step_size: float = 2e-5  # ε: α_i = ε σ_i² / σ_L²
    snr: float = 0.16  # signal-to-noise ratio of the predictor-corrector's corrector
    corrector_steps: int = 1
    final_step: FinalStep = "denoise"

    def validate(self) -> None:
        if not self.sigma_min > 0:
            raise BedgenError(f"score.sigma_min must be positive, got {self.sigma_min}")
        if self.sigma_max is not None and not self.sigma_max > self.sigma_min:
            raise BedgenError(f"score.sigma_max ({self.sigma_max}) must exceed score.sigma_min ({self.sigma_min})")
        if self.num_levels < 2 or self.langevin_steps < 1 or self.corrector_steps < 0:
            raise BedgenError("score.num_levels must be >= 2, score.langevin_steps >= 1, score.corrector_steps >= 0")
        if not (self.step_size > 0 and self.snr > 0):
            raise BedgenError("score.step_size and score.snr must be positive")


@dataclass
class AutoencoderConfig:
    """The convolutional autoencoder of the ``vae`` family (diffusers ``AutoencoderKL`` / ``VQModel``).

    ``kind=kl`` with ``kl_weight=1`` is the VAE of Kingma & Welling 2013 (β-VAE for
    other weights, Higgins et al. 2017); with a small KL weight and the LPIPS term it
    is the first stage of latent diffusion (Rombach et al. 2022, Sec. 3.1 and App. G).
    ``kind=vq`` is a VQ-VAE (van den Oord et al. 2017) first stage.
    """

    kind: AutoencoderKind = "kl"
    # every level but the last halves the resolution: f = 2^(levels - 1)
    block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    layers_per_block: int = 1
    latent_channels: int = 8
    norm_num_groups: int = 8
    num_vq_embeddings: int = 256  # codebook size (vq)
    kl_weight: float = 1.0  # β: 1 = the ELBO
    decoder_std: float = 0.1  # σ of the Gaussian decoder p(x|z) = N(x̂, σ² I), images in [-1, 1]
    perceptual_weight: float = 0.0  # LPIPS term (Zhang et al. 2018); needs a backbone (lpips_weights)
    lpips_weights: str | None = None  # torchvision AlexNet state dict; None = torchvision's download
    vq_commitment: float = 0.25  # β of the VQ-VAE commitment loss

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> None:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise BedgenError(
                f"autoencoder: channels {bad} are not divisible by norm_num_groups={self.norm_num_groups}"
            )
        if self.latent_channels < 1 or self.num_vq_embeddings < 2:
            raise BedgenError("autoencoder.latent_channels must be >= 1 and num_vq_embeddings >= 2")
        if self.kl_weight < 0 or self.perceptual_weight < 0 or not self.decoder_std > 0:
            raise BedgenError("autoencoder: kl_weight and perceptual_weight must be >= 0, decoder_std > 0")


@dataclass
class LatentConfig:
    """Where the diffusion of the ``ldm`` family runs: the latents of a frozen autoencoder."""

    # REF (local folder or Hub id) of an AutoencoderKL / VQModel: a bedgen vae/autoencoder
    # checkpoint, a diffusers pipeline with vae/ or vqvae/, or a bare model folder.
    autoencoder: str | None = None
    kind: AutoencoderKind = "kl"  # what the preset expects; a mismatch is an error
    # z is multiplied by this before diffusion; None = 1 / std of the data's latents
    # (Rombach et al. 2022, Sec. 4.3.2 and App. G), estimated when training starts.
    scaling_factor: float | None = None
    downsample_factor: int = 4  # f; checked against the autoencoder
    sample_posterior: bool = True  # train on z ~ q(z|x) (KL) rather than its mean
    # Encode the training set once before step 0 (and its mirror images with data.flip) and
    # train on the stored posteriors: the frozen encoder no longer runs every step. Held in
    # memory, fp32: N x (2 with flips) x 2C x (R/f)^2 x 4 bytes; rebuilt when a run resumes.
    cache: bool = False


@dataclass
class FinetuneConfig:
    """Start from a trained model and fit a few instance images (``data.source``) while class
    images of the original model keep its diversity: DreamBooth's prior preservation
    (Ruiz et al. 2023, Eq. 2) without a text prompt. Every batch pairs each instance image
    with a class image; the class half of the loss is weighted by ``prior_weight``."""

    init_from: str | None = None  # REF whose network weights start training; None = random init
    class_data: str | None = None  # image folder of the original model's samples; None = no prior term
    prior_weight: float = 1.0  # λ of the prior-preservation term

    def validate(self) -> None:
        real_number("finetune.prior_weight", self.prior_weight, 0.0)
        if self.class_data is not None and not self.init_from:
            raise BedgenError("finetune.class_data needs finetune.init_from: the model whose prior is preserved")


@dataclass
class DistillConfig:
    """Distillation of a diffusion teacher into a few-step student. ``method`` picks the family:
    ``consistency`` (``bedgen.families.consistency``): Song et al. 2023, Alg. 2, in the
    parameterisation of their App. C; ``progressive`` (``bedgen.families.progressive``): Salimans &
    Ho 2022, Alg. 2, halving a DDIM sampler's steps from ``start_steps`` to ``final_steps``."""

    teacher: str | None = None  # REF of the ddpm / iddpm / ldm teacher (local folder or Hub id)
    method: DistillMethod = "consistency"
    # Progressive: the teacher's DDIM steps the first stage halves, and the student's final steps;
    # log2(start / final) stages share the run's steps equally (the paper started at 1024-8192).
    start_steps: int = 64
    final_steps: int = 1
    # N, the points of the Karras σ grid the teacher's ODE is cut into (the paper: 18 for
    # CIFAR-10, 40 for ImageNet 64 and LSUN 256).
    num_scales: int = 18
    sigma_min: float = 0.002
    sigma_max: float | None = None  # None = the teacher's largest σ, at most 80 (EDM's σ_max)
    sigma_data: float = 0.5
    rho: float = 7.0
    solver: Literal["heun", "euler"] = "heun"  # the teacher's ODE step; Heun costs two teacher calls
    loss: Literal["pseudo-huber", "l2"] = "pseudo-huber"

    def validate(self) -> None:
        whole_number("distill.num_scales", self.num_scales, 2, 100_000)  # the σ grid needs two ends
        real_number("distill.sigma_min", self.sigma_min, 1e-6)
        real_number("distill.sigma_data", self.sigma_data, 1e-6)
        real_number("distill.rho", self.rho, 1e-3)
        if self.sigma_max is not None:
            real_number("distill.sigma_max", self.sigma_max, self.sigma_min, low_open=True)
        if self.method not in DISTILL_METHODS:
            raise BedgenError(f"distill.method must be one of {', '.join(DISTILL_METHODS)}, not {self.method!r}")
        whole_number("distill.final_steps", self.final_steps, 1, 1 << 20)
        whole_number("distill.start_steps", self.start_steps, 2, 1 << 20)
        if self.start_steps <= self.final_steps:
            raise BedgenError(f"distill.start_steps ({self.start_steps}) must exceed distill.final_steps "
                              f"({self.final_steps}): each stage halves the steps")
        ratio, rest = divmod(self.start_steps, self.final_steps)
        if rest or ratio & (ratio - 1):
            raise BedgenError(f"distill.start_steps / distill.final_steps ({self.start_steps} / {self.final_steps}) "
                              "must be a power of two: each stage halves the steps")


@dataclass
class SamplingConfig:
    """Defaults for ``Pipeline.generate`` and the app's Generate tab."""

    scheduler: str = "dpmsolver++"
    steps: int = 20


@dataclass
class DataConfig:
    """Where training images come from and how they are squared and subset."""

    # image folder | LSUN LMDB dir | HF dataset id or local parquet/arrow dir | prepared shards dir
    source: str = ""
    square: Square = "crop"  # center crop, or pad with white to the longer side
    fraction: float = 1.0  # reproducible subset in (0, 1], chosen from subset_seed
    subset_seed: int = 0
    validation_fraction: float = 0.0  # in [0, 1); split by key hash (bedgen.data.datasets docstring)
    flip: bool = True  # random horizontal flip, applied by the trainer
    image_column: str | None = None  # HF datasets: detected automatically unless given

    def validate(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise BedgenError(
                "no data source given; pass an image folder, an LSUN LMDB directory, "
                "prepared shards or a Hugging Face dataset id"
            )
        if self.square not in SQUARES:
            raise BedgenError(f"square must be one of {', '.join(SQUARES)}, not {self.square!r}")
        if not 0 < self.fraction <= 1:
            raise BedgenError(f"fraction must be in (0, 1], got {self.fraction}")
        if not 0 <= self.validation_fraction < 1:
            raise BedgenError(f"validation_fraction must be in [0, 1), got {self.validation_fraction}")


@dataclass
class BedgenConfig:
    """Everything needed to rebuild a model; stored in ``bedgen.json``."""

    preset: str = "tiny"
    family: Family = "ddpm"
    resolution: int = 32
    in_channels: int = 3
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    latent: LatentConfig = field(default_factory=LatentConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    @property
    def out_channels(self) -> int:
        # Learned-range variance (Nichol & Dhariwal 2021, Eq. 15) doubles the output.
        learned = self.diffusion.variance_type == "learned_range"
        return self.in_channels * (2 if learned else 1)

    @property
    def model_resolution(self) -> int:
        """The side of what the UNet sees: the image, or its latent for ``ldm``."""
        if self.family == "ldm":
            return self.resolution // self.latent.downsample_factor
        return self.resolution

    def validate(self) -> None:
        self.train.validate()
        self.finetune.validate()
        self.distill.validate()
        if self.family in DISTILL_METHODS and self.distill.method != self.family:
            raise BedgenError(f"a {self.family} student is made with distill.method={self.family}, not "
                              f"{self.distill.method}: use bedgen distill --method {self.distill.method}")
        if self.family == "vae":
            self._validate_autoencoder()
            return
        self.unet.validate()
        self.score.validate()
        hybrid = self.diffusion.loss_type == "hybrid"
        learned = self.diffusion.variance_type == "learned_range"
        if hybrid != learned:
            raise BedgenError(
                "a learned variance is trained by the hybrid loss: use diffusion.variance_type=learned_range "
                "together with diffusion.loss_type=hybrid (or neither)"
            )
        f = self.unet.downsample_factor * (self.latent.downsample_factor if self.family == "ldm" else 1)
        if self.resolution < f or self.resolution % f:
            raise BedgenError(
                f"resolution {self.resolution} is not a multiple of the model's downsampling "
                f"factor {f} ({len(self.unet.block_out_channels)} UNet levels"
                f"{', latent f = %d' % self.latent.downsample_factor if self.family == 'ldm' else ''}); "
                f"use e.g. {max(f, round(self.resolution / f) * f)}"
            )
        if self.family == "ldm" and self.diffusion.clip_sample:
            raise BedgenError("latents are not bounded to [-1, 1]: set diffusion.clip_sample=false for ldm")
        if self.diffusion.num_train_timesteps < 1:
            raise BedgenError("diffusion.num_train_timesteps must be at least 1")

    def _validate_autoencoder(self) -> None:
        self.autoencoder.validate()
        f = self.autoencoder.downsample_factor
        if self.resolution < f or self.resolution % f:
            raise BedgenError(
                f"resolution {self.resolution} is not a multiple of the autoencoder's downsampling factor {f}; "
                f"use e.g. {max(f, round(self.resolution / f) * f)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BedgenConfig":
        return _from_dict(cls, data)


def _from_dict(cls: type, data: dict[str, Any]):
    """Build a (nested) dataclass from plain JSON data; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise BedgenError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            value = _from_dict(hint, value)
        elif _is_tuple_hint(hint) and isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def _is_tuple_hint(hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_tuple_hint(a) for a in typing.get_args(hint))
    return origin is tuple


# --- presets --------------------------------------------------------------------------

_D, _AD, _U, _AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"


def _preset(
    name: str, resolution: int, unet: UNetConfig, train: TrainConfig | None = None,
    family: Family = "ddpm", **diffusion: Any,
) -> BedgenConfig:
    return BedgenConfig(
        preset=name,
        family=family,
        resolution=resolution,
        unet=unet,
        diffusion=DiffusionConfig(**diffusion),
        train=train or TrainConfig(),
    )


def _score_preset(
    name: str, resolution: int, unet: UNetConfig, train: TrainConfig, score: ScoreConfig, steps: int
) -> BedgenConfig:
    return BedgenConfig(
        preset=name, family="smld", resolution=resolution, unet=unet, score=score, train=train,
        sampling=SamplingConfig(scheduler="langevin", steps=steps),
    )


def _vae_preset(name: str, resolution: int, autoencoder: AutoencoderConfig, train: TrainConfig) -> BedgenConfig:
    return BedgenConfig(
        preset=name, family="vae", resolution=resolution, autoencoder=autoencoder, train=train,
        sampling=SamplingConfig(scheduler="prior", steps=1),
    )


def _ldm_preset(
    name: str, resolution: int, kind: AutoencoderKind, unet: UNetConfig, train: TrainConfig
) -> BedgenConfig:
    # Rombach et al. 2022, App. E.2: T = 1000, "scaled linear" β from 0.0015 to 0.0195.
    return BedgenConfig(
        preset=name, family="ldm", resolution=resolution, in_channels=4 if kind == "kl" else 3, unet=unet,
        latent=LatentConfig(kind=kind, downsample_factor=4),
        diffusion=DiffusionConfig(beta_schedule="scaled_linear", beta_start=0.0015, beta_end=0.0195,
                                  clip_sample=False),
        train=train,
    )


def _first_stage(kind: AutoencoderKind, channels: tuple[int, ...]) -> AutoencoderConfig:
    """An LDM first stage: f = 4, small KL weight or a codebook, LPIPS (Rombach et al. 2022, App. G)."""
    if kind == "kl":
        return AutoencoderConfig("kl", channels, 2, latent_channels=4, norm_num_groups=32,
                                 kl_weight=1e-6, perceptual_weight=1.0)
    return AutoencoderConfig("vq", channels, 2, latent_channels=3, norm_num_groups=32,
                             num_vq_embeddings=1024, perceptual_weight=1.0)


_AE_TRAIN = TrainConfig(max_steps=50_000, batch_size=16, lr=4.5e-6 * 16, optimizer="adam", warmup_steps=500,
                        ema_decay=0.999)
_LDM_TRAIN = TrainConfig(max_steps=100_000, batch_size=48, lr=1e-4, warmup_steps=1000, ema_decay=0.9999,
                         checkpoint_every=2000, preview_every=2000)


# The seed DDPM sweep: Adam(W) at 1e-4, batch 16 (lr 1e-3 diverged for mid/big).
_SWEEP_TRAIN = TrainConfig(max_steps=20_000, batch_size=16, lr=1e-4, warmup_steps=500, ema_decay=0.9999)


def _sweep_preset(name: str, unet: UNetConfig) -> BedgenConfig:
    """A UNet of the seed DDPM sweep: 96 px, 500 training steps, the sweep's training settings."""
    return _preset(name, 96, unet, _SWEEP_TRAIN, num_train_timesteps=500)


PRESETS: dict[str, BedgenConfig] = {
    # Small enough to train on a laptop CPU in minutes at 32 px.
    "tiny": _preset(
        "tiny",
        32,
        UNetConfig((32, 64, 64), 1, (_D, _AD, _D), (_U, _AU, _U), None, 8),
    ),
    # The three UNets of the seed DDPM sweep (96 px, 500 training steps).
    "ddpm-small": _sweep_preset(
        "ddpm-small", UNetConfig((64, 64, 128, 128, 256), 1, (_D, _D, _D, _D, _AD), (_AU, _U, _U, _U, _U), None, 32),
    ),
    # Same layout as google/ddpm-bedroom-256.
    "ddpm-mid": _sweep_preset("ddpm-mid", UNetConfig(
        (128, 128, 256, 256, 512, 512), 2, (_D, _D, _D, _D, _AD, _D), (_U, _AU, _U, _U, _U, _U), None, 32,
    )),
    "ddpm-big": _sweep_preset("ddpm-big", UNetConfig(
        (128, 256, 256, 512, 512, 768), 3, (_D, _D, _D, _D, _AD, _D), (_U, _U, _U, _U, _AU, _U), None, 32,
    )),
    # The seed SMLD/DDPM comparison: 3 down + 3 up blocks at 64 px, 1000 steps.
    "ddpm-3level": _preset(
        "ddpm-3level",
        64,
        UNetConfig((64, 128, 256), 2, (_D, _D, _AD), (_AU, _U, _U), None, 32),
        TrainConfig(max_steps=20_000, batch_size=32, lr=1e-4, optimizer="adam", warmup_steps=500, ema_decay=0.9999),
    ),
    # The seed improved DDPM: 128 px, attention at 32/16/8, dropout 0.1, AdaGN, lr 3e-4,
    # EMA 0.9999, micro-batch 8 accumulated to 128, cosine schedule, hybrid loss.
    "iddpm-128": _preset(
        "iddpm-128",
        128,
        UNetConfig(
            (128, 128, 256, 384, 512), 2, (_D, _D, _AD, _AD, _AD), (_AU, _AU, _AU, _U, _U), 64, 32,
            dropout=0.1, resnet_time_scale_shift="scale_shift",
        ),
        TrainConfig(
            max_steps=100_000, batch_size=8, grad_accum=16, lr=3e-4, optimizer="adam",
            warmup_steps=1000, ema_decay=0.9999, checkpoint_every=2000, preview_every=2000,
        ),
        family="iddpm",
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        loss_type="hybrid",
        clip_sample=True,
    ),
    # Score-based models (SMLD/NCSN, Song & Ermon 2019 with NCSNv2's techniques):
    # σ_max from the data, σ_min = 0.01, annealed Langevin sampling.
    "smld-tiny": _score_preset(
        "smld-tiny", 32, UNetConfig((32, 64, 64), 1, (_D, _AD, _D), (_U, _AU, _U), None, 8),
        TrainConfig(), ScoreConfig(num_levels=200), steps=100,
    ),
    "smld": _score_preset(
        "smld", 64, UNetConfig((64, 128, 256), 2, (_D, _D, _AD), (_AU, _U, _U), None, 32),
        TrainConfig(max_steps=50_000, batch_size=64, lr=1e-4, optimizer="adam", warmup_steps=500, ema_decay=0.999),
        ScoreConfig(num_levels=500, step_size=5e-6), steps=500,
    ),
    "smld-128": _score_preset(
        "smld-128", 128, UNetConfig((128, 128, 256, 256, 512), 2, (_D, _D, _D, _AD, _D), (_U, _AU, _U, _U, _U), None, 32),
        TrainConfig(max_steps=150_000, batch_size=32, lr=1e-4, optimizer="adam", warmup_steps=1000, ema_decay=0.999,
                    checkpoint_every=2000, preview_every=2000),
        ScoreConfig(num_levels=1000, step_size=2e-6), steps=1000,
    ),
    # VAE baseline (Kingma & Welling 2013): a 4 x 4 spatial latent, sampled from N(0, I).
    "vae-tiny": _vae_preset("vae-tiny", 32, AutoencoderConfig("kl", (32, 64, 64, 64), 1, latent_channels=8), TrainConfig()),
    "vae": _vae_preset(
        "vae", 64, AutoencoderConfig("kl", (64, 128, 128, 256, 256), 1, latent_channels=16, norm_num_groups=32),
        TrainConfig(max_steps=30_000, batch_size=64, lr=5e-4, warmup_steps=500, ema_decay=0.999),
    ),
    "vae-128": _vae_preset(
        "vae-128", 128, AutoencoderConfig("kl", (64, 128, 128, 256, 256, 256), 1, latent_channels=32, norm_num_groups=32),
        TrainConfig(max_steps=50_000, batch_size=32, lr=5e-4, warmup_steps=500, ema_decay=0.999),
    ),
    # First stages for latent diffusion (f = 4), trained with reconstruction + LPIPS + KL or VQ.
    "autoencoder-kl": _vae_preset("autoencoder-kl", 64, _first_stage("kl", (64, 128, 128)), _AE_TRAIN),
    "autoencoder-vq": _vae_preset("autoencoder-vq", 64, _first_stage("vq", (64, 128, 128)), _AE_TRAIN),
    # Latent diffusion (Rombach et al. 2022, LDM-4 on LSUN bedrooms scaled down): give the
    # autoencoder with --set latent.autoencoder=REF. Attention at 16 and 8 (32/16/8 at 128 px).
    "ldm-tiny": _ldm_preset("ldm-tiny", 32, "kl", UNetConfig((32, 64), 1, (_D, _AD), (_AU, _U), None, 8),
                            TrainConfig()),
    "ldm-kl": _ldm_preset(
        "ldm-kl", 64, "kl", UNetConfig((128, 256, 384), 2, (_AD, _AD, _D), (_U, _AU, _AU), 32, 32), _LDM_TRAIN,
    ),
    "ldm-vq": _ldm_preset(
        "ldm-vq", 64, "vq", UNetConfig((128, 256, 384), 2, (_AD, _AD, _D), (_U, _AU, _AU), 32, 32), _LDM_TRAIN,
    ),
    "ldm-kl-128": _ldm_preset(
        "ldm-kl-128", 128, "kl",
        UNetConfig((128, 256, 384, 512), 2, (_AD, _AD, _AD, _D), (_U, _AU, _AU, _AU), 32, 32), _LDM_TRAIN,
    ),
}


def preset(name: str) -> BedgenConfig:
    """A fresh copy of a named preset."""
    if name not in PRESETS:
        raise BedgenError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    config = copy.deepcopy(PRESETS[name])
    config.validate()
    return config
