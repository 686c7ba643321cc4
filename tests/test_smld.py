"""Score-based models (SMLD/NCSN): the math pinned by hand, training, loading, sampling."""

import json
import math

import pytest
import torch
from diffusers import DiffusionPipeline, ScoreSdeVePipeline, ScoreSdeVeScheduler, UNet2DModel

import bedgen
from bedgen.maths import score as sm
from bedgen.core.errors import BedgenError
from bedgen.storage.registry import local_models
from bedgen.training.trainer import Trainer

from conftest import tiny_config
from hubserver import FakeHub, isolate_hf_hub
from synthetic import write_rooms


# --- the math, against values computed by hand ------------------------------------------


def test_sigma_ladder_is_geometric_from_max_to_min():
    # σ_i = 50 · (0.01/50)^(i/3): ratio (2e-4)^(1/3) = 0.0584803548...
    ladder = sm.sigma_ladder(50.0, 0.01, 4)
    expected = torch.tensor([50.0, 2.9240177382, 0.1709975947, 0.01], dtype=torch.float64)
    torch.testing.assert_close(ladder, expected, rtol=1e-9, atol=0)


def test_langevin_step_size_scales_with_sigma_squared():
    # α_i = ε σ_i² / σ_L²: ε = 2e-5, σ_i = 1, σ_L = 0.01 -> 0.2; at σ_L itself α = ε.
    assert sm.langevin_step_size(2e-5, 1.0, 0.01) == pytest.approx(0.2, rel=1e-12)
    assert sm.langevin_step_size(2e-5, 0.01, 0.01) == pytest.approx(2e-5, rel=1e-12)


def test_sigma_max_is_the_largest_pairwise_distance():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [1.0, 1.0]])
    assert sm.max_pairwise_distance(points, chunk=2) == pytest.approx(10.0, abs=1e-9)
    with pytest.raises(ValueError, match="at least two"):
        sm.max_pairwise_distance(points[:1])


def test_technique2_ratio_by_hand():
    # D = 3072 (CIFAR-10), γ = 1.0378: √6144·0.0378 = 2.963, so Φ(6.076) − Φ(−0.150) = 0.5598.
    assert sm.technique2_ratio_objective(1.0378, 3072) == pytest.approx(0.5598, abs=1e-3)
    # The objective reaches 0.5 at γ = 1.03980, i.e. ln(50/0.01)/ln γ + 1 = 220 levels
    # (NCSNv2 rounds to a slightly denser 232 levels for this setting).
    assert sm.levels_by_technique2(50.0, 0.01, 3072) == 220


def test_dsm_loss_is_zero_for_the_true_score_and_half_squared_norm_otherwise():
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sm.dsm_loss(-noise, noise), torch.zeros(2))
    # σ·s = 0: ½ mean z².
    torch.testing.assert_close(sm.dsm_loss(torch.zeros_like(noise), noise), 0.5 * noise.pow(2).flatten(1).mean(1))


def test_one_langevin_step_by_hand():
    # One level (σ_L = σ_1, so α = ε = 0.3) and a constant score c = 2:
    # x1 = x0 + (α/2)·c + √α·z, with z drawn from the image's own generator.
    x0 = torch.zeros(1, 1, 2, 2)
    out = sm.annealed_langevin(lambda x, s: torch.full_like(x, 2.0), x0, torch.tensor([1.0]), 1, 0.3,
                               [torch.Generator().manual_seed(7)], denoise=False)
    z = torch.randn(1, 2, 2, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(out[0], 0.5 * 0.3 * 2.0 + math.sqrt(0.3) * z)


def _gaussian_score(mean: float, std: float):
    """The exact score of N(mean, std²) perturbed by N(0, σ²): −(x − mean)/(std² + σ²)."""

    def score(x, sigma):
        s2 = sigma.view(-1, 1, 1, 1) ** 2
        return -(x - mean) / (std**2 + s2)

    return score


@pytest.mark.parametrize("sampler", ["langevin", "pc"])
def test_samplers_draw_from_a_known_gaussian(sampler):
    mean, std = 0.3, 0.2
    generators = [torch.Generator().manual_seed(i) for i in range(64)]
    sigmas = sm.sigma_ladder(5.0, 0.01, 60).float()
    x = torch.stack([torch.randn(1, 8, 8, generator=g) for g in generators]) * 5.0
    score = _gaussian_score(mean, std)
    if sampler == "langevin":
        x = sm.annealed_langevin(score, x, sigmas, 20, 2e-5, generators)
    else:
        x = sm.ve_predictor_corrector(score, x, sigmas, 0.16, 1, generators)
    assert x.mean().item() == pytest.approx(mean, abs=0.02)
    assert x.std().item() == pytest.approx(std, rel=0.1)


def test_images_do_not_depend_on_their_batch_mates():
    score = _gaussian_score(0.5, 0.2)
    sigmas = sm.sigma_ladder(3.0, 0.01, 10).float()

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        x = torch.stack([torch.randn(1, 4, 4, generator=g) for g in gens]) * 3.0
        return sm.ve_predictor_corrector(score, x, sigmas, 0.16, 1, gens)

    torch.testing.assert_close(run([3, 4])[1], run([4])[0])


# --- the family through the one trainer ----------------------------------------------


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("smld-rooms")
    write_rooms(folder, 32, size=24)
    return folder


def smld_config(data, **changes):
    base = {
        "family": "smld", "preset": "smld-tiny", "data.source": str(data),
        "score.num_levels": 20, "score.langevin_steps": 2, "sampling.scheduler": "langevin", "sampling.steps": 5,
        "train.batch_size": 8, "train.max_steps": 6, "train.lr": 1e-3, "train.warmup_steps": 0,
        "train.checkpoint_every": 6, "train.preview_every": 0, "train.log_every": 1, "train.mixed_precision": "no",
    }
    base.update(changes)
    return tiny_config(**base)


@pytest.fixture(scope="module")
def trained(rooms, tmp_path_factory):
    run = tmp_path_factory.mktemp("checkpoints") / "smld-run"
    Trainer(smld_config(rooms), run, progress=False).train()
    return run


def test_trains_saves_and_reloads_with_sigma_max_measured_from_the_data(trained):
    losses = [json.loads(line)["loss"] for line in (trained / "metrics.jsonl").read_text().splitlines()
              if "loss" in line]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    pipe = bedgen.load(str(trained))
    assert pipe.info.family == "smld"
    recorded = pipe.info.config.score.sigma_max
    assert recorded is not None and recorded > 1.0  # 24 px rooms in [0, 1] are far apart
    assert isinstance(pipe.training_scheduler, ScoreSdeVeScheduler)
    assert pipe.training_scheduler.config.sigma_max == pytest.approx(recorded)
    assert pipe.samplers == ["langevin", "pc"] and pipe.default_sampler == "langevin"


def test_same_seed_same_images_and_batch_invariance(trained):
    pipe = bedgen.load(str(trained))
    a = pipe.generate(3, seed=11, dtype="fp32", batch_size=3)
    b = pipe.generate(3, seed=11, dtype="fp32", batch_size=1)
    c = pipe.generate(1, seed=12, dtype="fp32")
    assert [im.tobytes() for im in a] == [im.tobytes() for im in pipe.generate(3, seed=11, dtype="fp32")]
    diff = torch.tensor(list(a[1].tobytes()), dtype=torch.int) - torch.tensor(list(b[1].tobytes()), dtype=torch.int)
    assert diff.abs().max() <= 1
    assert a[1].tobytes() != a[0].tobytes() and c[0].size == (16, 16)


def test_steps_and_step_size_change_the_result(trained):
    pipe = bedgen.load(str(trained))
    base = pipe.sample(1, seed=0, dtype="fp32", steps=5)
    assert base.sampler == "langevin" and base.steps == 5
    other = pipe.generate(1, seed=0, dtype="fp32", steps=5, step_size=1e-3)[0]
    assert other.tobytes() != base.images[0].tobytes()
    pc = pipe.sample(1, seed=0, dtype="fp32", steps=4, scheduler="pc", trajectory_every=2)
    assert pc.sampler == "pc" and len(pc.trajectory[0]) >= 2
    with pytest.raises(BedgenError, match="step size must be a positive number"):
        pipe.generate(1, step_size=-1.0)
    with pytest.raises(BedgenError, match="steps must be between 1 and 20"):
        pipe.generate(1, steps=21)


def test_step_size_is_refused_for_diffusion_models(tiny_checkpoint):
    with pytest.raises(BedgenError, match="score models"):
        bedgen.load(str(tiny_checkpoint)).generate(1, steps=2, step_size=1e-3)


def test_checkpoint_is_a_diffusers_score_sde_pipeline_and_listed(trained):
    checkpoint = json.loads((trained / "bedgen-run.json").read_text())["latest"]
    pipe = DiffusionPipeline.from_pretrained(trained / checkpoint)
    assert isinstance(pipe, ScoreSdeVePipeline)
    assert str(trained) in [m.ref for m in local_models(trained.parent)]


def test_resume_recomputes_the_same_sigma_max(rooms, trained, tmp_path):
    first = bedgen.load(str(trained)).info.config.score.sigma_max
    run = tmp_path / "again"
    Trainer(smld_config(rooms, **{"train.max_steps": 3, "train.checkpoint_every": 3}), run, progress=False).train()
    assert bedgen.load(str(run)).info.config.score.sigma_max == pytest.approx(first, rel=1e-12)


def test_identical_images_are_a_clear_error(tmp_path):
    folder = tmp_path / "same"
    folder.mkdir()
    from PIL import Image

    for i in range(4):
        Image.new("RGB", (24, 24), (120, 80, 40)).save(folder / f"{i}.png")
    with pytest.raises(BedgenError, match="identical"):
        Trainer(smld_config(folder), tmp_path / "run", progress=False)


# --- foreign NCSN++ checkpoints (google/ncsnpp-bedroom-256 layout) ----------------------


def write_ncsnpp_layout(folder):
    """unet/ + scheduler/ + model_index.json as diffusers writes a ScoreSdeVePipeline."""
    torch.manual_seed(0)
    unet = UNet2DModel(
        sample_size=16, block_out_channels=(32, 32), down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"), norm_num_groups=8, layers_per_block=1,
        time_embedding_type="fourier", attention_head_dim=None,
    )
    scheduler = ScoreSdeVeScheduler(num_train_timesteps=50, sigma_min=0.01, sigma_max=20.0, snr=0.16)
    ScoreSdeVePipeline(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder


def test_ncsnpp_layout_loads_from_the_hub_and_samples_with_predictor_corrector(monkeypatch, tmp_path):
    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    repo = write_ncsnpp_layout(tmp_path / "ncsnpp")
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_repo("google/ncsnpp-tiny", repo)
        pipe = bedgen.load("google/ncsnpp-tiny")
    assert pipe.info.family == "smld" and pipe.default_sampler == "pc"
    first = pipe.generate(2, seed=3, steps=4, dtype="fp32")
    again = pipe.generate(2, seed=3, steps=4, dtype="fp32")
    assert [im.tobytes() for im in first] == [im.tobytes() for im in again]
    assert first[0].size == (16, 16)
    assert pipe.generate(1, seed=3, steps=4, scheduler="langevin", dtype="fp32")[0].size == (16, 16)
