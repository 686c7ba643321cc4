"""Build networks and training schedules from a :class:`BedgenConfig`."""

from __future__ import annotations

from diffusers import DDPMScheduler, UNet2DModel

from ..config.schema import BedgenConfig


def build_unet(config: BedgenConfig) -> UNet2DModel:
    """A freshly initialised UNet with the config's layout (Ho et al. 2020, App. B)."""
    config.validate()
    u = config.unet
    return UNet2DModel(
        sample_size=config.model_resolution,
        in_channels=config.in_channels,
        out_channels=config.out_channels,
        block_out_channels=tuple(u.block_out_channels),
        layers_per_block=u.layers_per_block,
        down_block_types=tuple(u.down_block_types),
        up_block_types=tuple(u.up_block_types),
        attention_head_dim=u.attention_head_dim,
        norm_num_groups=u.norm_num_groups,
        dropout=u.dropout,
        resnet_time_scale_shift=u.resnet_time_scale_shift,
        # Score models condition on log σ through Gaussian Fourier features, and the
        # UNet then divides its output by σ (NCSN++; Song et al. 2021, App. H).
        time_embedding_type="fourier" if config.family == "smld" else "positional",
    )


def build_training_scheduler(config: BedgenConfig) -> DDPMScheduler:
    """The forward process q(x_t | x_0) the network is trained against."""
    d = config.diffusion
    return DDPMScheduler(
        num_train_timesteps=d.num_train_timesteps,
        beta_schedule=d.beta_schedule,
        beta_start=d.beta_start,
        beta_end=d.beta_end,
        prediction_type=d.prediction_type,
        variance_type=d.variance_type,
        clip_sample=d.clip_sample,
    )
