"""Golden outputs of every inference path: the 8-bit pixels tiny seeded models give today.

Each case builds a tiny model from a fixed seed, runs one public entry point (``generate`` /
``sample`` with each sampler family, trajectories, ``interpolate``, the FID sampling helper,
fine-tuning's class images) on the CPU in fp32, and compares the uint8 images with
``tests/golden/sampling.json``: exact shapes, and at most ``TOLERANCE`` levels of difference
per pixel (CPU kernels round differently between machines). The file pins behaviour across
refactors of the sampling code; a change that moves these pixels on purpose (a new sampler
default, a fixed bug) regenerates it and says so in its commit.

Regenerate (rewrites only the cases that run; the normal run never writes):

    BEDGEN_WRITE_GOLDEN=1 PYTHONPATH=$PWD python -m pytest -q tests/test_golden_sampling.py
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler

import bedgen
from bedgen.core.device import cpu_has_bf16
from bedgen.sampling.interpolate import interpolate
from bedgen.storage.checkpoint import save_checkpoint
from bedgen.models.unet import build_unet
from conftest import make_tiny_checkpoint, perturbed_unet, tiny_config
from synthetic import write_rooms

GOLDEN = Path(__file__).resolve().parent / "golden" / "sampling.json"
WRITE = os.environ.get("BEDGEN_WRITE_GOLDEN") == "1"
TOLERANCE = 2  # uint8 levels
SIZE = 8  # pixel models' side: 192 bytes an image keeps the file small
RUN = dict(device="cpu", dtype="fp32")


# --- the golden file ----------------------------------------------------------------------


def _encode(pixels: np.ndarray) -> dict:
    return {"shape": list(pixels.shape), "uint8_base64": base64.b64encode(pixels.tobytes()).decode("ascii")}


def _decode(entry: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(entry["uint8_base64"]), dtype=np.uint8).reshape(entry["shape"])


def _stack(images) -> np.ndarray:
    """PIL images or uint8 arrays (or lists of them, e.g. a trajectory per image) -> one uint8 array."""
    if isinstance(images, (list, tuple)):
        return np.stack([_stack(im) for im in images])
    if isinstance(images, np.ndarray):
        return images.astype(np.uint8)
    return np.asarray(images.convert("RGB"), dtype=np.uint8)


def check(name: str, images, meta: dict | None = None) -> None:
    """Compare (or, with BEDGEN_WRITE_GOLDEN=1, record) the images of case ``name``."""
    pixels = _stack(images)
    entry = {"pixels": _encode(pixels), "meta": meta or {}}
    if WRITE:
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
        golden[name] = entry
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(golden.items())), indent=1) + "\n")
        return
    golden = json.loads(GOLDEN.read_text())
    assert name in golden, f"no golden entry {name!r}; regenerate with BEDGEN_WRITE_GOLDEN=1 (see docstring)"
    expected = _decode(golden[name]["pixels"])
    assert pixels.shape == expected.shape, f"{name}: shape {pixels.shape}, golden {expected.shape}"
    diff = np.abs(pixels.astype(np.int16) - expected.astype(np.int16))
    assert diff.max() <= TOLERANCE, (
        f"{name}: {int((diff > TOLERANCE).sum())} of {diff.size} values differ by more than {TOLERANCE} "
        f"levels (max {int(diff.max())})"
    )
    assert (meta or {}) == golden[name]["meta"], f"{name}: {meta} != golden {golden[name]['meta']}"


# --- tiny seeded models -------------------------------------------------------------------

PIXEL_MODELS = {
    "eps": dict(seed=0),
    "v": dict(seed=1, **{"diffusion.prediction_type": "v_prediction"}),
    "x0": dict(seed=2, **{"diffusion.prediction_type": "sample"}),
    "iddpm": dict(seed=3, **{"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"}),
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("golden-models")
    pipes = {}
    for name, changes in PIXEL_MODELS.items():
        changes = dict(changes)
        seed = changes.pop("seed")
        pipes[name] = bedgen.load(str(make_tiny_checkpoint(root / name, seed=seed, resolution=SIZE, **changes)))
    pipes["ldm"] = bedgen.load(str(_ldm_checkpoint(root / "ldm", seed=4)))
    pipes["smld"] = bedgen.load(str(_score_checkpoint(root / "smld", seed=5)))
    pipes["consistency"] = bedgen.load(str(_consistency_checkpoint(root / "cd", seed=6)))
    return pipes


def _ldm_checkpoint(path: Path, seed: int) -> Path:
    """Like conftest's tiny latent diffusion model at 8 px: a random KL VAE with f = 2, 4 x 4 x 4 latents."""
    from bedgen.config.overrides import override
    from bedgen.config.schema import preset
    from bedgen.models.autoencoders import build_autoencoder
    from bedgen.models.unet import build_training_scheduler

    vae_config = override(preset("vae-tiny"), {
        "resolution": SIZE, "autoencoder.block_out_channels": (8, 16), "autoencoder.norm_num_groups": 4,
        "autoencoder.latent_channels": 4,
    })
    config = tiny_config(**{"resolution": SIZE, "family": "ldm", "preset": "ldm-tiny", "in_channels": 4,
                            "diffusion.clip_sample": False, "latent.scaling_factor": 2.0,
                            "latent.downsample_factor": 2})
    torch.manual_seed(seed)
    autoencoder = build_autoencoder(vae_config)
    autoencoder.register_to_config(scaling_factor=2.0)
    unet = build_unet(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return save_checkpoint(path, unet, build_training_scheduler(config), config, autoencoder=autoencoder)


def _score_checkpoint(path: Path, seed: int) -> Path:
    """Like conftest's tiny score model at 8 px, every weight perturbed so the score is non-trivial.

    σ_max = 0.5: a random network's score cannot undo a larger prior's spread, and nearly every
    pixel would clip to 0 or 255, which would hide differences."""
    from bedgen.families.smld import build_score_scheduler

    config = tiny_config(**{"resolution": SIZE, "family": "smld", "preset": "smld-tiny", "score.sigma_max": 0.5,
                            "score.num_levels": 20, "score.langevin_steps": 2, "score.corrector_steps": 1,
                            "sampling.scheduler": "langevin", "sampling.steps": 5})
    return save_checkpoint(path, perturbed_unet(config, seed), build_score_scheduler(config), config)


def _consistency_checkpoint(folder: Path, seed: int) -> Path:
    """unet/ + scheduler/ with CMStochasticIterativeScheduler, the layout of openai's cd_bedroom256."""
    torch.manual_seed(seed)
    unet = build_unet(tiny_config(resolution=SIZE))
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    unet.save_pretrained(folder / "unet")
    CMStochasticIterativeScheduler(num_train_timesteps=40).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "ConsistencyModelPipeline",
        "scheduler": ["diffusers", "CMStochasticIterativeScheduler"], "unet": ["diffusers", "UNet2DModel"],
    }))
    return folder


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> list[Path]:
    return write_rooms(tmp_path_factory.mktemp("golden-rooms"), 2, size=24, seed=8)


# --- generation: every sampler family -------------------------------------------------------

GENERATE = [
    *[("eps", s, 4) for s in ("ddpm", "ddim", "dpmsolver++", "unipc", "euler", "euler-a", "heun")],
    ("v", "ddim", 4), ("v", "dpmsolver++", 4), ("v", "ddpm", 4),
    ("x0", "ddim", 4), ("x0", "unipc", 4),
    ("iddpm", "ddpm", 4), ("iddpm", "ddim", 4), ("iddpm", "dpmsolver++", 4),
    ("ldm", "ddpm", 4), ("ldm", "dpmsolver++", 4),
    ("smld", "langevin", 3), ("smld", "pc", 3),
    ("consistency", "consistency", 1), ("consistency", "consistency", 2),
]


@pytest.mark.parametrize("model, sampler, steps", GENERATE, ids=[f"{m}-{s}-{n}" for m, s, n in GENERATE])
def test_generate(models, model, sampler, steps):
    images = models[model].generate(2, seed=3, steps=steps, scheduler=sampler, batch_size=2, **RUN)
    check(f"generate/{model}/{sampler}/{steps}", images)


def test_score_step_size(models):
    images = models["smld"].generate(2, seed=3, steps=3, scheduler="langevin", step_size=3e-4, **RUN)
    check("generate/smld/langevin/3/step_size=3e-4", images)


TRAJECTORIES = [
    ("eps", "ddpm", 4, 2), ("eps", "dpmsolver++", 4, 2), ("eps", "ddim", 5, 2),
    ("v", "unipc", 4, 1), ("x0", "dpmsolver++", 4, 2),
    ("iddpm", "ddpm", 4, 2), ("iddpm", "dpmsolver++", 4, 3),
    ("ldm", "dpmsolver++", 4, 3),
    ("smld", "langevin", 3, 1), ("smld", "pc", 3, 2),
    ("consistency", "consistency", 2, 1),
]


@pytest.mark.parametrize("model, sampler, steps, every", TRAJECTORIES,
                         ids=[f"{m}-{s}-{n}-every{k}" for m, s, n, k in TRAJECTORIES])
def test_trajectory(models, model, sampler, steps, every):
    calls = []
    result = models[model].sample(2, seed=1, steps=steps, scheduler=sampler, batch_size=1, trajectory_every=every,
                                  progress=lambda done, total: calls.append((done, total)), **RUN)
    check(f"trajectory/{model}/{sampler}/{steps}/every{every}", result.trajectory,
          meta={"progress_calls": len(calls), "progress_last": list(calls[-1])})


# --- interpolation --------------------------------------------------------------------------

INTERPOLATIONS = [
    ("eps", "noise"), ("eps", "ddim-inversion"), ("v", "noise"), ("v", "ddim-inversion"),
    ("x0", "ddim-inversion"), ("iddpm", "noise"), ("iddpm", "ddim-inversion"),
    ("ldm", "noise"), ("ldm", "ddim-inversion"), ("consistency", "noise"),
]


@pytest.mark.parametrize("model, method", INTERPOLATIONS, ids=[f"{m}-{k}" for m, k in INTERPOLATIONS])
def test_interpolate(models, rooms, model, method):
    result = interpolate(models[model], rooms[0], rooms[1], t=0.5, frames=3, method=method, steps=4, seed=5,
                         batch_size=2, **RUN)
    check(f"interpolate/{model}/{method}", result.frames,
          meta={"evaluations": result.evaluations, "timestep": result.timestep, "steps": result.steps})


# --- callers of pipe.sample / pipe.generate ----------------------------------------------------


class _RecordingInception:
    """Stands in for Inception in the FID helper: keeps the uint8 batches it is fed."""

    device = torch.device("cpu")

    def __init__(self):
        self.batches: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        from bedgen.evaluation.metrics import _dims

        self.batches.append(images.clone())
        return {name: torch.zeros(len(images), _dims(name)) for name in layers}


def test_fid_sampling_helper(models):
    from bedgen.evaluation.metrics import sample_features

    inception = _RecordingInception()
    features = sample_features(models["eps"], range(0, 3), seed=11, inception=inception, steps=3, scheduler="ddim",
                               batch_size=2, **RUN)
    pixels = torch.cat(inception.batches).permute(0, 2, 3, 1).numpy()  # (N, 3, H, W) -> (N, H, W, 3)
    assert features.features.shape == (3, 2048)
    check("fid/sample_features/eps/ddim/3", list(pixels), meta={"batches": len(inception.batches)})


@pytest.mark.skipif(cpu_has_bf16(), reason="class images use the automatic dtype, bf16 on this CPU")
def test_finetune_class_images(models, tmp_path):
    from PIL import Image

    from bedgen.training.finetune import generate_class_images

    paths = generate_class_images(models["eps"], tmp_path / "class", 3, batch_size=2, progress=False, device="cpu")
    check("finetune/class_images/eps", [Image.open(p) for p in paths])
