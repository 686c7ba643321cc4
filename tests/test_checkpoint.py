"""Saving, loading and the foreign layouts bedgen must read."""

import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers import CMStochasticIterativeScheduler, DDPMScheduler, DiffusionPipeline, UNet2DModel

import bedgen
from bedgen.core.files import recover_interrupted_save
from bedgen.storage.checkpoint import BEDGEN_JSON, load_checkpoint, save_checkpoint
from bedgen.core.errors import BedgenError, ModelNotFoundError
from bedgen.models.unet import build_training_scheduler, build_unet

from conftest import make_tiny_checkpoint, tiny_config


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_save_load_round_trip(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck", seed=3)
    unet, scheduler, info = load_checkpoint(str(path))
    config = tiny_config()
    torch.manual_seed(3)
    assert info.layout == "bedgen" and info.family == "ddpm"
    assert info.config == config
    assert scheduler.config.num_train_timesteps == 100
    assert (path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert not list(path.rglob("*.bin")) and not list(path.rglob("*.pt"))
    described = json.loads((path / BEDGEN_JSON).read_text())
    assert described["family"] == "ddpm" and described["preset"] == "tiny"
    assert described["provenance"]["bedgen_version"] == bedgen.__version__
    again, _, _ = load_checkpoint(str(path))
    assert _same_weights(unet, again)


def test_bedgen_checkpoint_loads_in_plain_diffusers(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck")
    pipe = DiffusionPipeline.from_pretrained(path)
    assert type(pipe).__name__ == "DDPMPipeline"
    ours, _, _ = load_checkpoint(str(path))
    assert _same_weights(pipe.unet, ours)
    images = pipe(batch_size=1, num_inference_steps=2, output_type="np").images
    assert images.shape == (1, 16, 16, 3)


def _old_attention_names(state: dict) -> dict:
    """Rename to the attention parameter names of diffusers <= 0.3 (as in google's .bin)."""
    renames = {".to_q.": ".query.", ".to_k.": ".key.", ".to_v.": ".value.", ".to_out.0.": ".proj_attn."}
    out = {}
    for key, value in state.items():
        for new, old in renames.items():
            key = key.replace(new, old)
        out[key] = value
    return out


def write_flat_google_layout(folder: Path, seed: int = 0) -> UNet2DModel:
    """The layout of google/ddpm-ema-bedroom-256: everything at the root, pickled weights."""
    folder.mkdir(parents=True)
    config = tiny_config()
    torch.manual_seed(seed)
    unet = build_unet(config)
    unet_config = dict(unet.config)
    unet_config.update(_class_name="UNet2DModel", _diffusers_version="0.1.1", attention_head_dim=None)
    (folder / "config.json").write_text(json.dumps(unet_config))
    scheduler_config = {
        "_class_name": "DDPMScheduler", "_diffusers_version": "0.1.1", "beta_end": 0.02,
        "beta_schedule": "linear", "beta_start": 0.0001, "clip_sample": True,
        "num_train_timesteps": 100, "trained_betas": None, "variance_type": "fixed_small",
        "timestep_values": None,
    }
    (folder / "scheduler_config.json").write_text(json.dumps(scheduler_config))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "scheduler": ["diffusers", "DDPMScheduler"], "unet": ["diffusers", "UNet2DModel"]}
    ))
    torch.save(_old_attention_names(unet.state_dict()), folder / "diffusion_pytorch_model.bin")
    return unet


def test_flat_google_layout_with_pickled_weights(tmp_path):
    reference = write_flat_google_layout(tmp_path / "google")
    unet, scheduler, info = load_checkpoint(str(tmp_path / "google"))
    assert info.layout == "flat" and info.family == "ddpm"
    assert isinstance(scheduler, DDPMScheduler)
    assert _same_weights(unet, reference)  # old attention names were converted
    images = bedgen.load(str(tmp_path / "google")).generate(2, seed=0, steps=3)
    assert len(images) == 2 and images[0].size == (16, 16)


class _Payload:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_with_code_is_refused_and_never_executed(tmp_path):
    write_flat_google_layout(tmp_path / "evil")
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil" / "diffusion_pytorch_model.bin"
    with open(weights, "wb") as handle:
        pickle.dump({"conv_in.weight": _Payload(marker)}, handle)
    with pytest.raises(BedgenError, match="could not load the weights"):
        load_checkpoint(str(tmp_path / "evil"))
    assert not marker.exists()


def test_learned_variance_subfolder_layout_samples(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "iddpm", **{"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"})
    (path / BEDGEN_JSON).unlink()  # a foreign diffusers checkpoint: family is inferred
    pipe = bedgen.load(str(path))
    assert pipe.info.layout == "diffusers" and pipe.info.family == "iddpm"
    assert pipe.unet.config.out_channels == 6
    for sampler in ("ddpm", "ddim", "dpmsolver++"):
        images = pipe.generate(2, seed=1, steps=4, scheduler=sampler)
        assert len(images) == 2


def test_ddpm_sampler_uses_the_learned_variance(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "iddpm", **{"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"})
    pipe = bedgen.load(str(path))
    a = pipe.generate(1, seed=5, steps=4, scheduler="ddpm", dtype="fp32")[0]
    with torch.no_grad():  # a different variance head must change ancestral samples
        for name, p in pipe.unet.conv_out.named_parameters():
            p[3:].add_(1.0)
    pipe.placement.forget()
    b = pipe.generate(1, seed=5, steps=4, scheduler="ddpm", dtype="fp32")[0]
    assert a.tobytes() != b.tobytes()


def write_consistency_layout(folder: Path) -> None:
    """unet/ + scheduler/ with CMStochasticIterativeScheduler, as openai/diffusers-cd_bedroom256_*."""
    config = tiny_config()
    torch.manual_seed(0)
    unet = build_unet(config)
    unet.save_pretrained(folder / "unet")
    CMStochasticIterativeScheduler(num_train_timesteps=40).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "ConsistencyModelPipeline",
        "scheduler": ["diffusers", "CMStochasticIterativeScheduler"], "unet": ["diffusers", "UNet2DModel"],
    }))


def test_consistency_model_layout_samples_in_one_or_two_steps(tmp_path):
    write_consistency_layout(tmp_path / "cd")
    pipe = bedgen.load(str(tmp_path / "cd"))
    assert pipe.info.family == "consistency"
    assert pipe.samplers == ["consistency"] and pipe.default_steps == 2
    one = pipe.sample(2, seed=0, steps=1)
    two = pipe.sample(2, seed=0, steps=2)
    assert one.sampler == "consistency" and len(one.images) == len(two.images) == 2
    assert one.images[0].tobytes() != two.images[0].tobytes()
    with pytest.raises(BedgenError, match="unknown scheduler 'ddim'"):
        pipe.generate(1, scheduler="ddim")
    with pytest.raises(BedgenError, match="between 1 and 40"):
        pipe.generate(1, steps=41)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck", seed=1)
    before, _, _ = load_checkpoint(str(path))
    config = tiny_config()

    def crash(tmp):
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        save_checkpoint(path, build_unet(config), build_training_scheduler(config), config, extra=crash)
    after, _, _ = load_checkpoint(str(path))
    assert _same_weights(before, after)
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary leftovers


def test_crash_between_the_two_renames_is_recovered(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck")
    path.rename(tmp_path / ".ck.old-deadbeef")  # as if the process died mid-swap
    recover_interrupted_save(path)
    assert load_checkpoint(str(path))[2].layout == "bedgen"


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="not a diffusion checkpoint"):
        load_checkpoint(str(tmp_path / "empty"))
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        load_checkpoint(str(tmp_path / "file.txt"))
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor a Hub id"):
        load_checkpoint("no such thing")


def test_missing_weights_are_reported(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck")
    (path / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(BedgenError, match="has no weights"):
        load_checkpoint(str(path))


def test_unknown_scheduler_class_is_not_imported(tmp_path):
    path = make_tiny_checkpoint(tmp_path / "ck")
    cfg = path / "scheduler" / "scheduler_config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "_class_name": "os.system"}))
    with pytest.raises(BedgenError, match="unknown scheduler class 'os.system'"):
        load_checkpoint(str(path))
