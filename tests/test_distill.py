"""Consistency distillation (`bedgen distill`): the maths against DDIM, the student against the
samplers that read it (bedgen's and diffusers'), and the command end to end on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bedgen.cli.main import main
from bedgen.config.overrides import override
from bedgen.core.errors import BedgenError
from bedgen.families.consistency import ConsistencyDistillationFamily
from bedgen.maths import consistency as cm
from bedgen.maths.diffusion import Schedule, ddim_move, split_prediction
from bedgen.sampling.pipeline import load
from bedgen.training.distill import distill_config
from bedgen.training.trainer import Trainer
from conftest import make_tiny_checkpoint, make_tiny_ldm_checkpoint, make_tiny_score_checkpoint
from synthetic import write_rooms


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distill")


@pytest.fixture(scope="module")
def teacher(root) -> Path:
    return make_tiny_checkpoint(root / "teacher")


@pytest.fixture(scope="module")
def rooms(root) -> Path:
    write_rooms(root / "rooms", 12, size=24, seed=3)
    return root / "rooms"


def _config(teacher: Path, rooms: Path, steps: int, **changes):
    base = {"data.source": str(rooms), "train.max_steps": steps, "train.batch_size": 4,
            "train.checkpoint_every": steps, "train.preview_every": 0}
    return override(distill_config(str(teacher)), {**base, **changes})


@pytest.fixture(scope="module")
def student(root, teacher, rooms) -> Path:
    out = root / "student"
    code = main(["distill", "--teacher", str(teacher), "--data", str(rooms), "--out", str(out),
                 "--max-steps", "6", "--batch-size", "4", "--checkpoint-every", "3"])
    assert code == 0
    return out


TEACHER_KINDS = {
    "epsilon": {},
    "v-prediction": {"diffusion.prediction_type": "v_prediction"},
    "learned variance": {"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"},
}


@pytest.mark.parametrize("kind", TEACHER_KINDS)
def test_an_euler_step_in_ve_coordinates_is_a_ddim_step_of_the_teacher(root, rooms, kind):
    """x_VE' = x_VE + (σ' - σ) ε̂ is DDIM's √ᾱ' x̂_0 + √(1-ᾱ') ε̂ read in VE coordinates, at the
    teacher's own timesteps (where the fractional timestep is an integer), whatever it predicts."""
    teacher = make_tiny_checkpoint(root / f"teacher-{kind}", **TEACHER_KINDS[kind])
    family = ConsistencyDistillationFamily(_config(teacher, rooms, 1))
    schedule = Schedule.from_scheduler(family.teacher.training_scheduler)
    t_from, t_to = torch.tensor([90, 40]), torch.tensor([60, 10])
    sigma, sigma_to = family.table[t_from].float(), family.table[t_to].float()
    assert torch.allclose(cm.timestep_of_sigma(sigma, family.table), t_from.float(), atol=1e-3)
    x_vp = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    abar, abar_to = (schedule.alphas_cumprod[t].view(-1, 1, 1, 1) for t in (t_from, t_to))
    prediction = family.teacher.training_scheduler.config.prediction_type
    with torch.no_grad():
        out = family.teacher.unet(x_vp, t_from).sample[:, :3]  # a learned variance's half is not the ODE's
        x0, eps = split_prediction(out, x_vp, abar, prediction)
        expected_vp = ddim_move(x0, eps, abar_to)
        stepped = cm.euler_step(family.teacher_split, x_vp / abar.sqrt(), sigma, sigma_to)
    assert torch.allclose(cm.ve_to_vp(stepped, sigma_to), expected_vp, atol=1e-4)
    # Training's σ grid is the one the student's scheduler samples on.
    assert torch.allclose(family.sigmas, family.scheduler.sigmas.float())


def test_heun_is_exact_where_the_direction_is_constant():
    """Heun's step of dx/dσ = ε (a constant direction) lands where the exact solution does."""
    eps = torch.randn(1, 3, 4, 4)

    def split(x, sigma):
        return x - sigma.view(-1, 1, 1, 1) * eps, eps

    x = torch.zeros(1, 3, 4, 4)
    out = cm.heun_step(split, x, torch.tensor([5.0]), torch.tensor([2.0]))
    assert torch.allclose(out, x - 3.0 * eps)


def test_the_training_function_is_what_the_samplers_evaluate(student):
    """f_θ of the loss, at σ_max from the sampler's own noise, gives the 1-step sample of bedgen's
    pipeline and of diffusers' ConsistencyModelPipeline loaded from the same checkpoint."""
    from diffusers import ConsistencyModelPipeline

    pipe = load(str(student))
    assert pipe.info.family == "consistency" and pipe.default_steps == 2
    config = pipe.info.config
    family = ConsistencyDistillationFamily(config)
    scheduler = pipe.training_scheduler
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    sigma = torch.tensor([float(scheduler.config.sigma_max)])
    with torch.no_grad():
        ours = family.consistency(pipe.unet, noise * sigma, sigma).clamp(-1, 1)
    expected = ((ours[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    sampled = np.asarray(pipe.generate(1, seed=7, steps=1, dtype="fp32")[0])
    assert np.abs(sampled.astype(int) - expected.astype(int)).max() <= 1
    checkpoint = sorted((student / "checkpoints").iterdir())[-1]
    assert json.loads((checkpoint / "model_index.json").read_text())["_class_name"] == "ConsistencyModelPipeline"
    diffusers_pipe = ConsistencyModelPipeline.from_pretrained(checkpoint)
    theirs = diffusers_pipe(num_inference_steps=1, generator=torch.Generator().manual_seed(7), output_type="np").images
    theirs = (theirs[0] * 255).round().astype(np.uint8)
    assert np.abs(theirs.astype(int) - expected.astype(int)).max() <= 1


def test_distil_then_sample_at_1_2_and_4_steps_and_resume(student, root, teacher, rooms, tmp_path):
    for steps in (1, 2, 4):
        out = tmp_path / f"steps-{steps}"
        assert main(["sample", "--model", str(student), "--out", str(out), "--steps", str(steps), "-n", "2"]) == 0
        assert len(list(out.glob("*.png"))) == 3  # two samples and the grid
    # Resuming continues the run from its checkpoint and keeps the teacher.
    assert main(["distill", "--out", str(student), "--resume", "--max-steps", "9", "--checkpoint-every", "3"]) == 0
    pipe = load(str(student))
    assert pipe.info.config.distill.teacher == str(teacher)
    assert pipe.info.metadata["training"]["step"] == 9


def test_resumed_distillation_gives_the_weights_of_an_uninterrupted_one(root, teacher, rooms):
    whole = Trainer(_config(teacher, rooms, 4), root / "whole", progress=False)
    whole.train()
    Trainer(_config(teacher, rooms, 2, **{"train.checkpoint_every": 2}), root / "halves", progress=False).train()
    resumed = Trainer(_config(teacher, rooms, 4, **{"train.checkpoint_every": 2}), root / "halves", resume=True,
                      progress=False)
    resumed.train()
    for a, b in zip(whole.ema_model().parameters(), resumed.ema_model().parameters()):
        assert torch.equal(a, b)


def test_distillation_pulls_the_one_step_sample_onto_the_teachers_ode_solution(root, teacher, rooms):
    """The point of the method: after training, f_θ(σ_max z) is much closer to where the teacher's
    ODE takes σ_max z (100 Euler steps over the same σ range) than the initial student is. (The
    teacher here is a random network, a harder map to learn than a trained one's: the quality of
    trained students is measured in bench/quality_speed.py.)"""
    config = _config(teacher, rooms, 300, **{"train.lr": 1e-3, "train.ema_decay": 0.0, "distill.solver": "euler"})
    trainer = Trainer(config, root / "learning", progress=False)
    family = trainer.family
    z = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    sigma_max = float(family.scheduler.config.sigma_max)
    grid = cm.karras_sigmas(config.distill.sigma_min, sigma_max, 100)
    with torch.no_grad():
        x = z * sigma_max
        for hi, lo in zip(grid[:-1], grid[1:]):
            x = cm.euler_step(family.teacher_split, x, hi.repeat(8), lo.repeat(8))

    def error(model) -> float:
        with torch.no_grad():
            return float((family.consistency(model.eval(), z * sigma_max, torch.full((8,), sigma_max)) - x)
                         .pow(2).mean())

    before = error(family.build_model())
    trainer.train()
    after = error(trainer.ema_model())
    assert after < 0.6 * before, (before, after)  # 0.45 x on the AVX2 EPYC this was written on


def test_a_latent_teacher_gives_a_latent_student_that_decodes_through_its_autoencoder(root, rooms):
    teacher = make_tiny_ldm_checkpoint(root / "ldm-teacher")
    config = override(distill_config(str(teacher)), {"data.source": str(rooms), "train.max_steps": 2,
                                                     "train.batch_size": 2, "train.preview_every": 0})
    Trainer(config, root / "ldm-student", progress=False).train()
    pipe = load(str(root / "ldm-student"))
    assert pipe.autoencoder is not None and pipe.info.family == "consistency"
    assert pipe.training_scheduler.config.clip_denoised is False  # latents are not bounded to [-1, 1]
    image = pipe.generate(1, seed=0, steps=2)[0]
    assert image.size == (16, 16)


@pytest.mark.parametrize("maker, what", [(make_tiny_score_checkpoint, "smld"), (None, "give --teacher")])
def test_a_teacher_that_cannot_be_distilled_is_refused_in_one_line(root, rooms, maker, what, capsys):
    argv = ["distill", "--data", str(rooms), "--out", str(root / f"refused-{what}")]
    if maker is not None:
        argv += ["--teacher", str(maker(root / f"not-a-teacher-{what}"))]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert what in error and len(error.splitlines()) == 1
    assert not (root / f"refused-{what}").exists()


def test_bad_distillation_settings_are_refused_before_training(teacher, rooms):
    with pytest.raises(BedgenError, match="distill.num_scales"):
        _config(teacher, rooms, 1, **{"distill.num_scales": 1}).validate()
    with pytest.raises(BedgenError, match="distill.sigma_max"):
        _config(teacher, rooms, 1, **{"distill.sigma_max": 0.001}).validate()


def _uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def test_a_student_denoises_the_teachers_interpolation_in_one_evaluation(student, teacher, rooms):
    """The same noised, mixed state the teacher would denoise with DDIM, read by the student at its σ."""
    from bedgen.sampling.interpolate import _model_input, interpolate, slerp

    teacher_pipe, student_pipe = load(str(teacher)), load(str(student))
    a, b = sorted(rooms.glob("*.png"))[:2]
    slow = interpolate(teacher_pipe, a, b, t=0.5, weights=[0.3], steps=10, dtype="fp32")
    fast = interpolate(teacher_pipe, a, b, t=0.5, weights=[0.3], steps=10, dtype="fp32", student=student_pipe)
    assert (slow.evaluations, slow.student) == (10, None)
    assert (fast.evaluations, fast.student, fast.notes) == (1, str(student), [])
    # By hand: x_t = √ᾱ x_0 + √(1-ᾱ) ε (one ε, seed 0), slerp at λ, then f(x_t / √ᾱ, σ_t).
    abar = Schedule.from_scheduler(teacher_pipe.training_scheduler).alphas_cumprod[fast.timestep]
    eps = torch.randn(3, 16, 16, generator=torch.Generator("cpu").manual_seed(0))
    x0 = torch.cat([_model_input(teacher_pipe, image, name) for image, name in ((a, "A"), (b, "B"))])
    noised = abar.sqrt() * x0 + (1 - abar).sqrt() * eps
    mixed = slerp(noised[:1], noised[1:], 0.3)
    sigma = ((1 - abar) / abar).sqrt().view(1)
    family = ConsistencyDistillationFamily(student_pipe.info.config)
    with torch.no_grad():
        expected = family.consistency(student_pipe.unet, mixed / abar.sqrt(), sigma).clamp(-1, 1)
    assert np.abs(np.asarray(fast.frames[0]).astype(int) - _uint8(expected).astype(int)).max() <= 1


def test_above_the_students_noise_range_the_teacher_denoises_and_says_so(student, teacher, rooms):
    from diffusers import CMStochasticIterativeScheduler

    from bedgen.sampling.interpolate import interpolate
    from bedgen.sampling.pipeline import Pipeline

    trained = load(str(student))
    narrow = CMStochasticIterativeScheduler.from_config({**trained.training_scheduler.config, "sigma_max": 0.05})
    low_noise_student = Pipeline(trained.unet, narrow, trained.info)  # a student trained only up to σ = 0.05
    a, b = sorted(rooms.glob("*.png"))[:2]
    result = interpolate(load(str(teacher)), a, b, t=0.5, weights=[0.3], steps=10, student=low_noise_student)
    assert result.evaluations == 10 and result.student is None and "denoised by DDIM" in result.notes[0]


def test_students_of_finds_the_runs_distilled_from_a_model(student, teacher, root):
    from bedgen.storage.registry import students_of

    found = students_of(str(teacher), root)  # other tests of this module distil the same teacher too
    assert str(student) in found and str(teacher) not in found
    assert all(load(ref).info.config.distill.teacher == str(teacher) for ref in found)
    assert students_of(str(root / "." / teacher.name), root) == found  # the same folder, spelled otherwise
    assert students_of("google/ddpm-ema-bedroom-256", root) == []


def test_releasing_lambda_in_the_app_uses_the_models_student(student, teacher, rooms, root):
    from bedgen.ui.cache import PipelineCache
    from bedgen.ui.interpolate import run_weight

    a, b = (str(p) for p in sorted(rooms.glob("*.png"))[:2])
    cache = PipelineCache(4)
    _, with_student = run_weight(cache, str(teacher), a, b, 0.5, 0.3, "noise", 10, 0, checkpoints=root)
    from bedgen.storage.registry import students_of

    newest = students_of(str(teacher), root)[0]  # other tests of this module distil the same teacher too
    assert f"1 step of its student {newest}" in with_student
    _, without = run_weight(cache, str(teacher), a, b, 0.5, 0.3, "noise", 10, 0, checkpoints=root / "rooms")
    assert "10 DDIM steps" in without and "student" not in without


def test_a_hub_ddpm_without_a_bedgen_config_is_distilled(tmp_path, monkeypatch, rooms):
    """A teacher in google/ddpm-ema-bedroom-256's flat layout, fetched by huggingface_hub from a local Hub."""
    from hubserver import FakeHub, isolate_hf_hub
    from test_checkpoint import write_flat_google_layout

    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        write_flat_google_layout(tmp_path / "google")
        hub.add_repo("google/ddpm-tiny", tmp_path / "google")
        out = tmp_path / "hub-student"
        assert main(["distill", "--teacher", "google/ddpm-tiny", "--data", str(rooms), "--out", str(out),
                     "--max-steps", "2", "--batch-size", "2", "--preview-every", "0"]) == 0
    pipe = load(str(out))
    assert pipe.info.config.distill.teacher == "google/ddpm-tiny" and pipe.info.family == "consistency"
    assert pipe.generate(1, seed=0, steps=2)[0].size == (pipe.resolution, pipe.resolution)
