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
from bedgen.sampling.schedulers import (
    DDIMClipDPMSolver, DDIMClipMixin, check_steps, default_sampler, make_scheduler, samplers_for,
)

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
    assert isinstance(scheduler, cls)
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
        assert isinstance(scheduler, DDIMClipMixin) and scheduler.clip_range == 1.0
    unclipped = DDPMScheduler(num_train_timesteps=1000, clip_sample=False)
    assert type(make_scheduler("dpmsolver++", unclipped)) is DPMSolverMultistepScheduler


def _eps_model(x: torch.Tensor, t) -> torch.Tensor:
    """A stand-in ε-network whose x̂0 leaves [-1, 1] at every step (so the clip decides)."""
    return 0.3 * x * torch.cos(torch.as_tensor(t, dtype=torch.float32) / 300) - 0.8


def _run(scheduler, steps: int, x: torch.Tensor) -> torch.Tensor:
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(_eps_model(x, t), t, x).prev_sample
    return x


def _first_order(cls, **overrides):
    return cls.from_config(TRAINING.config, algorithm_type="dpmsolver++", solver_order=1,
                           timestep_spacing="trailing", variance_type=None, **overrides)


def test_clipped_first_order_dpmsolver_is_exactly_clipped_ddim():
    # DDIM (Song et al. 2021, Eq. 12) with clip_sample keeps the network's ε̂ beside clip(x̂0);
    # first-order DPM-Solver++ in data prediction is the same update, so with the clip done
    # DDIM's way the two must agree step for step.
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    # 5 steps: DDIM places its next timestep T // steps below, so the grid must divide T
    ddim = _run(DDIMScheduler.from_config(TRAINING.config, timestep_spacing="trailing"), 5, x)
    ours = _run(_first_order(DDIMClipDPMSolver), 5, x)
    torch.testing.assert_close(ours, ddim, rtol=1e-4, atol=1e-4)
    # diffusers' own thresholding steps with the ε implied by clip(x̂0): a different sampler
    theirs = _run(_first_order(DPMSolverMultistepScheduler, thresholding=True, sample_max_value=1.0), 5, x)
    assert (theirs - ddim).abs().max() > 0.05


@pytest.mark.parametrize("name, plain", [("dpmsolver++", DPMSolverMultistepScheduler),
                                         ("unipc", UniPCMultistepScheduler)])
def test_the_clip_changes_nothing_where_x0_stays_in_range(name, plain):
    def gentle(x, t):  # the ε whose x̂0 (DDPM Eq. 15) is 0.5 tanh(x), inside [-1, 1]
        abar = TRAINING.alphas_cumprod[int(t)]
        return (x - abar.sqrt() * 0.5 * torch.tanh(x)) / (1 - abar).sqrt()

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    clipped = make_scheduler(name, TRAINING)
    out = {}
    for label, scheduler in (("clip", clipped), ("plain", plain.from_config(clipped.config))):
        scheduler.set_timesteps(5)
        y = x
        for t in scheduler.timesteps:
            y = scheduler.step(gentle(y, t), t, y).prev_sample
        out[label] = y
    assert out["clip"].abs().max() <= 0.5
    torch.testing.assert_close(out["clip"], out["plain"], rtol=1e-5, atol=1e-6)
