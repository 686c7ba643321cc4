"""What the app proposes on a machine without a GPU: a consistency model at few steps, said in the tab."""

from __future__ import annotations

import pytest
import torch

from bedgen.core.device import cpu_has_bf16, cpu_kind, resolve
from bedgen.sampling.backends import choose_backend
from bedgen.sampling.schedulers import CONSISTENCY_STEPS
from bedgen.storage.registry import CPU_DEFAULT_MODEL, DEFAULT_MODEL, local_models
from bedgen.ui.generate import DIFFUSION_STEPS, default_steps_for, machine_note
from bedgen.ui.settings import AppSettings
from conftest import make_tiny_checkpoint
from test_checkpoint import write_consistency_layout

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU defaults apply where there is no GPU")


@pytest.fixture
def settings(tmp_path, monkeypatch):
    monkeypatch.delenv("BEDGEN_DEFAULT_MODEL", raising=False)
    monkeypatch.setenv("BEDGEN_CHECKPOINTS", str(tmp_path / "checkpoints"))
    make_tiny_checkpoint(tmp_path / "checkpoints" / "diffusion")
    write_consistency_layout(tmp_path / "checkpoints" / "foreign-cd")
    return AppSettings.from_env()


@no_gpu
def test_without_a_gpu_the_app_opens_on_a_consistency_model_at_two_steps_and_says_why(settings):
    assert settings.default_model == CPU_DEFAULT_MODEL
    assert default_steps_for(settings.default_model, settings) == CONSISTENCY_STEPS == 2
    note = machine_note(settings)
    assert "No GPU here" in note and "consistency model at 2 steps" in note and "FID 5.22" in note
    # the engine the model runs on: on a CPU without native bf16, NNPACK Winograd on AVX2, else
    # ONNX Runtime (bench/RESULTS.md); only an exported engine makes a first click slower
    engine = choose_backend(None, resolve("auto", "auto"))[0]
    if cpu_has_bf16():
        assert "native bf16" in note and "ONNX Runtime" not in note and "Winograd" not in note
    elif engine == "winograd":
        assert f"{cpu_kind()} CPU, no native bf16, so fp32 on NNPACK Winograd" in note and "exported" not in note
    else:
        assert "no native bf16, so fp32 on ONNX Runtime" in note
        assert note.endswith("A large model's first click takes longer: it is exported for ONNX Runtime once, then cached.")


@no_gpu
def test_a_chosen_default_model_is_kept_and_the_note_still_points_to_few_step_models(settings, monkeypatch):
    monkeypatch.setenv("BEDGEN_DEFAULT_MODEL", DEFAULT_MODEL)
    chosen = AppSettings.from_env()
    assert chosen.default_model == DEFAULT_MODEL
    assert default_steps_for(DEFAULT_MODEL, chosen) == DIFFUSION_STEPS
    assert "sample in 1-2 steps" in machine_note(chosen)


def test_each_model_gets_the_steps_of_its_family_before_it_loads(settings):
    local = {entry.ref.rsplit("/", 1)[-1]: entry for entry in local_models(settings.checkpoints)}
    assert local["foreign-cd"].family == "consistency" and local["diffusion"].family == "ddpm"
    assert default_steps_for(local["foreign-cd"].ref, settings) == CONSISTENCY_STEPS
    assert default_steps_for(local["diffusion"].ref, settings) == DIFFUSION_STEPS
    assert default_steps_for("openai/diffusers-ct_bedroom256", settings) == CONSISTENCY_STEPS
    assert default_steps_for("someone/unknown-model", settings) == DIFFUSION_STEPS
