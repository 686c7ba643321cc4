"""The Denoiser: the model kind decided once, the learned variance handed out where it is used."""

from __future__ import annotations

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, DDIMScheduler, DDPMScheduler, ScoreSdeVeScheduler, UNet2DModel

from bedgen.core.device import resolve
from bedgen.models.unet import build_training_scheduler, build_unet
from bedgen.sampling.denoiser import Denoiser
from conftest import tiny_config

CPU = resolve("cpu", "fp32")


@pytest.fixture(scope="module")
def learned():
    """A 3-channel network with a learned variance: 6 output channels, [ε, v]."""
    config = tiny_config(**{"resolution": 8, "diffusion.variance_type": "learned_range",
                            "diffusion.loss_type": "hybrid"})
    torch.manual_seed(0)
    return build_unet(config), build_training_scheduler(config)


@pytest.mark.parametrize("scheduler, kind", [
    (DDPMScheduler(num_train_timesteps=10, prediction_type="v_prediction"), "vp"),
    (CMStochasticIterativeScheduler(num_train_timesteps=10), "consistency"),
    (ScoreSdeVeScheduler(num_train_timesteps=10), "score"),
])
def test_the_kind_comes_from_the_training_scheduler(learned, scheduler, kind):
    denoiser = Denoiser.for_model(learned[0], scheduler)
    assert denoiser.kind == kind
    assert denoiser.prediction_type == ("v_prediction" if kind == "vp" else "epsilon")


def test_only_ancestral_ddpm_gets_the_variance_half(learned):
    unet, training = learned
    denoiser = Denoiser.for_model(unet, training)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor(5)
    ddpm = DDPMScheduler.from_config(training.config)
    ddim = DDIMScheduler.from_config(training.config)
    assert training.config.variance_type == "learned_range"
    full = denoiser.scheduler_output(ddpm, x, t, CPU)
    assert full.shape == (2, 6, 8, 8)
    assert torch.equal(denoiser.scheduler_output(ddim, x, t, CPU), full[:, :3])
    x0, eps = denoiser.split(x, t, training.alphas_cumprod[5], CPU)
    assert x0.shape == eps.shape == (2, 3, 8, 8) and torch.equal(eps, full[:, :3])


def test_holds_no_request_state(learned):
    """The app shares one pipeline between concurrent requests: the placement comes with each call."""
    denoiser = Denoiser.for_model(*learned)
    denoiser.split(torch.randn(1, 3, 8, 8), 3, torch.tensor(0.5), CPU)
    assert set(vars(denoiser)) == {"unet", "kind", "prediction_type", "channels", "parameters", "side", "engines"}
    # the exported engines cache programs per weights and batch size, the Winograd engine NCHW copies
    # of weights and counts of what it routed; nothing of a request
    for name, engine in denoiser.engines.items():
        expected = ({"forward", "min_side", "routed", "_last_routed", "_weights", "_lock", "_said"}
                    if name == "winograd" else
                    {"module", "forward", "cache_dir", "converted", "loaded", "_model", "_prepared", "_lock", "_said"})
        assert set(vars(engine)) == expected


def test_the_side_is_read_from_the_config_and_may_be_unknown():
    """A config's sample_size may be an int, a list (from JSON) or absent (diffusers' default);
    an absent one must not stop a model from loading (the engine choice then takes it as large)."""
    for size, side in ((16, 16), ([16, 24], 16), (None, None)):
        unet = UNet2DModel(sample_size=size, block_out_channels=(8, 16), norm_num_groups=4,
                           down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
        assert Denoiser(unet, "vp").side == side
