"""Interpolation: the maths against closed forms, round trips, determinism, bad input, CLI."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import bedgen
from bedgen.storage.checkpoint import save_checkpoint
from bedgen.maths.diffusion import Schedule
from bedgen.core.errors import BedgenError
from bedgen.sampling.interpolate import ddim_grid, interpolate, slerp
from bedgen.models.unet import build_training_scheduler, build_unet
from conftest import make_tiny_checkpoint, run_together, tiny_config
from synthetic import write_rooms
from test_checkpoint import write_consistency_layout


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> list[Path]:
    # 40 x 24: not square, so the model's own preprocessing (crop to 16 px) is exercised.
    folder = tmp_path_factory.mktemp("rooms")
    paths = write_rooms(folder, 2, size=48, seed=3)
    for p in paths:
        Image.open(p).crop((0, 12, 48, 36)).save(p)
    return paths


@pytest.fixture(scope="module")
def pipe(tiny_checkpoint):
    return bedgen.load(str(tiny_checkpoint))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.float64)


def test_slerp_endpoints_and_norm():
    torch.manual_seed(0)
    a, b = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)
    assert torch.allclose(slerp(a, b, 0.0), a, atol=1e-6)
    assert torch.allclose(slerp(a, b, 1.0), b, atol=1e-6)
    # Unit vectors stay unit vectors all the way (a linear mix would shrink to ~0.7).
    ua, ub = a / a.norm(), b / b.norm()
    for lam in (0.25, 0.5, 0.75):
        assert slerp(ua, ub, lam).norm().item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-6)  # parallel vectors: no 0/0


def test_ddim_grid_runs_from_zero_to_the_start_timestep():
    assert ddim_grid(10, 5) == [0, 2, 4, 6, 8, 10]
    assert ddim_grid(3, 25) == [0, 1, 2, 3]  # never more steps than timesteps


def test_noise_method_matches_the_closed_form_for_a_network_that_predicts_zero(tmp_path, rooms):
    """ε̂ ≡ 0 makes every DDIM step a rescaling x ↦ √(ᾱ'/ᾱ)·x, so the whole method has a
    closed form: frame(λ) = √(ᾱ_0/ᾱ_t) · slerp(√ᾱ_t a + √(1-ᾱ_t) ε, √ᾱ_t b + √(1-ᾱ_t) ε; λ)."""
    config = tiny_config(**{"diffusion.clip_sample": False})
    unet = build_unet(config)
    with torch.no_grad():
        for p in unet.parameters():
            p.zero_()
    scheduler = build_training_scheduler(config)
    pipe = bedgen.load(str(save_checkpoint(tmp_path / "zero", unet, scheduler, config)))
    result = interpolate(pipe, rooms[0], rooms[1], t=0.3, frames=3, seed=7, steps=5, dtype="fp32")

    abar = Schedule.from_scheduler(scheduler).alphas_cumprod.double()
    timestep = round(0.3 * 99)
    assert result.timestep == timestep
    eps = torch.randn(3, 16, 16, generator=torch.Generator("cpu").manual_seed(7)).double()
    a, b = (torch.from_numpy(pixels(im)).permute(2, 0, 1)[None] / 127.5 - 1 for im in result.inputs)
    noised_a = abar[timestep].sqrt() * a + (1 - abar[timestep]).sqrt() * eps
    noised_b = abar[timestep].sqrt() * b + (1 - abar[timestep]).sqrt() * eps
    for lam, frame in zip((0.0, 0.5, 1.0), result.frames):
        expected = (abar[0] / abar[timestep]).sqrt() * slerp(noised_a, noised_b, lam)
        expected_8bit = ((expected.clamp(-1, 1) + 1) * 127.5).round()[0].permute(1, 2, 0).numpy()
        assert np.abs(pixels(frame) - expected_8bit).max() <= 1.0


def test_ddim_inversion_at_small_t_gives_back_the_inputs(pipe, rooms):
    result = interpolate(pipe, rooms[0], rooms[1], t=0.1, frames=5, method="ddim-inversion", steps=10, dtype="fp32")
    a, b = pixels(result.inputs[0]), pixels(result.inputs[1])
    gap = np.abs(a - b).mean()
    assert gap > 20  # the two inputs really differ ...
    assert np.abs(pixels(result.frames[0]) - a).mean() < 0.05 * gap  # ... and the ends come back
    assert np.abs(pixels(result.frames[-1]) - b).mean() < 0.05 * gap
    middle = pixels(result.frames[2])
    assert np.abs(middle - a).mean() > 0.2 * gap and np.abs(middle - b).mean() > 0.2 * gap
    # Two DDIM passes (inverting A and B together, then the frames), steps evaluations each.
    assert result.evaluations == 2 * result.steps == 20


def test_frames_weights_and_seeds(pipe, rooms):
    first = interpolate(pipe, rooms[0], rooms[1], t=0.5, frames=4, seed=1, steps=4)
    again = interpolate(pipe, rooms[0], rooms[1], t=0.5, frames=4, seed=1, steps=4)
    other = interpolate(pipe, rooms[0], rooms[1], t=0.5, frames=4, seed=2, steps=4)
    assert len(first.frames) == 4 and first.weights == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert [f.tobytes() for f in first.frames] == [f.tobytes() for f in again.frames]
    assert first.frames[1].tobytes() != other.frames[1].tobytes()
    # An explicit λ list; frame λ=1/3 equals the matching frame of the evenly spaced run,
    # since frames are independent given the shared noise.
    picked = interpolate(pipe, rooms[0], rooms[1], t=0.5, weights=[1 / 3], seed=1, steps=4)
    assert len(picked.frames) == 1
    assert np.abs(pixels(picked.frames[0]) - pixels(first.frames[1])).max() <= 1.0
    single = interpolate(pipe, rooms[0], rooms[1], t=0.5, weights=0.5, steps=2)
    assert single.weights == [0.5]


@pytest.mark.parametrize("changes", [
    {"diffusion.prediction_type": "v_prediction"},
    {"diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid"},
])
def test_other_parameterisations(tmp_path, rooms, changes):
    pipe = bedgen.load(str(make_tiny_checkpoint(tmp_path / "m", **changes)))
    for method in ("noise", "ddim-inversion"):
        result = interpolate(pipe, rooms[0], rooms[1], t=0.1, frames=3, method=method, steps=5, dtype="fp32")
        assert len(result.frames) == 3 and result.frames[0].size == (16, 16)


def test_consistency_models_interpolate_with_noise_only(tmp_path, rooms):
    write_consistency_layout(tmp_path / "cd")
    pipe = bedgen.load(str(tmp_path / "cd"))
    result = interpolate(pipe, rooms[0], rooms[1], t=0.5, frames=3, seed=4)
    again = interpolate(pipe, rooms[0], rooms[1], t=0.5, frames=3, seed=4)
    assert len(result.frames) == 3 and result.evaluations == 1
    assert [f.tobytes() for f in result.frames] == [f.tobytes() for f in again.frames]
    with pytest.raises(BedgenError, match="use method 'noise'"):
        interpolate(pipe, rooms[0], rooms[1], method="ddim-inversion")


@pytest.mark.parametrize("kwargs, message", [
    ({"t": 0}, r"t must be in \(0, 1\]"),
    ({"t": 1.5}, r"t must be in \(0, 1\]"),
    ({"t": float("nan")}, r"t must be in"),
    ({"t": "half"}, r"t must be a number"),
    ({"weights": [0.5, 1.2]}, r"λ \(interpolation weight\) must be in \[0, 1\]"),
    ({"weights": -0.1}, r"λ .* must be in \[0, 1\]"),
    ({"weights": []}, r"between 1 and 64 weights"),
    ({"frames": 0}, r"frames must be between 1 and 64"),
    ({"method": "linear"}, r"method must be one of noise, ddim-inversion"),
    ({"steps": 0}, r"steps must be between 1 and 100"),
])
def test_out_of_range_controls_are_refused(pipe, rooms, kwargs, message):
    with pytest.raises(BedgenError, match=message):
        interpolate(pipe, rooms[0], rooms[1], **kwargs)


def _encoded(image: Image.Image, fmt: str, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def _bad_inputs() -> dict[str, bytes]:
    png = _encoded(Image.new("RGB", (32, 32), (200, 10, 10)), "PNG")
    return {
        "not an image": b"%PDF-1.4 definitely not pixels",
        "truncated": png[: len(png) // 2],
        "1x1": _encoded(Image.new("RGB", (1, 1)), "PNG"),
        # 20000 x 20000 one-bit PNG: ~50 KB on disk, 400 megapixels once decoded.
        "bomb": _encoded(Image.new("1", (20000, 20000)), "PNG"),
    }


@pytest.mark.parametrize("kind, message", [
    ("not an image", "not an image PIL can read"),
    ("truncated", "truncated or corrupt"),
    ("1x1", "1x1 pixels; it needs at least 8"),
    ("bomb", "too large to decode safely"),
])
def test_bad_uploads_give_clear_errors(pipe, rooms, kind, message):
    with pytest.raises(BedgenError, match=message) as caught:
        interpolate(pipe, rooms[0], _bad_inputs()[kind], frames=2, steps=2)
    assert "image B" in str(caught.value)


def test_missing_file_and_missing_image(pipe, rooms, tmp_path):
    with pytest.raises(BedgenError, match="image A '.*nope.png' does not exist"):
        interpolate(pipe, tmp_path / "nope.png", rooms[1])
    with pytest.raises(BedgenError, match="image B is missing"):
        interpolate(pipe, rooms[0], None)


def test_unusual_modes_are_converted_like_training_data(pipe, rooms):
    red = Image.new("RGB", (32, 32), (200, 30, 30))
    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # all transparent -> white
    gray16 = Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16))  # mode I;16, full white
    assert gray16.mode == "I;16"
    gif = _encoded(red, "GIF", save_all=True, append_images=[Image.new("RGB", (32, 32), (0, 0, 255))])
    inputs = {
        "rgba": _encoded(transparent, "PNG"),
        "16-bit": _encoded(gray16, "PNG"),
        "gray": _encoded(Image.new("L", (40, 30), 255), "PNG"),
        "animated gif": gif,
    }
    for name, data in inputs.items():
        result = interpolate(pipe, data, rooms[1], frames=2, steps=2)
        seen = pixels(result.inputs[0])
        if name == "animated gif":  # the first frame, red
            assert seen[..., 0].mean() > 150 and seen[..., 2].mean() < 80, name
        else:  # white, not black: alpha over white, 16-bit scaled, not clipped
            assert seen.mean() > 250, name


@pytest.mark.slow
def test_cli_writes_frames_strip_and_gif(tiny_checkpoint, rooms, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bedgen", "interpolate", "--model", str(tiny_checkpoint),
           "--image-a", str(rooms[0]), "--image-b", str(rooms[1]), "--t", "0.4", "--frames", "5",
           "--method", "ddim-inversion", "--steps", "4", "--out", str(out)]
    bad_t = [*cmd[:-2], "--t", "2", "--out", str(tmp_path / "bad")]  # the last --t wins
    done, bad = run_together(cmd, bad_t)  # independent processes, started at once
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("frame-*.png")) == [f"frame-{i:02d}.png" for i in range(5)]
    strip = Image.open(out / "strip.png")
    assert strip.height < 40 and strip.width > 7 * 16  # one row: A, 5 frames, B
    gif = Image.open(out / "interpolation.gif")
    assert gif.n_frames == 8  # 5 forth + 3 back
    assert '"timestep": 40' in (out / "interpolation.json").read_text()

    assert bad.returncode == 2 and "t must be in (0, 1]" in bad.stderr
