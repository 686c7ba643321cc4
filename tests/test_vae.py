"""The VAE baseline and the autoencoder presets: ELBO terms by hand, training, loading, sampling."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, VQModel

import bedgen
from bedgen.models import autoencoders as ae
from bedgen.cli.main import main
from bedgen.config.overrides import override
from bedgen.config.schema import preset
from bedgen.data.datasets import open_dataset
from bedgen.core.errors import BedgenError
from bedgen.families.vae import AutoencoderFamily
from bedgen.sampling.interpolate import interpolate
from bedgen.storage.registry import local_models
from bedgen.training.trainer import Trainer

from conftest import save_random_backbone
from synthetic import write_rooms

TINY_AE = {
    "resolution": 16,
    "autoencoder.block_out_channels": (8, 16, 16),
    "autoencoder.norm_num_groups": 4,
    "autoencoder.layers_per_block": 1,
    "autoencoder.latent_channels": 4,
}


def vae_config(source, name="vae-tiny", steps=6, **changes):
    base = {
        **TINY_AE,
        "data.source": str(source),
        "train.max_steps": steps,
        "train.batch_size": 8,
        "train.warmup_steps": 0,
        "train.checkpoint_every": 3,
        "train.preview_every": 3,
        "train.preview_images": 4,
        "train.log_every": 1,
    }
    base.update(changes)
    return override(preset(name), base)


@pytest.fixture(scope="module")
def rooms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vae-data") / "rooms"
    write_rooms(folder, 32, size=24)
    return folder


@pytest.fixture(scope="module")
def trained(rooms, tmp_path_factory):
    run = tmp_path_factory.mktemp("checkpoints") / "vae-run"
    Trainer(vae_config(rooms), run, progress=False).train()
    return run


# --- the ELBO terms, by hand --------------------------------------------------------------


def test_gaussian_kl_by_hand():
    # μ = (1, 0), log σ² = (0, log 4): ½(1 + 1 − 1 − 0) + ½(0 + 4 − 1 − log 4) = 0.5 + 0.80685
    mean = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    assert ae.gaussian_kl(mean, logvar).item() == pytest.approx(0.5 + 0.5 * (3 - math.log(4)), rel=1e-6)
    assert ae.gaussian_kl(torch.zeros(3, 5), torch.zeros(3, 5)).tolist() == [0.0, 0.0, 0.0]


def test_gaussian_nll_by_hand():
    # x − x̂ = (0.1, −0.2), σ = 0.5: (0.01 + 0.04) / 0.5 + 2 log(0.5 √(2π)) = 0.1 + 0.45158
    x = torch.tensor([[0.1, -0.2]])
    expected = 0.05 / (2 * 0.25) + 2 * math.log(0.5 * math.sqrt(2 * math.pi))
    assert ae.gaussian_nll(x, torch.zeros_like(x), 0.5).item() == pytest.approx(expected, rel=1e-6)


def test_vq_terms_by_hand():
    # z_e = (1, 2), e = (0, 0): codebook ‖z_e − e‖² mean = 2.5, commitment β·2.5 with β = 0.25
    z_e = torch.tensor([[[[1.0]], [[2.0]]]])
    assert ae.vq_terms(z_e, torch.zeros_like(z_e), 0.25).item() == pytest.approx(2.5 * 1.25)


def test_family_loss_is_the_negative_elbo_per_dimension(rooms):
    config = vae_config(rooms, **{"autoencoder.kl_weight": 0.5, "autoencoder.decoder_std": 0.2})
    family = AutoencoderFamily(config)
    torch.manual_seed(0)
    model = family.build_model()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    losses, t, raw = family.loss(model, x, torch.Generator().manual_seed(7))
    # The same reparameterised draw by hand: z = μ + σ·ε with ε from the same generator.
    posterior = model.encode(x).latent_dist
    eps = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(7))
    x_hat = model.decode(posterior.mean + posterior.std * eps).sample
    d = 3 * 16 * 16
    nll = ((x - x_hat) ** 2).flatten(1).sum(1) / (2 * 0.04) + d * math.log(0.2 * math.sqrt(2 * math.pi))
    kl = 0.5 * (posterior.mean**2 + posterior.var - 1 - posterior.logvar).flatten(1).sum(1)
    torch.testing.assert_close(losses, (nll + 0.5 * kl) / d, rtol=1e-5, atol=1e-6)
    assert t.tolist() == [0, 0] and torch.equal(raw, losses.detach())


# --- training, saving, loading, sampling --------------------------------------------------


def test_trains_with_the_one_trainer_and_reloads_as_a_vae(trained):
    losses = [json.loads(line)["loss"] for line in (trained / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in line]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    pipe = bedgen.load(str(trained))
    assert isinstance(pipe, bedgen.sampling.pipeline.AutoencoderPipeline)
    assert pipe.info.family == "vae" and pipe.resolution == 16 and pipe.latent_shape == (4, 4, 4)
    assert pipe.samplers == ["prior"] and (trained / "previews" / "latest.png").is_file()
    latest = json.loads((trained / "bedgen-run.json").read_text())["latest"]
    # diffusers loads the network on its own; there is no pipeline class for a bare VAE
    direct = AutoencoderKL.from_pretrained(trained / latest, subfolder="vae")
    for name, value in direct.state_dict().items():
        torch.testing.assert_close(value, pipe.autoencoder.state_dict()[name])


def test_same_seed_same_images(trained):
    pipe = bedgen.load(str(trained))
    a = pipe.generate(3, seed=4, dtype="fp32")
    b = bedgen.load(str(trained)).generate(3, seed=4, dtype="fp32", batch_size=1)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert a[0].tobytes() != a[1].tobytes() and a[0].size == (16, 16)
    result = pipe.sample(2, seed=4, steps=20, dtype="fp32")
    assert result.steps == 1 and result.sampler == "prior"
    assert result.images[0].tobytes() == a[0].tobytes()


def test_reconstructs_and_interpolates_uploaded_images(trained, rooms):
    pipe = bedgen.load(str(trained))
    files = sorted(rooms.iterdir())[:2]
    out = pipe.reconstruct([str(f) for f in files])
    assert [im.size for im in out] == [(16, 16), (16, 16)]
    result = interpolate(pipe, str(files[0]), str(files[1]), frames=3, dtype="fp32")
    assert len(result.frames) == 3
    # λ = 0 and λ = 1 are the reconstructions of the two inputs
    # (a batch of two vs one: oneDNN may round differently, within one 8-bit level)
    alone = np.asarray(pipe.reconstruct([str(files[0])], dtype="fp32")[0], dtype=np.int16)
    assert np.abs(np.asarray(result.frames[0], dtype=np.int16) - alone).max() <= 1
    assert result.frames[1].tobytes() not in (result.frames[0].tobytes(), result.frames[2].tobytes())
    with pytest.raises(BedgenError, match="no diffusion to invert"):
        interpolate(pipe, str(files[0]), str(files[1]), method="ddim-inversion")


def test_listed_with_the_local_models(trained):
    entries = local_models(trained.parent)
    assert any(e.ref == str(trained) for e in entries)


def test_resume_continues_the_same_run(rooms, tmp_path):
    quiet = {"train.preview_every": 0}
    whole = tmp_path / "whole"
    Trainer(vae_config(rooms, steps=6, **quiet), whole, progress=False).train()
    part = tmp_path / "part"
    Trainer(vae_config(rooms, steps=3, **quiet), part, progress=False).train()
    Trainer(vae_config(rooms, steps=6, **quiet), part, resume=True, progress=False).train()
    a = bedgen.load(str(whole)).autoencoder.state_dict()
    b = bedgen.load(str(part)).autoencoder.state_dict()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)


def test_cli_trains_samples_and_reconstructs(rooms, tmp_path, capsys):
    run = tmp_path / "cli-vae"
    flags = ["--max-steps", "2", "--batch-size", "4", "--checkpoint-every", "2", "--preview-every", "2",
             "--resolution", "16", "--set", "autoencoder.block_out_channels=[8,16,16]",
             "--set", "autoencoder.norm_num_groups=4"]
    assert main(["train", "--data", str(rooms), "--preset", "vae-tiny", "--out", str(run), *flags]) == 0
    assert main(["sample", "--model", str(run), "--num-images", "2", "--out", str(tmp_path / "s")]) == 0
    assert len(list((tmp_path / "s").glob("*.png"))) >= 2
    image = sorted(rooms.iterdir())[0]
    assert main(["reconstruct", "--model", str(run), str(image), "--out", str(tmp_path / "r")]) == 0
    assert (tmp_path / "r" / f"{image.stem}.png").is_file()


# --- the autoencoder presets --------------------------------------------------------------


def _reconstruction_error(model, x):
    with torch.no_grad():
        return float((ae.decode(model, ae.encode(model, x)) - x).pow(2).mean())


@pytest.mark.parametrize("name", ["autoencoder-kl", "autoencoder-vq"])
def test_autoencoder_presets_reduce_reconstruction_error(name, rooms, tmp_path):
    weights = save_random_backbone(tmp_path / "alexnet-random.safetensors")
    config = vae_config(rooms, name=name, steps=40, **{
        "resolution": 32, "autoencoder.num_vq_embeddings": 32, "autoencoder.lpips_weights": str(weights),
        "train.lr": 2e-3, "train.optimizer": "adam", "train.ema_decay": 0.0, "train.checkpoint_every": 40,
        "train.preview_every": 0, "train.mixed_precision": "no",
    })
    assert config.autoencoder.perceptual_weight > 0  # the LPIPS term is part of what is trained
    data = open_dataset(config.data, 32, "train")
    x = torch.stack([data[i]["image"] for i in range(16)]).float() / 127.5 - 1  # 32 px: AlexNet's minimum
    torch.manual_seed(config.train.seed)
    before = _reconstruction_error(AutoencoderFamily(config).build_model(), x)
    Trainer(config, tmp_path / "run", progress=False).train()
    model = bedgen.load(str(tmp_path / "run")).autoencoder
    assert isinstance(model, VQModel if name == "autoencoder-vq" else AutoencoderKL)
    after = _reconstruction_error(model, x)
    assert after < 0.5 * before, (before, after)


def test_a_vq_model_has_no_prior_to_sample(rooms, tmp_path):
    config = vae_config(rooms, name="autoencoder-vq", steps=1, **{"autoencoder.perceptual_weight": 0.0,
                                                                   "train.preview_every": 0})
    Trainer(config, tmp_path / "vq", progress=False).train()
    pipe = bedgen.load(str(tmp_path / "vq"))
    with pytest.raises(BedgenError, match="no N\\(0, I\\) prior"):
        pipe.generate(1)
    assert pipe.reconstruct([str(sorted(rooms.iterdir())[0])])[0].size == (16, 16)


def test_bad_perceptual_settings_fail_before_training(rooms, tmp_path):
    config = vae_config(rooms, name="autoencoder-kl", **{"resolution": 32,
                                                         "autoencoder.lpips_weights": str(tmp_path / "none.pth")})
    with pytest.raises(BedgenError, match="do not exist"):
        Trainer(config, tmp_path / "run", progress=False)
    with pytest.raises(BedgenError, match="at least 31 px"):
        Trainer(vae_config(rooms, name="autoencoder-kl"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_resolution_must_divide_by_the_downsampling(rooms):
    with pytest.raises(BedgenError, match="autoencoder's downsampling factor 4"):
        vae_config(rooms, resolution=18).validate()


def test_scaling_factor_is_one_over_the_latent_std():
    torch.manual_seed(0)
    model = AutoencoderKL(block_out_channels=(8, 8), down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, norm_num_groups=4, latent_channels=2)
    x = torch.rand(10, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        z = model.encode(x).latent_dist.mean.double()
    expected = 1 / float(z.std(unbiased=False))
    got = ae.estimate_scaling_factor(model, lambda start: x[start : start + 4], 10, batch_size=4)
    assert got == pytest.approx(expected, rel=1e-5)
    assert np.isfinite(got)


def test_vae_and_ldm_are_evaluated_by_the_same_fid_code(trained, rooms, tmp_path, monkeypatch):
    """The reference "VAE vs DDPM" comparison: bedgen eval on a vae checkpoint, stored in its bedgen.json."""
    from bedgen.evaluation.metrics import evaluate

    from conftest import make_tiny_ldm_checkpoint, save_random_inception

    monkeypatch.setenv("BEDGEN_CACHE", str(tmp_path / "cache"))
    weights = save_random_inception(tmp_path / "inception-random.pth")
    vae = evaluate(bedgen.load(str(trained)), str(rooms), num_samples=4, metrics="fid,kid",
                   inception_weights=weights, batch_size=4, dtype="fp32")
    assert vae["sampler"] == "prior" and vae["num_samples"] == 4 and vae["fid"] > 0
    ldm = bedgen.load(str(make_tiny_ldm_checkpoint(tmp_path / "ldm")))
    result = evaluate(ldm, str(rooms), num_samples=4, metrics="fid", steps=2, inception_weights=weights,
                      batch_size=4, dtype="fp32")
    assert result["fid"] > 0 and result["reference"]["path"] == vae["reference"]["path"]
