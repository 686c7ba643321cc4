import pytest

from bedgen.config.overrides import override
from bedgen.config.schema import PRESETS, BedgenConfig, preset
from bedgen.core.errors import BedgenError
from bedgen.models.unet import build_training_scheduler, build_unet

D, AD, U, AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"


def test_seed_sweep_layouts_are_the_reported_ones():
    small, mid, big = preset("ddpm-small"), preset("ddpm-mid"), preset("ddpm-big")
    assert small.unet.layers_per_block == 1
    assert small.unet.block_out_channels == (64, 64, 128, 128, 256)
    assert small.unet.down_block_types == (D, D, D, D, AD)
    assert small.unet.up_block_types == (AU, U, U, U, U)
    # ddpm-mid is the google/ddpm-bedroom-256 layout
    assert mid.unet.layers_per_block == 2
    assert mid.unet.block_out_channels == (128, 128, 256, 256, 512, 512)
    assert mid.unet.down_block_types == (D, D, D, D, AD, D)
    assert mid.unet.up_block_types == (U, AU, U, U, U, U)
    assert big.unet.layers_per_block == 3
    assert big.unet.block_out_channels == (128, 256, 256, 512, 512, 768)
    assert big.unet.down_block_types == (D, D, D, D, AD, D)
    assert big.unet.up_block_types == (U, U, U, U, AU, U)
    three = preset("ddpm-3level")
    assert len(three.unet.down_block_types) == len(three.unet.up_block_types) == 3
    assert three.resolution == 64


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_its_network(name):
    import torch
    from diffusers import AutoencoderKL, VQModel

    from bedgen.models.autoencoders import build_autoencoder, downsample_factor

    config = preset(name)
    if config.family == "vae":
        model = build_autoencoder(config)
        assert isinstance(model, VQModel if config.autoencoder.kind == "vq" else AutoencoderKL)
        assert config.resolution % downsample_factor(model) == 0
        return
    unet = build_unet(config)
    assert unet.config.sample_size == config.model_resolution
    assert unet.config.in_channels == config.in_channels
    if config.family == "ldm":  # f = 4 latents of the LDM paper's first stages
        assert config.model_resolution * 4 == config.resolution and config.latent.autoencoder is None
    if name == "tiny":  # running the big ones is too slow for a unit test
        with torch.no_grad():
            out = unet(torch.zeros(1, 3, 32, 32), 10).sample
        assert out.shape == (1, 3, 32, 32)


def test_learned_variance_doubles_output_channels():
    config = override(preset("tiny"), {"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"})
    assert config.out_channels == 6
    assert build_unet(config).config.out_channels == 6


def test_config_round_trips_through_json_data():
    config = override(preset("ddpm-small"), {"resolution": 64, "diffusion.prediction_type": "v_prediction"})
    again = BedgenConfig.from_dict(config.to_dict())
    assert again == config
    assert isinstance(again.unet.block_out_channels, tuple)


def test_resolution_must_fit_the_downsampling():
    with pytest.raises(BedgenError, match="not a multiple of the model's downsampling factor 16"):
        override(preset("ddpm-small"), {"resolution": 100})


def test_unknown_names_are_clear_errors():
    with pytest.raises(BedgenError, match="unknown preset 'huge'"):
        preset("huge")
    with pytest.raises(BedgenError, match="unknown config field 'unet.width'"):
        override(preset("tiny"), {"unet.width": 3})
    with pytest.raises(BedgenError, match="unknown field"):
        BedgenConfig.from_dict({"colour": "blue"})


def test_mismatched_block_lists_are_rejected():
    with pytest.raises(BedgenError, match="one of each per level"):
        override(preset("tiny"), {"unet.block_out_channels": (32, 64)})


def test_presets_are_copies():
    a = preset("tiny")
    a.unet.layers_per_block = 7
    assert preset("tiny").unet.layers_per_block == 1


def test_training_scheduler_follows_the_config():
    config = override(preset("tiny"), {"diffusion.beta_schedule": "squaredcos_cap_v2", "diffusion.num_train_timesteps": 200})
    scheduler = build_training_scheduler(config)
    assert scheduler.config.num_train_timesteps == 200
    assert scheduler.config.beta_schedule == "squaredcos_cap_v2"
