"""Attacks on the running app through gradio_client: bad input to every endpoint, load, public mode.

Every bad request must come back as a clear error (or, for unusual but valid images,
as a result), and the next valid request must still succeed: nothing a client sends
takes the app down or leaves it broken.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import AppProcess, build_room_index, make_tiny_checkpoint
from synthetic import room, write_rooms

# --- inputs the tests write ------------------------------------------------------------------


def _png_header_bomb(path: Path, side: int = 20_000) -> Path:
    """A valid PNG signature + IHDR claiming side x side RGB pixels, a tiny zlib stream: decoding
    it would need 1.2 GB; a careful reader refuses it from the header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))
    return path


def _room(seed: int = 0, size: int = 40) -> Image.Image:
    import random

    return room(random.Random(seed), size)


def write_inputs(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    (folder / "text.png").write_bytes(b"this is not an image, whatever its name says\n" * 10)
    files["not an image"] = folder / "text.png"
    buffer = io.BytesIO()
    _room(1).save(buffer, format="JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    files["truncated JPEG"] = folder / "truncated.jpg"
    Image.new("RGB", (1, 1), "red").save(folder / "one.png")
    files["1x1"] = folder / "one.png"
    files["20000x20000 header bomb"] = _png_header_bomb(folder / "bomb.png")
    rgba = _room(2).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(folder / "rgba.png")
    files["RGBA"] = folder / "rgba.png"
    Image.fromarray((np.asarray(_room(3).convert("L"), dtype=np.uint16) * 257)).save(folder / "sixteen.png")
    files["16-bit PNG"] = folder / "sixteen.png"
    _room(4).convert("L").save(folder / "gray.png")
    files["grayscale"] = folder / "gray.png"
    frames = [_room(5 + i) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    files["animated GIF"] = folder / "anim.gif"
    _room(9).save(folder / "good.png")
    files["good"] = folder / "good.png"
    return files


BAD_IMAGES = {  # kind -> what the error must say
    "not an image": "not an image",
    "truncated JPEG": "(?i)truncated",
    "1x1": "at least 8 pixels",
    "20000x20000 header bomb": "megapixel limit|too large to decode",
}
ODD_BUT_VALID = ["RGBA", "16-bit PNG", "grayscale", "animated GIF"]


@pytest.fixture(scope="module")
def hard_app(tmp_path_factory):
    """One app for the attacks and the load test (an app start costs seconds of imports): tight
    limits, one request at a time, a queue of 8 and a one-model cache (the three tiny-N models
    of the load test go through it), and a token in its environment that must never be logged."""
    root = tmp_path_factory.mktemp("hardening")
    models = root / "checkpoints"
    make_tiny_checkpoint(models / "tiny")
    for i in range(3):
        make_tiny_checkpoint(models / f"tiny-{i}", seed=i)
    build_room_index(root)
    (root / "secret").mkdir()
    (root / "secret" / "passwords.txt").write_text("hunter2\n")
    with AppProcess(
        {"BEDGEN_CHECKPOINTS": str(models), "BEDGEN_INDEXES": str(root / "indexes"),
         "BEDGEN_REFERENCES": str(root / "references"), "BEDGEN_SWEEPS": str(root / "sweeps"),
         "BEDGEN_DEFAULT_MODEL": str(models / "tiny"), "BEDGEN_MAX_IMAGES": "4", "BEDGEN_MAX_STEPS": "50",
         "BEDGEN_MAX_UPLOAD_MB": "1", "BEDGEN_DATA_ROOTS": str(root / "data"), "HF_HUB_OFFLINE": "1",
         "BEDGEN_CONCURRENCY": "1", "BEDGEN_QUEUE_SIZE": "8", "BEDGEN_MODEL_CACHE": "1",
         "HF_TOKEN": "hf_secret_token_never_logged"},
        cwd=root,
    ) as app:
        yield app, root, write_inputs(root / "inputs")


def _valid_generate(client: Client, model: str) -> None:
    gallery, _, text = client.predict(model, 1, 2, "auto", 1, False, api_name="/generate")
    assert len(gallery) == 1 and "image(s) from" in text


def _expect_error(call, pattern: str) -> None:
    with pytest.raises(Exception, match=pattern):
        call()


# --- bad input, endpoint by endpoint ---------------------------------------------------------


@pytest.mark.slow
def test_generate_refuses_bad_numbers_and_refs_and_keeps_serving(hard_app):
    app, root, _ = hard_app
    client = Client(app.url, verbose=False)
    model = str(root / "checkpoints" / "tiny")
    cases = [  # (model, seed, steps, sampler, images) -> error
        ((model, 1, 10**9, "auto", 1), "steps must be"),
        ((model, 1, 2, "auto", 10**6), "number of images must be"),
        ((model, -5, 2, "auto", 1), "seed"),
        ((model, 1, -3, "auto", 1), "steps must be"),
        ((model, 1, "abc", "auto", 1), "steps must be a whole number"),
        ((model, 1, "nan", "auto", 1), "steps must be"),
        ((model, 1, "1e400", "auto", 1), "steps must be"),
        ((model, 1, 2.5, "auto", 1), "steps must be a whole number"),
        ((model, 1, 2, "auto", 5), "number of images must be"),  # over BEDGEN_MAX_IMAGES=4, beyond the slider
        (("../../secret", 1, 2, "auto", 1), "neither a local directory nor a Hub id|not a bedgen|no model"),
        ((str(root / "secret"), 1, 2, "auto", 1), "secret"),
        (("no-such-org/no-such-model", 1, 2, "auto", 1), "no-such-org/no-such-model"),
        (("", 1, 2, "auto", 1), "choose a model"),
        ((model, 1, 2, "blend", 1), "blend"),
    ]
    for args, pattern in cases:
        _expect_error(lambda: client.predict(*args, False, api_name="/generate"), pattern)
        _valid_generate(client, model)


def _interpolate(client, model, a, b, **changes):
    args = dict(t=0.5, frames=3, method="noise", steps=2, seed=0, weight=0.5)
    args.update(changes)
    return client.predict(model, handle_file(str(a)) if a else None, handle_file(str(b)) if b else None,
                          args["t"], args["frames"], args["method"], args["steps"], args["seed"], args["weight"],
                          api_name="/interpolate")


@pytest.mark.slow
def test_interpolate_refuses_bad_images_and_numbers_and_accepts_odd_valid_ones(hard_app):
    app, root, files = hard_app
    client = Client(app.url, verbose=False)
    model = str(root / "checkpoints" / "tiny")
    good = files["good"]
    for kind, pattern in BAD_IMAGES.items():
        _expect_error(lambda: _interpolate(client, model, files[kind], good), pattern)
        _valid_generate(client, model)
    for kind in ODD_BUT_VALID:
        frames = _interpolate(client, model, files[kind], good)[0]
        assert len(frames) == 3, kind
    for changes, pattern in [({"t": 7}, "t"), ({"t": "abc"}, "t"), ({"frames": 10**6}, "frames"),
                             ({"frames": -1}, "frames"), ({"steps": 10**9}, "steps"), ({"seed": -1}, "seed"),
                             ({"method": "blend"}, "blend")]:
        _expect_error(lambda: _interpolate(client, model, good, good, **changes), pattern)
        _valid_generate(client, model)
    _expect_error(lambda: _interpolate(client, model, None, good), "upload two images")
    _expect_error(lambda: _interpolate(client, "../../etc", good, good), "etc")
    _valid_generate(client, model)


@pytest.mark.slow
def test_interpolate_weight_refuses_bad_input(hard_app):
    app, root, files = hard_app
    client = Client(app.url, verbose=False)
    model = str(root / "checkpoints" / "tiny")
    good = str(files["good"])

    def weight(a, value=0.5, steps=2):
        return client.predict(model, handle_file(a), handle_file(good), 0.5, value, "noise", steps, 0,
                              api_name="/interpolate_weight")

    _expect_error(lambda: weight(str(files["not an image"])), "not an image")
    _expect_error(lambda: weight(good, value="abc"), "weight|λ")
    _expect_error(lambda: weight(good, steps=10**9), "steps")
    image, _ = weight(good)
    assert Path(image).is_file()


@pytest.mark.slow
def test_neighbours_refuses_bad_queries_indexes_and_k(hard_app):
    app, root, files = hard_app
    client = Client(app.url, verbose=False)
    index = str(root / "indexes" / "rooms")

    def search(query, index_name=index, k=3):
        return client.predict(index_name, handle_file(str(query)) if query else None, k, api_name="/neighbours")

    for kind, pattern in BAD_IMAGES.items():
        _expect_error(lambda: search(files[kind]), pattern)
    for kind in ODD_BUT_VALID:
        gallery, _, _ = search(files[kind])
        assert len(gallery) == 4, kind  # the query + 3 neighbours
    for name in ["../../secret", str(root / "secret"), "../indexes/rooms/..", "no-such-index"]:
        _expect_error(lambda: search(files["good"], index_name=name), "index")
    for k in [0, -1, 10**6, "abc"]:
        _expect_error(lambda: search(files["good"], k=k), "k must be")
    _expect_error(lambda: search(None), "upload a query image")
    gallery, _, _ = search(files["good"])
    assert len(gallery) == 4


@pytest.mark.slow
def test_evaluate_and_sweep_report_refuse_traversal_and_bad_numbers(hard_app):
    app, root, _ = hard_app
    client = Client(app.url, verbose=False)
    model = str(root / "checkpoints" / "tiny")

    def evaluate(reference="../secret/passwords.txt", n=4, steps=2, seed=0, model_ref=model):
        return client.predict(model_ref, reference, n, steps, "auto", ["fid"], seed, api_name="/evaluate")

    for reference in ["../secret/passwords.txt", str(root / "secret" / "passwords.txt"), "/etc/passwd", ""]:
        _expect_error(lambda: evaluate(reference=reference), "reference")
    (root / "references").mkdir(exist_ok=True)
    # a reference that passes the folder check, so that the model ref is what gets refused
    (root / "references" / "junk.npz").write_bytes(b"not statistics")
    for changes, pattern in [({"n": 10**9}, "number of samples"), ({"n": 1}, "number of samples"),
                             ({"steps": -1}, "steps"), ({"seed": -4}, "seed"),
                             ({"model_ref": "x/../../y", "reference": "junk.npz"}, r"'x/\.\./\.\./y' is neither")]:
        _expect_error(lambda: evaluate(**changes), pattern)
    for sweep in ["../secret", "/etc", "no-such-sweep"]:
        # gradio checks dropdown values against the choices (the sweeps under BEDGEN_SWEEPS)
        _expect_error(lambda: client.predict(sweep, api_name="/sweep_report"), "Sweep must be one of the listed choices")
    _valid_generate(client, model)


@pytest.mark.slow
def test_uploads_over_the_size_limit_are_refused(hard_app, tmp_path):
    app, root, _ = hard_app
    client = Client(app.url, verbose=False)
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (1024, 1024, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 1_000_000  # over BEDGEN_MAX_UPLOAD_MB=1
    index = str(root / "indexes" / "rooms")
    _expect_error(lambda: client.predict(index, handle_file(str(big)), 3, api_name="/neighbours"),
                  "(?i)size|large|limit")
    _valid_generate(client, str(root / "checkpoints" / "tiny"))


@pytest.mark.slow
def test_describe_model_and_gallery_helpers_survive_junk(hard_app):
    app, root, _ = hard_app
    client = Client(app.url, verbose=False)
    for junk in ["../../secret", "", "a" * 600]:
        text = client.predict(junk, api_name="/describe_model")
        assert isinstance(text, str)
    assert client.predict([], api_name="/use_generated_a") is None
    _valid_generate(client, str(root / "checkpoints" / "tiny"))


@pytest.mark.slow
def test_no_secret_reaches_the_log(hard_app):
    app, _, _ = hard_app
    log = app.log.read_text()
    assert "hf_secret_token_never_logged" not in log and "hunter2" not in log


# --- load --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_twenty_concurrent_generates_succeed_or_are_cleanly_refused(hard_app):
    app, root, _ = hard_app
    models = root / "checkpoints"

    def one(i: int):
        client = Client(app.url, verbose=False)
        try:
            gallery, _, _ = client.predict(str(models / f"tiny-{i % 3}"), i, 20, "auto", 2, False,
                                           api_name="/generate")
            return "ok" if len(gallery) == 2 else f"wrong count {len(gallery)}"
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            return f"refused: {e}"

    with ThreadPoolExecutor(20) as pool:
        outcomes = list(pool.map(one, range(20)))
    ok = outcomes.count("ok")
    refused = [o for o in outcomes if o != "ok"]
    assert ok >= 8, outcomes  # the queue holds 8 and one runs: at least that many are served
    assert all("queue" in o.lower() and "full" in o.lower() for o in refused), refused
    # three models through a one-model cache: evicted, reloaded, and the app is still fine
    gallery, _, _ = Client(app.url, verbose=False).predict(str(models / "tiny-1"), 0, 2, "auto", 1, False,
                                                           api_name="/generate")
    assert len(gallery) == 1


# --- public mode --------------------------------------------------------------------------------


def _public_app(root: Path, **env: str) -> AppProcess:
    models = root / "checkpoints"
    if not (models / "tiny").exists():
        make_tiny_checkpoint(models / "tiny")
        write_rooms(root / "data" / "rooms", 4, size=24)
    return AppProcess({"BEDGEN_CHECKPOINTS": str(models), "BEDGEN_DEFAULT_MODEL": str(models / "tiny"),
                       "BEDGEN_DATA_ROOTS": str(root / "data"), "HF_HUB_OFFLINE": "1", **env}, cwd=root)


def _fake_spaces_package(site: Path) -> Path:
    """A stand-in for the `spaces` package of ZeroGPU Spaces: `spaces.GPU` records each call it wraps,
    and like the real one keeps a generator function (an event that streams) a generator function."""
    fake = site / "spaces"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "import functools, inspect, os\n"
        "def mark(fn):\n"
        "    with open(os.environ['SPACES_MARK'], 'a') as f:\n"
        "        f.write(fn.__name__ + '\\n')\n"
        "def GPU(fn):\n"
        "    @functools.wraps(fn)\n"
        "    def wrapped(*args, **kwargs):\n"
        "        mark(fn)\n"
        "        return fn(*args, **kwargs)\n"
        "    @functools.wraps(fn)\n"
        "    def streamed(*args, **kwargs):\n"
        "        mark(fn)\n"
        "        yield from fn(*args, **kwargs)\n"
        "    return streamed if inspect.isgeneratorfunction(fn) else wrapped\n"
    )
    return site


@pytest.mark.slow
def test_space_app_has_no_train_tab_without_auth_and_wraps_gpu_events(tmp_path):
    """A Space (SPACE_ID: public mode) asked for training without a login has no Train tab; on a
    ZeroGPU Space `spaces.GPU` must wrap the GPU events (one app serves both checks)."""
    outside = tmp_path / "elsewhere" / "tiny"
    make_tiny_checkpoint(outside)
    site = _fake_spaces_package(tmp_path / "site")
    mark = tmp_path / "gpu-calls.txt"
    with _public_app(tmp_path, SPACE_ID="someone/bedgen", BEDGEN_ENABLE_TRAINING="1", SPACES_MARK=str(mark),
                     PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])) as app:
        client = Client(app.url, verbose=False)
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert not {"/train_start", "/finetune_start", "/distill_start", "/distill_progressive_start"} & set(endpoints)
        assert "Train tab is off" in app.log.read_text()
        # local models only from the checkpoints folder, Hub models only from the allow-list
        _expect_error(lambda: client.predict(str(outside), 0, 2, "auto", 1, False, api_name="/generate"),
                      "checkpoints folder only")
        _expect_error(lambda: client.predict("someone/any-model", 0, 2, "auto", 1, False, api_name="/generate"),
                      "not served by this app")
        before = mark.read_text().split() if mark.exists() else []
        _valid_generate(client, str(tmp_path / "checkpoints" / "tiny"))
        assert mark.read_text().split()[len(before):] == ["on_generate"]


@pytest.mark.slow
def test_public_app_trains_only_behind_a_login(tmp_path):
    with _public_app(tmp_path, BEDGEN_PUBLIC="1", BEDGEN_ENABLE_TRAINING="1", BEDGEN_AUTH="alice:wonderland-42") as app:
        with pytest.raises(Exception):
            Client(app.url, verbose=False).view_api(print_info=False)  # no login, no API
        client = Client(app.url, auth=("alice", "wonderland-42"), verbose=False)
        endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        assert "/train_start" in endpoints
        _expect_error(lambda: client.predict("/etc", "tiny", 16, 5, 4, 1e-3, "adamw", "r1", "",
                                             api_name="/train_start"), "inside the data roots")
        assert "wonderland-42" not in app.log.read_text()


# --- the policy and the cache, without a server ------------------------------------------------


def test_model_policy_confines_local_models_and_hub_ids(tmp_path):
    from bedgen.core.errors import BedgenError
    from bedgen.ui.security import ModelPolicy

    checkpoints = tmp_path / "checkpoints"
    make_tiny_checkpoint(checkpoints / "inside")
    make_tiny_checkpoint(tmp_path / "outside")
    (checkpoints / "link-out").symlink_to(tmp_path / "outside")  # a link that leaves the folder
    (checkpoints / "link-in").symlink_to(checkpoints / "inside")
    public = ModelPolicy(checkpoints, public=True, hub_allow=("google/ddpm-ema-bedroom-256", "bedgen-org/*"))
    assert public.check(str(checkpoints / "inside")) == str((checkpoints / "inside").resolve())
    assert public.check(str(checkpoints / "link-in"))
    for ref in [str(tmp_path / "outside"), str(checkpoints / "link-out"), str(checkpoints / ".." / "outside")]:
        with pytest.raises(BedgenError, match="checkpoints folder only"):
            public.check(ref)
    assert public.check("google/ddpm-ema-bedroom-256") and public.check("bedgen-org/any")
    for ref in ["someone/else", "google/ddpm-bedroom-256", "bedgen-org/any@v1"]:  # entries allow main only
        with pytest.raises(BedgenError, match="not served by this app"):
            public.check(ref)
    for ref in ["", "   ", None, 5, "x" * 600, "a\x00b"]:
        with pytest.raises(BedgenError):
            public.check(ref)
    private = ModelPolicy(checkpoints, public=False)  # any Hub id, but local models still confined
    assert private.check("someone/else") == "someone/else"
    with pytest.raises(BedgenError, match="checkpoints folder only"):
        private.check(str(tmp_path / "outside"))


def test_pipeline_cache_keeps_memory_bounded(tmp_path):
    from bedgen.ui.cache import PipelineCache

    refs = [str(make_tiny_checkpoint(tmp_path / f"m{i}", seed=i)) for i in range(4)]
    cache = PipelineCache(2)
    for ref in refs:
        cache.get(ref)
    assert len(cache) == 2 and refs[3] in cache and refs[2] in cache and refs[0] not in cache
    cache.get(refs[2])  # used again: now the most recent
    cache.get(refs[0])
    assert refs[2] in cache and refs[3] not in cache


def test_public_settings_need_auth_for_training(monkeypatch):
    from bedgen.ui.settings import AppSettings

    for name in ["SPACE_ID", "BEDGEN_PUBLIC", "BEDGEN_AUTH", "BEDGEN_ENABLE_TRAINING"]:
        monkeypatch.delenv(name, raising=False)
    assert AppSettings.from_env().training_enabled and not AppSettings.from_env().public
    assert not AppSettings.from_env(share=True).training_enabled
    monkeypatch.setenv("SPACE_ID", "someone/bedgen")
    monkeypatch.setenv("BEDGEN_ENABLE_TRAINING", "1")
    settings = AppSettings.from_env()
    assert settings.public and not settings.training_enabled and "BEDGEN_AUTH" in settings.notices()[0]
    monkeypatch.setenv("BEDGEN_AUTH", "alice:pw-1")
    assert AppSettings.from_env().training_enabled
    monkeypatch.setenv("BEDGEN_AUTH", "no-colon")
    with pytest.raises(SystemExit) as exit_info:
        AppSettings.from_env()
    assert "no-colon" not in str(exit_info.value)  # a malformed secret is not echoed


# --- every endpoint, every parameter ----------------------------------------------------------

JUNK_NUMBERS = [10**12, -1, "abc", "nan", "1e400", ""]
JUNK_TEXT = ["../../secret", "/etc/passwd", "no-such-org/no-such-model", "", "x" * 2000, "a\x00b"]


def _baselines(root: Path, files: dict[str, Path]) -> dict[str, list]:
    """A valid call of each endpoint that takes input (the junk replaces one argument at a time)."""
    model, index, good = str(root / "checkpoints" / "tiny"), str(root / "indexes" / "rooms"), str(files["good"])
    return {
        "/generate": [model, 1, 2, "auto", 1, False, 0.0],
        "/describe_model": [model],
        "/interpolate": [model, handle_file(good), handle_file(good), 0.5, 3, "noise", 2, 0, 0.5],
        "/interpolate_weight": [model, handle_file(good), handle_file(good), 0.5, 0.5, "noise", 2, 0],
        "/neighbours": [index, handle_file(good), 3],
        "/neighbours_of_generated": [index, handle_file(good), 3],
        "/evaluate": [model, "ref.npz", 4, 2, "auto", ["fid"], 0],
        "/sweep_report": ["sweep"],
        "/train_start": [str(root / "data" / "rooms"), "tiny", 16, 2, 4, 1e-3, "adamw", "fuzz-run", ""],
        "/finetune_start": [model, str(root / "data" / "rooms"), 1.0, 2, 2, 2, 1e-4, "fuzz-ft"],
        "/distill_start": [model, str(root / "data" / "rooms"), 2, 2, 2e-5, "fuzz-distill"],
        "/distill_progressive_start": [model, str(root / "data" / "rooms"), 8, 2, 2e-5, "fuzz-distill-pd"],
        "/push_to_hub": ["alice/fuzz", True],  # no token on this server: refused before any upload
    }


def _junk_for(value, files: dict[str, Path]) -> list:
    if isinstance(value, dict):  # an uploaded file
        return [handle_file(str(files[kind])) for kind in BAD_IMAGES] + [None]
    if isinstance(value, bool):
        return ["yes", 7]
    if isinstance(value, (int, float)):
        return JUNK_NUMBERS
    if isinstance(value, list):
        return [["bogus"], "fid"]
    return JUNK_TEXT + [12345]


IN_FLIGHT = 4  # junk calls sent before waiting for their replies; under hard_app's queue of 8


@pytest.mark.slow
def test_every_endpoint_survives_junk_in_every_argument(hard_app):
    """Each argument of each endpoint gets junk of its kind; every reply is a result or an error
    that says something (no bare 'Error', no traceback), and generation works after each endpoint."""
    app, root, files = hard_app
    client = Client(app.url, verbose=False)
    # One client (one session) per call in flight. gradio_client loses a reply when a session's
    # second call is registered just as the server closes that session's result stream (the server
    # closes it when the session has nothing pending): the call gets CancelledError with no message
    # although the app answered it. Seen once under two test workers: the app logged its refusal of
    # train_start's junk steps, the client raised an empty CancelledError.
    clients = [client, *(Client(app.url, verbose=False) for _ in range(IN_FLIGHT - 1))]
    endpoints = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
    baselines = _baselines(root, files)
    model = str(root / "checkpoints" / "tiny")
    calls = 0
    for name, info in endpoints.items():
        base = baselines.get(name)
        if base is None:
            assert not [p for p in info["parameters"] if not p.get("parameter_has_default")], f"{name} needs a baseline"
            variants = [[]]
        else:
            assert len(base) == len(info["parameters"]), name
            variants = [base[:i] + [junk] + base[i + 1:] for i, value in enumerate(base) for junk in _junk_for(value, files)]
        # A few calls in flight at once: each call waits mostly on round trips and the client's
        # polling, and the app still runs one at a time (BEDGEN_CONCURRENCY=1). Fewer than the
        # queue holds, so none is refused as "queue full" instead of being judged.
        for start in range(0, len(variants), IN_FLIGHT):
            batch = variants[start:start + IN_FLIGHT]
            for args, job in [(args, c.submit(*args, api_name=name)) for args, c in zip(batch, clients)]:
                calls += 1
                try:
                    job.result()
                except Exception as e:  # noqa: BLE001 - the message is what is checked
                    message = str(e)
                    assert len(message) > 15 and "Traceback" not in message, (name, args, message)
                    assert not ("queue" in message.lower() and "full" in message.lower()), (name, args, message)
        if name == "/train_start" or name == "/finetune_start":
            client.predict(api_name="/train_stop")
        _valid_generate(client, model)
    assert calls >= 150, calls
    assert not (root / "checkpoints" / "fuzz-run").exists()  # no junk variant started a run
