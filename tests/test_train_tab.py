"""The Train tab through gradio_client: start a run, watch it, stop it, sample from it."""

import time

import pytest
import torch
from gradio_client import Client

from bedgen.core.device import training_precision

from conftest import AppProcess, make_tiny_checkpoint, save_random_backbone
from synthetic import write_rooms

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time


@pytest.fixture(scope="module")
def train_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-app")
    write_rooms(root / "data" / "rooms", 40, size=24)
    (root / "outside").mkdir()
    write_rooms(root / "outside", 4, size=24)
    write_rooms(root / "data" / "my-style", 3, size=40, seed=5)
    make_tiny_checkpoint(root / "checkpoints" / "ft-source", resolution=32)
    with AppProcess(
        {"BEDGEN_CHECKPOINTS": str(root / "checkpoints"), "BEDGEN_DATA_ROOTS": str(root / "data"),
         "BEDGEN_DEFAULT_MODEL": "google/ddpm-ema-bedroom-256", "HF_HUB_OFFLINE": "1",
         "BEDGEN_LPIPS_WEIGHTS": str(save_random_backbone(root / "alexnet-random.safetensors"))},
        cwd=root,
    ) as app:
        yield app, root


def _start(client, data, name, steps=100000, resolution=16):
    return client.predict(data, "tiny", resolution, steps, 8, 1e-3, "adamw", name, api_name="/train_start")


def _wait_for(client, predicate, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.predict(api_name="/train_status")
        if predicate(status):
            return status
        time.sleep(1)
    raise AssertionError(f"timed out; last status: {status[0]}")


def test_start_watch_stop_then_generate_from_the_run(train_app):
    app, root = train_app
    client = Client(app.url, verbose=False)
    assert "starting" in _start(client, str(root / "data" / "rooms"), "tab-run")
    with pytest.raises(Exception, match="already training"):
        _start(client, str(root / "data" / "rooms"), "second-run")
    # progress streams in: the loss curve grows while the run trains
    status = _wait_for(client, lambda s: "step " in s[0] and len(s[1]["data"]) >= 2)
    assert "loss" in status[0] and "img/s" in status[0]
    mode, reason = training_precision("auto")  # the path that explains the img/s, and why
    device = "cuda" if torch.cuda.is_available() else "cpu"
    assert f"precision: {device}/{'fp32' if mode == 'no' else mode}: {reason}" in status[0]
    assert "stopping" in client.predict(api_name="/train_stop")
    status = _wait_for(client, lambda s: "stopped" in s[0] and "latest checkpoint" in s[0])
    run = str(root / "checkpoints" / "tab-run")
    assert run in str(status[3])  # the Generate tab's model list now offers the run
    gallery, _, text = client.predict(run, 0, 3, "auto", 1, False, api_name="/generate")
    assert len(gallery) == 1 and "tab-run" in text


@pytest.mark.parametrize(
    "data, name, message",
    [
        ("../outside", "r1", "inside the data roots"),
        ("/etc", "r2", "inside the data roots"),
        ("not a dataset", "r3", "neither a folder under the data roots nor a Hub dataset id"),
        ("DATA", "../escape", "run name"),
        ("DATA", "existing-run", "already exists"),
    ],
)
def test_bad_train_requests_are_refused(train_app, data, name, message):
    app, root = train_app
    client = Client(app.url, verbose=False)
    (root / "checkpoints" / "existing-run").mkdir(parents=True, exist_ok=True)
    data = str(root / "data" / "rooms") if data == "DATA" else data
    if data == "../outside":
        data = str(root / "data" / ".." / "outside")
    with pytest.raises(Exception, match=message):
        _start(client, data, name)


def test_ldm_presets_take_an_autoencoder_confined_to_the_checkpoints(train_app, tmp_path):
    from bedgen.core.errors import BedgenError
    from bedgen.ui.settings import AppSettings
    from bedgen.ui.train import check_request

    app, root = train_app
    data = str(root / "data" / "rooms")
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception, match="trains on autoencoder latents"):
        client.predict(data, "ldm-tiny", 32, 10, 8, 1e-3, "adamw", "ldm-1", "", api_name="/train_start")
    with pytest.raises(Exception, match="inside the checkpoints folder"):
        client.predict(data, "ldm-tiny", 32, 10, 8, 1e-3, "adamw", "ldm-2", "../data", api_name="/train_start")
    with pytest.raises(Exception, match="ldm presets only"):
        client.predict(data, "tiny", 32, 10, 8, 1e-3, "adamw", "ldm-3", "org/vae", api_name="/train_start")
    settings = AppSettings(checkpoints=root / "checkpoints", default_model="x", data_roots=(root / "data",))
    (root / "checkpoints" / "my-ae").mkdir(parents=True, exist_ok=True)
    request = check_request(settings, data, "ldm-tiny", 32, 10, 8, 1e-3, "adamw", "ldm-4", "my-ae")
    assert request.autoencoder == str((root / "checkpoints" / "my-ae").resolve())
    assert check_request(settings, data, "ldm-kl", 64, 10, 8, 1e-3, "adamw", "ldm-5", "org/vae").autoencoder == "org/vae"
    with pytest.raises(BedgenError, match="neither a checkpoint"):
        check_request(settings, data, "ldm-kl", 64, 10, 8, 1e-3, "adamw", "ldm-6", "no such thing")


def test_finetune_mode_runs_and_shows_the_report(train_app):
    app, root = train_app
    client = Client(app.url, verbose=False)
    _wait_for(client, lambda s: "stopped" in s[0] or "finished" in s[0] or "No run" in s[0])  # one run at a time
    text = client.predict("ft-source", str(root / "data" / "my-style"), 1.0, 4, 3, 2, 1e-4, "ft-run",
                          api_name="/finetune_start")
    assert "class images" in text
    status = _wait_for(client, lambda s: "LPIPS to the nearest instance" in s[0])
    assert "mean pairwise LPIPS" in status[0] and "ft-run" in status[0]
    run = root / "checkpoints" / "ft-run"
    assert len(list((run / "class-images").glob("*.png"))) == 4
    assert str(run) in str(status[3])  # listed for the Generate tab
    gallery, _, _ = client.predict(str(run), 0, 3, "auto", 1, False, api_name="/generate")
    assert len(gallery) == 1


@pytest.mark.parametrize(
    "model, instances, weight, message",
    [
        ("../data", "data/my-style", 1.0, "inside the checkpoints folder"),
        ("../ft-source", "data/my-style", 1.0, "neither a checkpoint"),
        ("/etc", "data/my-style", 1.0, "inside the checkpoints folder"),
        ("ft-source", "outside", 1.0, "inside the data roots"),
        ("ft-source", "data/my-style", -1, "prior weight"),
        ("", "data/my-style", 1.0, "give the model to fine-tune"),
    ],
)
def test_bad_finetune_requests_are_refused(train_app, model, instances, weight, message):
    app, root = train_app
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(model, str(root / instances), weight, 4, 3, 2, 1e-4, "ft-bad", api_name="/finetune_start")
    assert not (root / "checkpoints" / "ft-bad").exists()


def test_distill_mode_trains_a_student_that_generates_in_two_steps(train_app):
    app, root = train_app
    client = Client(app.url, verbose=False)
    _wait_for(client, lambda s: "stopped" in s[0] or "finished" in s[0] or "No run" in s[0])  # one run at a time
    text = client.predict("ft-source", str(root / "data" / "my-style"), 4, 2, 2e-5, "student-run",
                          api_name="/distill_start")
    assert "distilling" in text
    status = _wait_for(client, lambda s: "finished" in s[0] and "student-run" in s[0])
    run = root / "checkpoints" / "student-run"
    assert str(run) in str(status[3])  # listed for the Generate tab
    gallery, _, text = client.predict(str(run), 0, 2, "consistency", 1, False, api_name="/generate")
    assert len(gallery) == 1 and "consistency, 2 steps" in text


@pytest.mark.parametrize(
    "teacher, data, message",
    [
        ("../data", "data/my-style", "inside the checkpoints folder"),
        ("/etc", "data/my-style", "inside the checkpoints folder"),
        ("ft-source", "outside", "inside the data roots"),
        ("", "data/my-style", "give the teacher to distil"),
    ],
)
def test_bad_distill_requests_are_refused(train_app, teacher, data, message):
    app, root = train_app
    client = Client(app.url, verbose=False)
    with pytest.raises(Exception, match=message):
        client.predict(teacher, str(root / data), 4, 2, 2e-5, "student-bad", api_name="/distill_start")
    assert not (root / "checkpoints" / "student-bad").exists()
