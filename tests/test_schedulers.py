import numpy as np
import pytest
import torch
from diffusers import (
    CMStochasticIterativeScheduler,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)

from bedgen.core.errors import BedgenError
from bedgen.sampling.schedulers import check_steps, default_sampler, make_scheduler, samplers_for

TRAINING = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02)


@pytest.mark.parametrize(
    "name, cls",
    [
        ("ddpm", DDPMScheduler),
        ("ddim", DDIMScheduler),
        ("dpmsolver++", DPMSolverMultistepScheduler),
        ("unipc", UniPCMultistepScheduler),
        ("euler", EulerDiscreteScheduler),
        ("heun", HeunDiscreteScheduler),
    ],
)
def test_scheduler_by_name_keeps_the_training_noise_levels(name, cls):
    scheduler = make_scheduler(name, TRAINING)
    assert type(scheduler) is cls
    assert scheduler.config.num_train_timesteps == 1000
    assert torch.allclose(scheduler.alphas_cumprod, TRAINING.alphas_cumprod)


def test_linear_schedule_pinned_against_closed_form():
    # alpha_bar_T = prod_t (1 - beta_t), betas linear in [1e-4, 0.02] (Ho et al. 2020, Sec. 4)
    expected = np.prod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))
    assert expected == pytest.approx(4.0358e-05, rel=1e-3)
    scheduler = make_scheduler("ddim", TRAINING)
    assert float(scheduler.alphas_cumprod[-1]) == pytest.approx(expected, rel=1e-4)


def test_ddim_uses_trailing_spacing_so_few_steps_start_at_T():
    scheduler = make_scheduler("ddim", TRAINING)
    scheduler.set_timesteps(4)
    assert scheduler.timesteps.tolist() == [999, 749, 499, 249]


def test_dpmsolver_is_the_second_order_plus_plus_variant():
    scheduler = make_scheduler("dpmsolver++", TRAINING)
    assert scheduler.config.algorithm_type == "dpmsolver++"
    assert scheduler.config.solver_order == 2


def test_unknown_scheduler_lists_the_choices():
    with pytest.raises(BedgenError, match="unknown scheduler 'plms'.*ddpm, ddim, dpmsolver\\+\\+"):
        make_scheduler("plms", TRAINING)


def test_consistency_models_only_offer_their_own_sampler():
    cm = CMStochasticIterativeScheduler(num_train_timesteps=40)
    assert list(samplers_for(cm)) == ["consistency"]
    assert default_sampler(cm) == "consistency"
    assert default_sampler(TRAINING) == "dpmsolver++"
    with pytest.raises(BedgenError):
        make_scheduler("ddim", cm)


@pytest.mark.parametrize("bad", [0, -3, 1001, 2.5, "ten", True])
def test_steps_are_checked_against_training_steps(bad):
    with pytest.raises(BedgenError):
        check_steps(bad, TRAINING)


def test_valid_steps_pass():
    assert check_steps(1, TRAINING) == 1
    assert check_steps(1000, TRAINING) == 1000
    assert check_steps(20.0, TRAINING) == 20


def test_data_prediction_solvers_clip_x0_like_the_training_schedule():
    for name in ("dpmsolver++", "unipc"):
        scheduler = make_scheduler(name, TRAINING)  # clip_sample=True by default
        assert scheduler.config.thresholding and scheduler.config.sample_max_value == 1.0
    unclipped = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    assert not make_scheduler("dpmsolver++", unclipped).config.thresholding
    # with the bound at 1, dynamic thresholding is exactly a clip of x0 to [-1, 1]
    scheduler = make_scheduler("dpmsolver++", TRAINING)
    x0 = torch.linspace(-3, 3, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    assert torch.equal(scheduler._threshold_sample(x0), x0.clamp(-1, 1))
