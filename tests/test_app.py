"""The app through gradio_client, against a real ``python app.py`` process."""

from pathlib import Path

import pytest
from gradio_client import Client
from PIL import Image

from conftest import make_tiny_checkpoint


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def _generate(client, app_server, model=None, seed=0, steps=3, sampler="auto", n=2, trajectory=False):
    model = model or str(Path(app_server.url and app_server.log.parent) / "checkpoints" / "tiny")
    return client.predict(model, seed, steps, sampler, n, trajectory, api_name="/generate")


def test_every_event_has_an_api_name(client):
    endpoints = set(client.view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert {"/generate", "/random_seed", "/refresh_models", "/describe_model"} <= endpoints


def test_generate_returns_seeded_images(client, app_server):
    gallery, trajectory, status = _generate(client, app_server, seed=40, n=3)
    assert [item["caption"] for item in gallery] == ["seed 40", "seed 41", "seed 42"]
    assert all(Image.open(item["image"]).size == (16, 16) for item in gallery)
    assert trajectory == [] and "3 image(s)" in status and "3 steps" in status


def test_same_seed_same_image_through_the_app(client, app_server):
    a = _generate(client, app_server, seed=9, n=1, sampler="ddim")[0][0]["image"]
    b = _generate(client, app_server, seed=9, n=1, sampler="ddim")[0][0]["image"]
    assert Image.open(a).tobytes() == Image.open(b).tobytes()


def test_trajectory_view(client, app_server):
    _, trajectory, _ = _generate(client, app_server, steps=8, n=1, trajectory=True)
    assert len(trajectory) >= 2 and trajectory[0]["caption"] == "step 1"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps"),
        ({"steps": -5}, "steps"),
        ({"steps": 101}, "steps must be between 1 and 100"),
        ({"sampler": "plms"}, "plms"),
        ({"n": 0}, "must be"),
        ({"n": 10_000}, "must be"),
        ({"seed": -1}, "seed"),
        ({"seed": 1.5}, "seed must be a whole number"),
        ({"seed": "abc"}, "seed must be a whole number"),
        ({"steps": "ten"}, "steps must be a whole number"),
        ({"n": None}, "number of images must be a whole number"),
        ({"model": "no such model"}, "'no such model' is neither a local directory nor a Hub id"),
        ({"model": "google/ddpm-ema-bedroom-256"}, "'google/ddpm-ema-bedroom-256' is not in the local cache"),
    ],
)
def test_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, app_server, changes, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        _generate(client, app_server, **changes)
    gallery, _, _ = _generate(client, app_server, n=1)
    assert len(gallery) == 1


def test_new_checkpoints_appear_after_refresh(client, app_server):
    models = app_server.log.parent / "checkpoints"
    make_tiny_checkpoint(models / "fresh", seed=4)
    update = client.predict(api_name="/refresh_models")
    refs = [value for _label, value in update["choices"]]
    assert refs[0] == str(models / "fresh")  # newest local first
    assert refs.index("google/ddpm-ema-bedroom-256") > refs.index(str(models / "tiny"))
    gallery, _, status = _generate(client, app_server, model=str(models / "fresh"), n=1)
    assert len(gallery) == 1 and "fresh" in status


def test_random_seed_is_a_whole_number(client):
    assert float(client.predict(api_name="/random_seed")).is_integer()
