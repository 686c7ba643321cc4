"""The app through gradio_client, against a real ``python app.py`` process."""

from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client
from PIL import Image

from conftest import make_tiny_checkpoint

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time


@pytest.fixture(scope="module")
def client(app_server):
    return Client(app_server.url, verbose=False)


def _generate(client, app_server, model=None, seed=0, steps=3, sampler="auto", n=2, trajectory=False, **extra):
    model = model or str(Path(app_server.url and app_server.log.parent) / "checkpoints" / "tiny")
    return client.predict(model, seed, steps, sampler, n, trajectory, api_name="/generate", **extra)


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


def test_generate_streams_x0_previews_before_the_samples(client, app_server):
    model = str(app_server.log.parent / "checkpoints" / "tiny")
    job = client.submit(model, 4, 16, "ddim", 2, False, 0, api_name="/generate")
    gallery, _, status = job.result()
    *previews, final = job.outputs()  # every update the event streamed, the samples last
    assert final[2] == status and "2 image(s)" in status
    assert len(previews) >= 1
    for preview_gallery, _, preview_status in previews:
        assert "predicted clean images x̂₀" in preview_status
        assert [item["caption"] for item in preview_gallery] == ["seed 4", "seed 5"]
    assert [item["caption"] for item in gallery] == ["seed 4", "seed 5"]


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
        ({"model": "google/ddpm-ema-bedroom-256"}, "'google/ddpm-ema-bedroom-256' is not in the local cache and "
                                                   "offline mode is on.*put a checkpoint folder in checkpoints/"),
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


def test_score_model_is_listed_and_samples_with_steps_and_step_size(client, app_server):
    smld = str(app_server.log.parent / "checkpoints" / "tiny-smld")
    refs = [value for _label, value in client.predict(api_name="/refresh_models")["choices"]]
    assert smld in refs
    gallery, _, status = _generate(client, app_server, model=smld, seed=5, steps=4, n=1)
    assert "langevin, 4 steps" in status
    same, _, _ = _generate(client, app_server, model=smld, seed=5, steps=4, n=1)
    other, _, _ = _generate(client, app_server, model=smld, seed=5, steps=4, n=1, step_size_value=1e-3)
    pixels = [np.asarray(Image.open(g[0]["image"])) for g in (gallery, same, other)]
    assert np.array_equal(pixels[0], pixels[1]) and not np.array_equal(pixels[0], pixels[2])
    _, _, status = _generate(client, app_server, model=smld, steps=3, n=1, sampler="pc")
    assert "pc, 3 steps" in status


@pytest.mark.parametrize("name, status_text", [("tiny-vae", "prior, 1 steps"), ("tiny-ldm", "dpmsolver++, 3 steps")])
def test_vae_and_latent_models_are_listed_and_generate(client, app_server, name, status_text):
    ref = str(app_server.log.parent / "checkpoints" / name)
    refs = [value for _label, value in client.predict(api_name="/refresh_models")["choices"]]
    assert ref in refs
    gallery, _, status = _generate(client, app_server, model=ref, seed=3, steps=3, n=2)
    assert status_text in status and len(gallery) == 2
    again, _, _ = _generate(client, app_server, model=ref, seed=3, steps=3, n=2)
    pixels = [np.asarray(Image.open(g[0]["image"])) for g in (gallery, again)]
    assert np.array_equal(pixels[0], pixels[1]) and pixels[0].shape == (16, 16, 3)


@pytest.mark.parametrize("step_size, message", [(-1, "step size must be a positive number"),
                                                ("big", "step size must be a positive number")])
def test_bad_step_size_is_a_clear_error(client, app_server, step_size, message):
    smld = str(app_server.log.parent / "checkpoints" / "tiny-smld")
    with pytest.raises(Exception, match=message):
        _generate(client, app_server, model=smld, n=1, step_size_value=step_size)
    with pytest.raises(Exception, match="score models"):
        _generate(client, app_server, n=1, step_size_value=0.1)  # the DDPM
    assert len(_generate(client, app_server, model=smld, steps=2, n=1)[0]) == 1


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
    assert "1 frame(s) at λ = 0.25" in status  # the slider's λ, computed exactly
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
    ({"method": "blend"}, "Method must be one of the listed choices, got .blend."),
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
    assert "Nearest of 24 indexed images" in status
    # The app's index has a random AlexNet backbone: the distance is shown, no verdict.
    assert "(non-standard LPIPS weights: not comparable)" in status and "memorised" not in status


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


# --- Evaluate tab ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(app_server):
    """Statistics of the indexed rooms at the tiny model's 16 px, with the app's Inception file."""
    from bedgen.evaluation.metrics import compute_reference_stats

    root = app_server.log.parent
    stats = compute_reference_stats(str(root / "rooms"), 16, inception_weights=root / "inception-random.pth",
                                    feature_layer="64", batch_size=12)
    return stats.save(root / "references" / "rooms-16.npz")


def _evaluate(client, app_server, reference, model="tiny", n=6, metrics=("fid",), steps=2, seed=0):
    model = str(app_server.log.parent / "checkpoints" / model) if "/" not in model else model
    root = app_server.log.parent / "references"
    name = str(reference.relative_to(root)) if isinstance(reference, Path) and reference.is_relative_to(root) \
        else str(reference)
    import json

    summary, result = client.predict(model, name, n, steps, "auto", list(metrics), seed, api_name="/evaluate")
    return summary, json.loads(result)


def test_evaluate_runs_fid_and_stores_it_in_the_checkpoint(client, app_server, reference):
    import json

    _, references = client.predict(api_name="/refresh_references")
    assert [value for _label, value in references["choices"]][0] == "rooms-16.npz"
    summary, result = _evaluate(client, app_server, reference, metrics=("fid", "kid", "is"))
    assert "**FID" in summary and "6 samples" in summary and "stored in the checkpoint's bedgen.json" in summary
    assert result["num_samples"] == 6 and result["fid"] > 0 and "kid" in result and "is" in result
    stored = json.loads((app_server.log.parent / "checkpoints" / "tiny" / "bedgen.json").read_text())["metrics"]
    assert any(m.get("fid") == result["fid"] for m in stored)
    again = _evaluate(client, app_server, reference, metrics=("fid", "kid", "is"))[1]
    assert again["fid"] == pytest.approx(result["fid"], rel=1e-6)  # same seeds, same number


@pytest.mark.parametrize("case, message", [
    ("n=1", "number of samples must be between 2 and"),
    ("unknown metric", "Metrics must be one of the listed choices"),
    ("no metric", "no metric asked for"),
    ("missing", "does not exist"),
    ("outside", "outside the references folder"),
    ("no reference", "choose a reference"),
    ("other resolution", "holds statistics of 24 px images but the model makes 16 px"),
])
def test_evaluate_bad_input_is_a_clear_error_and_the_app_keeps_serving(client, app_server, reference, case,
                                                                       message, tmp_path):
    kwargs = {}
    if case == "n=1":
        kwargs["n"] = 1
    elif case == "unknown metric":
        kwargs["metrics"] = ("fid", "lpips")
    elif case == "no metric":
        kwargs["metrics"] = ()
    elif case == "missing":
        kwargs["reference"] = reference.with_name("gone.npz")
    elif case == "outside":
        kwargs["reference"] = "../inception-random.pth"
    elif case == "no reference":
        kwargs["reference"] = ""
    elif case == "other resolution":
        from bedgen.evaluation.metrics import compute_reference_stats

        root = app_server.log.parent
        kwargs["reference"] = compute_reference_stats(
            str(root / "rooms"), 24, inception_weights=root / "inception-random.pth", feature_layer="64",
            batch_size=12).save(reference.with_name("rooms-24.npz"))
    call = {"reference": reference, **kwargs}
    with pytest.raises(Exception, match=message):
        _evaluate(client, app_server, **call)
    assert _evaluate(client, app_server, reference, n=2)[1]["num_samples"] == 2


def test_sweep_tables_and_plots_found_under_the_sweeps_folder(client, app_server):
    import yaml

    from bedgen.sweeps.report import write_report
    from bedgen.sweeps.sweep import load_sweep, run_sweep

    root = app_server.log.parent
    spec_file = root / "lr.yaml"
    spec_file.write_text(yaml.safe_dump({
        "name": "lr", "data": str(root / "rooms"), "steps": 2, "repeats": 1,
        "base": {"preset": "tiny", "resolution": 16, "unet.block_out_channels": [8, 16],
                 "unet.down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
                 "unet.up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "unet.norm_num_groups": 4,
                 "diffusion.num_train_timesteps": 100, "train.batch_size": 4, "train.warmup_steps": 0,
                 "train.preview_every": 0, "train.preview_images": 0, "train.log_every": 1,
                 "train.mixed_precision": "no"},
        "grid": {"train.lr": [1e-3, 3e-3]},
    }))
    out = root / "sweeps" / "lr"
    run_sweep(load_sweep(spec_file), out, parallel=2)
    write_report(out)  # as `bedgen sweep` does after its runs
    choices = client.predict(api_name="/refresh_sweeps")["choices"]
    assert "lr" in [value for _label, value in choices]
    table, plots = client.predict("lr", api_name="/sweep_report")
    assert "train.lr" in table and table.count("\n|") >= 3  # header, rule, two configurations
    assert len(plots) >= 2 and all(Image.open(p["image"]).size[0] >= 400 for p in plots)
    with pytest.raises(Exception, match="Sweep must be one of the listed choices"):  # only the listed sweeps
        client.predict("..", api_name="/sweep_report")


def test_sweep_view_is_confined_to_its_folder(tmp_path):
    from bedgen.core.errors import BedgenError
    from bedgen.ui.evaluate import show_sweep

    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "sweep.json").write_text("{}")
    (tmp_path / "sweeps").mkdir()
    with pytest.raises(BedgenError, match="not a sweep folder under"):
        show_sweep(tmp_path / "sweeps", "../outside")
    with pytest.raises(BedgenError, match="choose a sweep"):
        show_sweep(tmp_path / "sweeps", "")


def test_an_empty_index_choice_asks_for_one_of_the_listed_indexes(client, app_server):
    room = app_server.log.parent / "rooms" / "room-00001.png"
    with pytest.raises(Exception) as raised:
        _neighbours(client, "", room)
    assert "choose an index in the Index list" in str(raised.value) and "build one" not in str(raised.value)


# --- junk through the raw HTTP route ------------------------------------------------------------


def _raw_call(url: str, api: str, data: list) -> tuple[str, object]:
    """POST /gradio_api/call/<api> as any HTTP client would, then read the result stream."""
    import json
    import re

    import httpx

    with httpx.Client(base_url=url, timeout=120) as http:
        posted = http.post(f"gradio_api/call/{api}", json={"data": data})
        posted.raise_for_status()
        stream = http.get(f"gradio_api/call/{api}/{posted.json()['event_id']}").text
    event, payload = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, flags=re.M)[-1]
    return event, json.loads(payload)


def test_a_megabyte_of_junk_is_refused_in_one_short_line_and_logged_in_one(app_server):
    junk = "€x" * 2**19  # a megabyte, as a model name, a seed, a sampler, a metric, a reference and a data folder
    model = str(app_server.log.parent / "checkpoints" / "tiny")
    calls = [
        ("generate", [junk, 0, 2, "auto", 1, False, 0]),
        ("generate", [model, junk, 2, "auto", 1, False, 0]),
        ("generate", [model, 0, 2, junk, 1, False, 0]),  # a choice Gradio itself would refuse, quoting it whole
        ("evaluate", [model, None, 4, 2, "auto", [junk], 0]),
        ("evaluate", [model, junk, 4, 2, "auto", ["fid"], 0]),
        ("train_start", [junk, "tiny", 16, 2, 4, 1e-3, "adamw", "junk-run", ""]),
    ]
    log_before = app_server.log.stat().st_size
    for api, data in calls:
        event, message = _raw_call(app_server.url, api, data)
        text = message["error"] if isinstance(message, dict) else str(message)
        assert event == "error", (api, text[:200])
        assert len(text) < 500 and "€x" * 50 not in text, (api, text[:600])  # quoted values are clipped
    with open(app_server.log, encoding="utf-8", errors="replace") as log:
        log.seek(log_before)
        written = log.read()
    assert "Traceback" not in written and len(written) < 500 * len(calls), written[:2000]
    assert len([line for line in written.splitlines() if "refused" in line]) == len(calls), written[:2000]
    gallery, _, _ = _generate(client=Client(app_server.url, verbose=False), app_server=app_server, n=1)
    assert len(gallery) == 1
