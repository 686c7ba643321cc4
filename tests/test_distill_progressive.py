"""Progressive distillation (`bedgen distill --method progressive`, Salimans & Ho 2022): the target
against diffusers' DDIM step, the stages, resume, the student's learning, and the saved layout in
bedgen and diffusers, on tiny models (16 px, T = 100)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler

from bedgen.cli.main import main
from bedgen.config.overrides import override
from bedgen.core.errors import BedgenError
from bedgen.core.state_io import load_state
from bedgen.families.progressive import ProgressiveDistillationFamily
from bedgen.maths import progressive as pd
from bedgen.sampling.pipeline import load
from bedgen.training.distill import distill_config
from bedgen.training.trainer import STATE_DIR, Trainer
from conftest import make_tiny_checkpoint, make_tiny_ldm_checkpoint
from synthetic import write_rooms


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("progressive")


@pytest.fixture(scope="module")
def teacher(root) -> Path:
    return make_tiny_checkpoint(root / "teacher")


@pytest.fixture(scope="module")
def rooms(root) -> Path:
    write_rooms(root / "rooms", 12, size=24, seed=3)
    return root / "rooms"


def _config(teacher: Path, rooms: Path, steps: int, **changes):
    base = {"data.source": str(rooms), "train.max_steps": steps, "train.batch_size": 4,
            "train.checkpoint_every": steps, "train.preview_every": 0, "distill.start_steps": 8}
    return override(distill_config(str(teacher), "progressive"), {**base, **changes})


def _exact_ddim(family: ProgressiveDistillationFamily, steps: int, **changes) -> DDIMScheduler:
    """The student's sampler at ``steps``, reading its input as x̂ and never clipping it, so a
    step from x̂ is the bare DDIM move."""
    scheduler = DDIMScheduler.from_config(family.scheduler.config, **changes)
    scheduler.set_timesteps(steps)
    return scheduler


@pytest.mark.parametrize("steps", [4, 2, 1])
def test_one_student_step_with_the_x_target_lands_on_the_teachers_two_steps(teacher, rooms, steps):
    """Alg. 2's x̃: diffusers' DDIM step (the saved sampler) from z_t with x̂ = x̃ is z''."""
    family = ProgressiveDistillationFamily(_config(teacher, rooms, 4))
    scheduler = _exact_ddim(family, steps, prediction_type="sample", clip_sample=False)
    assert torch.equal(scheduler.timesteps, family.grid(steps))
    mid, full = pd.step_sizes(family.total, steps)
    z = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(steps))
    for t in scheduler.timesteps:
        ts = t.view(1).long()
        with torch.no_grad():
            z_end = pd.teacher_target(family.teacher_split, z, ts, ts - mid, family.abar(ts - mid),
                                      family.abar(ts - full), family.clip)
        target = pd.x_target(z, z_end, family.abar(ts), family.abar(ts - full))
        stepped = scheduler.step(target, t, z).prev_sample
        assert torch.allclose(stepped, z_end, atol=1e-4), (int(t), float((stepped - z_end).abs().max()))
        z = z_end


def test_the_teachers_two_steps_are_its_own_ddim_sampler_where_the_grids_nest(teacher, rooms):
    """T = 100 is a multiple of 2N = 4: two teacher steps of the target are two steps of the
    teacher's 4-step DDIM sampler (the 2N-step sampler the student replaces)."""
    family = ProgressiveDistillationFamily(_config(teacher, rooms, 4))
    scheduler = _exact_ddim(family, 4)
    z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    x = z
    with torch.no_grad():
        for t in scheduler.timesteps[:2]:
            x = scheduler.step(family.teacher.unet(x, t).sample, t, x).prev_sample
        t = torch.full((2,), 99)
        ours = pd.teacher_target(family.teacher_split, z, t, t - 25, family.abar(t - 25), family.abar(t - 50),
                                 family.clip)
    assert torch.allclose(ours, x, atol=1e-5)


def test_stages_halve_the_steps_and_share_the_run():
    assert pd.stage_count(64, 1) == 6 and pd.stage_count(8, 2) == 2
    assert [pd.stage_steps(64, k) for k in range(6)] == [32, 16, 8, 4, 2, 1]
    assert [pd.stage_of(s, 12, 3) for s in range(12)] == [0] * 4 + [1] * 4 + [2] * 4
    assert [pd.stage_of(s, 10, 3) for s in range(10)] == [0] * 4 + [1] * 3 + [2] * 3  # shares within one step


def test_at_each_stage_boundary_the_teacher_becomes_the_student(root, teacher, rooms):
    """8 → 4 → 2 → 1 steps over 6 optimizer steps: stages of 2; the teacher of a stage is the raw
    student of the step the stage begins at, and each checkpoint keeps the teacher it had."""
    run = root / "stages"
    config = _config(teacher, rooms, 6, **{"train.checkpoint_every": 1, "train.keep_checkpoints": 10})
    trainer = Trainer(config, run, progress=False)
    family = trainer.family
    assert (family.stages, family.stage, family.student_steps) == (3, 0, 4)
    trainer.train()
    assert (family.steps_done, family.teacher_stage, family.student_steps) == (6, 2, 1)

    def state(step: int) -> dict:
        return load_state(run / "checkpoints" / f"step-{step:06d}" / STATE_DIR, "family")

    def raw(step: int) -> dict:
        from safetensors.torch import load_file

        return load_file(str(run / "checkpoints" / f"step-{step:06d}" / STATE_DIR / "raw_unet.safetensors"))

    assert state(1) == {"steps_done": 1, "teacher_stage": 0}  # stage 0: the diffusion model teaches
    assert state(2)["teacher_stage"] == 0  # the swap happens when step 3 is taken
    for step, stage, source in ((3, 1, 2), (4, 1, 2), (5, 2, 4), (6, 2, 4)):
        saved = state(step)
        assert saved["teacher_stage"] == stage
        assert all(torch.equal(saved["teacher"][k], v) for k, v in raw(source).items())
    assert all(torch.equal(family.teacher_unet.state_dict()[k], v) for k, v in raw(4).items())
    pipe = load(str(run))
    assert pipe.info.family == "progressive" and pipe.default_steps == 1 and pipe.default_sampler == "ddim"


@pytest.fixture(scope="module")
def whole(root, teacher, rooms) -> Trainer:
    trainer = Trainer(_config(teacher, rooms, 6), root / "whole", progress=False)
    trainer.train()
    return trainer


@pytest.mark.parametrize("stop, teacher_stage", [(3, 1), (2, 0)])
def test_a_resumed_distillation_gives_the_weights_of_an_uninterrupted_one(root, teacher, rooms, whole, stop,
                                                                          teacher_stage):
    """Stopped in the middle of stage 1 (its teacher a student copy, saved in the checkpoint), or
    at the boundary of stages 0 and 1 (the swap not yet made: it is made on resuming)."""
    config = _config(teacher, rooms, 6, **{"train.checkpoint_every": stop})
    first = Trainer(config, root / f"halves-{stop}", progress=False,
                    on_event=lambda e: e.get("event") == "checkpoint" and first.request_stop())
    first.train()
    assert first.state.step == stop
    resumed = Trainer(config, root / f"halves-{stop}", resume=True, progress=False)
    assert (resumed.family.steps_done, resumed.family.teacher_stage) == (stop, teacher_stage)
    resumed.train()
    for a, b in zip(whole.ema_model().parameters(), resumed.ema_model().parameters()):
        assert torch.equal(a, b)


def _ddim_sample(unet, family, z: torch.Tensor, steps: int) -> torch.Tensor:
    scheduler = _exact_ddim(family, steps)
    x = z
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample[:, :3], t, x).prev_sample
    return x


def test_distillation_pulls_the_one_step_sample_onto_the_teachers_many_step_sample(root, rooms):
    """The point of the method: after 4 → 2 → 1, the student's 1-step DDIM sample from z ~ N(0, I) is
    much closer to the teacher's 4-step DDIM sample than the teacher's own 1-step sample (the
    untrained student) is: 0.33 x on the AVX2 EPYC this was written on. The teacher predicts v on a
    cosine schedule (ᾱ_T ≈ 0, so N(0, I) is what training's z_T looks like), the paper's setting
    (Salimans & Ho 2022, Sec. 4); it is a random network: trained ones are bench/quality_speed.py's."""
    teacher = make_tiny_checkpoint(root / "v-teacher", **{"diffusion.prediction_type": "v_prediction",
                                                           "diffusion.beta_schedule": "squaredcos_cap_v2"})
    config = _config(teacher, rooms, 120, **{"train.lr": 1e-3, "distill.start_steps": 4})
    trainer = Trainer(config, root / "learning", progress=False)
    family = trainer.family
    z = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(11))
    reference = _ddim_sample(family.teacher.unet, family, z, 4)

    def error(model) -> float:
        return float((_ddim_sample(model.eval(), family, z, 1) - reference).pow(2).mean())

    before = error(family.build_model())
    trainer.train()
    after = error(trainer.ema_model())
    assert after < 0.6 * before, (before, after)


@pytest.fixture(scope="module")
def student(root, teacher, rooms) -> Path:
    out = root / "student"
    code = main(["distill", "--method", "progressive", "--teacher", str(teacher), "--data", str(rooms),
                 "--out", str(out), "--max-steps", "4", "--batch-size", "4", "--set", "distill.start_steps=4"])
    assert code == 0
    return out


def _uint8(x: torch.Tensor) -> np.ndarray:
    return ((x[0].permute(1, 2, 0).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def test_the_saved_student_is_a_ddim_pipeline_that_samples_in_its_final_steps(student, teacher, tmp_path):
    """bedgen's pipeline, diffusers' DDIMPipeline and the training's x̂ give the same 1-step image."""
    pipe = load(str(student))
    config = pipe.info.config
    assert (config.distill.method, config.distill.teacher) == ("progressive", str(teacher))
    assert (pipe.default_sampler, pipe.default_steps) == ("ddim", 1)
    checkpoint = sorted((student / "checkpoints").iterdir())[-1]
    assert json.loads((checkpoint / "model_index.json").read_text())["_class_name"] == "DDIMPipeline"
    noise = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    family = ProgressiveDistillationFamily(config)
    with torch.no_grad():
        expected = _uint8(family.student_x(pipe.unet, noise, torch.tensor([99])).clamp(-1, 1))
    ours = np.asarray(pipe.generate(1, seed=7, steps=1, dtype="fp32")[0])
    theirs = DDIMPipeline.from_pretrained(checkpoint)(
        num_inference_steps=1, generator=torch.Generator().manual_seed(7), output_type="np").images
    theirs = (theirs[0] * 255).round().astype(np.uint8)
    for image in (ours, theirs):
        assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    for steps in (1, 2, 4):
        out = tmp_path / f"steps-{steps}"
        assert main(["sample", "--model", str(student), "--out", str(out), "--steps", str(steps), "-n", "2"]) == 0
        assert len(list(out.glob("*.png"))) == 3  # two samples and the grid


def test_the_model_card_names_the_teacher_and_the_method(student, teacher):
    from bedgen.sharing.model_card import CardInputs, model_card
    from bedgen.storage.checkpoint import read_description

    description = read_description(student)
    card = model_card(CardInputs("me/student", None, description, "progressive", 16, "DDIMPipeline", None, None,
                                 False, "mit"))
    assert f"`{teacher}` by progressive distillation" in card and "`bedgen sample --steps 1`" in card


def test_a_learned_variance_teacher_gives_a_student_without_one(root, rooms):
    teacher = make_tiny_checkpoint(root / "iddpm-teacher", **{"diffusion.variance_type": "learned_range",
                                                                "diffusion.loss_type": "hybrid"})
    Trainer(_config(teacher, rooms, 3, **{"distill.start_steps": 2}), root / "iddpm-student", progress=False).train()
    pipe = load(str(root / "iddpm-student"))
    assert pipe.unet.config.out_channels == 3 and pipe.info.config.diffusion.variance_type == "fixed_small"
    checkpoint = sorted((root / "iddpm-student" / "checkpoints").iterdir())[-1]
    image = DDIMPipeline.from_pretrained(checkpoint)(num_inference_steps=1, output_type="np").images
    assert image.shape == (1, 16, 16, 3)


def test_a_latent_teacher_gives_a_latent_student(root, rooms):
    teacher = make_tiny_ldm_checkpoint(root / "ldm-teacher")
    Trainer(_config(teacher, rooms, 2, **{"distill.start_steps": 2, "train.batch_size": 2}), root / "ldm-student",
            progress=False).train()
    pipe = load(str(root / "ldm-student"))
    assert pipe.autoencoder is not None and pipe.info.family == "progressive"
    assert pipe.training_scheduler.config.clip_sample is False  # latents are not bounded to [-1, 1]
    checkpoint = sorted((root / "ldm-student" / "checkpoints").iterdir())[-1]
    assert json.loads((checkpoint / "model_index.json").read_text())["_class_name"] == "LDMPipeline"
    assert pipe.generate(1, seed=0, steps=1)[0].size == (16, 16)


@pytest.mark.parametrize("setting, words", [
    ("distill.start_steps=6", "must be a power of two"),
    ("distill.final_steps=16", "must exceed distill.final_steps"),
    ("distill.start_steps=128", "exceeds the teacher's 100 training timesteps"),
    ("train.max_steps=2", "fewer than the 3 stages"),
    ("distill.method=consistency", "made with distill.method=progressive"),
])
def test_bad_progressive_settings_are_refused_in_one_line(root, teacher, rooms, setting, words, capsys):
    out = root / f"refused-{setting}"
    argv = ["distill", "--method", "progressive", "--teacher", str(teacher), "--data", str(rooms), "--out", str(out),
            "--set", "distill.start_steps=8", "--set", setting]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert words in error and len(error.splitlines()) == 1, error
    assert not out.exists()


def test_epochs_instead_of_steps_are_refused(teacher, rooms):
    config = _config(teacher, rooms, 4, **{"train.max_steps": None, "train.epochs": 1})
    with pytest.raises(BedgenError, match="give --max-steps"):
        ProgressiveDistillationFamily(config)


def test_the_train_tabs_progressive_button_runs_the_progressive_method(tmp_path):
    """The distil mode's second start button (/distill_progressive_start) asks for --method progressive;
    its checks are the consistency button's (tests/test_attacks_refs.py tries both)."""
    from bedgen.ui.train import DistillJob

    job = DistillJob("checkpoints/teacher", "data/rooms", 64, 4, 1e-4, "pd", method="progressive")
    command = job.command(tmp_path / "pd", None)
    assert command[:3] == ["distill", "--method", "progressive"]
    assert DistillJob("t", "d", 8, 2, 1e-4, "cd").command(tmp_path / "cd", None)[:3] == ["distill", "--method",
                                                                                         "consistency"]


def test_the_generate_tab_proposes_the_students_own_steps(student, root, monkeypatch):
    from bedgen.ui.generate import default_steps_for
    from bedgen.ui.settings import AppSettings

    monkeypatch.setenv("BEDGEN_CHECKPOINTS", str(root))
    assert default_steps_for(str(student), AppSettings.from_env()) == 1
