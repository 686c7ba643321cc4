"""The app through gradio_client, against a real ``python app.py`` process."""

from pathlib import Path

import numpy as np
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


# --- Interpolate tab ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_rooms(tmp_path_factory):
    from synthetic import write_rooms

    return write_rooms(tmp_path_factory.mktemp("upload"), 2, size=40, seed=11)


def _interpolate(client, app_server, a, b, t=0.5, frames=4, method="noise", steps=3, seed=0, weight=0.5):
    from gradio_client import handle_file

    model = str(app_server.log.parent / "checkpoints" / "tiny")
    a = handle_file(str(a)) if a is not None else None
    b = handle_file(str(b)) if b is not None else None
    return client.predict(model, a, b, t, frames, method, steps, seed, weight, api_name="/interpolate")


def test_interpolate_returns_frames_gif_and_strip(client, app_server, two_rooms):
    frames, middle, gif, strip, status = _interpolate(client, app_server, *two_rooms, frames=5, weight=0.25)
    assert [f["caption"] for f in frames] == ["λ = 0.00", "λ = 0.25", "λ = 0.50", "λ = 0.75", "λ = 1.00"]
    assert Image.open(frames[0]["image"]).size == (16, 16)
    # The middle view shows the frame nearest the λ slider (0.25 here).
    assert Image.open(middle).tobytes() == Image.open(frames[1]["image"]).convert("RGB").tobytes()
    assert Image.open(gif).n_frames == 8
    assert Image.open(strip).width > 7 * 16
    assert "noise, t = 0.5 (step 50)" in status


def test_moving_the_weight_slider_recomputes_the_middle_frame(client, app_server, two_rooms):
    from gradio_client import handle_file

    model = str(app_server.log.parent / "checkpoints" / "tiny")
    args = (model, handle_file(str(two_rooms[0])), handle_file(str(two_rooms[1])), 0.5)
    quarter, status = client.predict(*args, 0.25, "ddim-inversion", 3, 0, api_name="/interpolate_weight")
    frames, *_ = _interpolate(client, app_server, *two_rooms, frames=5, method="ddim-inversion")
    assert "1 frame(s)" in status
    difference = np.abs(np.asarray(Image.open(quarter), float) - np.asarray(Image.open(frames[1]["image"]).convert("RGB"), float))
    assert difference.max() <= 1.0


def test_use_last_generated_image(client, app_server):
    _generate(client, app_server, seed=3, n=2)
    # Gradio clients keep no UI state between calls, so the gallery is passed in explicitly.
    gallery, _, _ = _generate(client, app_server, seed=3, n=2)
    from gradio_client import handle_file

    value = [{"image": handle_file(item["image"]), "caption": item["caption"]} for item in gallery]
    picked = client.predict(value, api_name="/use_generated_a")
    assert Image.open(picked).tobytes() == Image.open(gallery[0]["image"]).convert("RGB").tobytes()


@pytest.mark.parametrize("changes, message", [
    ({"t": 0}, r"t must be in \(0, 1\]"),
    ({"t": 3}, r"t must be in \(0, 1\]"),
    ({"frames": 1}, "frames must be between 2 and 16"),
    ({"method": "blend"}, "not in the list of choices"),  # gradio validates radio choices
    ({"b": None}, "upload two images"),
    ({"b": "text"}, "image B is not an image PIL can read"),
])
def test_interpolate_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, app_server, two_rooms, tmp_path, changes, message):
    kwargs = {"a": two_rooms[0], "b": two_rooms[1], **changes}
    if kwargs["b"] == "text":
        kwargs["b"] = tmp_path / "notes.png"
        kwargs["b"].write_text("not pixels")
    with pytest.raises(Exception, match=message):
        _interpolate(client, app_server, **kwargs)
    frames, *_ = _interpolate(client, app_server, *two_rooms, frames=2)
    assert len(frames) == 2


def test_interpolate_weight_out_of_range(client, app_server, two_rooms):
    from gradio_client import handle_file

    model = str(app_server.log.parent / "checkpoints" / "tiny")
    with pytest.raises(Exception, match=r"λ \(interpolation weight\) must be in \[0, 1\]"):
        client.predict(model, handle_file(str(two_rooms[0])), handle_file(str(two_rooms[1])), 0.5, 1.5,
                       "noise", 3, 0, api_name="/interpolate_weight")


# --- Nearest neighbours tab -----------------------------------------------------------------


def _index(app_server) -> str:
    return str(app_server.log.parent / "indexes" / "rooms")


def _neighbours(client, index, query, k=3):
    from gradio_client import handle_file

    return client.predict(index, handle_file(str(query)) if query is not None else None, k, api_name="/neighbours")


def test_indexes_are_listed(client, app_server):
    update = client.predict(api_name="/refresh_indexes")
    assert [value for _label, value in update["choices"]] == [_index(app_server)]


def test_an_indexed_image_finds_itself_first(client, app_server):
    room = app_server.log.parent / "rooms" / "room-00007.png"
    gallery, table, status = _neighbours(client, _index(app_server), room, k=4)
    assert [item["caption"] for item in gallery][0] == "query" and len(gallery) == 5
    assert gallery[1]["caption"].startswith("#1 · LPIPS 0.0000")
    rows = table["data"]
    assert [row[0] for row in rows] == [1, 2, 3, 4] and rows[0][1] == "room-00007.png"
    assert rows[0][2] < 1e-4 < rows[1][2]
    assert "Possible memorised copy" in status and "Nearest of 24 indexed images" in status


@pytest.mark.parametrize("case, message", [
    ("k=0", "k must be between 1 and 20"),
    ("k=25", "k must be between 1 and 20"),
    ("no index", "choose an index"),
    ("outside", "is not under the app's index folder"),
    ("missing", "does not exist|no index"),
    ("no query", "upload a query image"),
    ("not an image", "query image is not an image PIL can read"),
])
def test_neighbours_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, app_server, tmp_path, case, message):
    room = app_server.log.parent / "rooms" / "room-00001.png"
    index, query, k = _index(app_server), room, 3
    if case.startswith("k="):
        k = int(case[2:])
    elif case == "no index":
        index = ""
    elif case == "outside":
        index = str(tmp_path)
    elif case == "missing":
        index = str(app_server.log.parent / "indexes" / "gone")
    elif case == "no query":
        query = None
    else:
        query = tmp_path / "query.png"
        query.write_bytes(b"GIF89a but not really")
    with pytest.raises(Exception, match=message):
        _neighbours(client, index, query, k)
    gallery, _, _ = _neighbours(client, _index(app_server), room, k=2)
    assert len(gallery) == 3
