"""Attacks through image arguments and files, sent the way an attacker would: raw HTTP.

gradio_client adds gradio's FileData marker to every file it sends, and gradio checks
marked files itself; these tests also send what a browser never would (a bare
``{"path": ...}``, a base64 ``data:`` URL in the JSON body, hostile PNG chunks) to the
real app, in public and in local mode, and follow each bad request with a valid one.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import struct
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image

from conftest import AppProcess, build_room_index, make_tiny_checkpoint
from synthetic import room

from bedgen.core.errors import BedgenError
from bedgen.core.images import load_image

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time

MARKER = {"_type": "gradio.FileData"}


# --- files an attacker writes ---------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", rows) + _chunk(b"IEND", b""))


def sixteen_bit_png(path: Path, side: int = 8000) -> Path:
    """A complete, valid side x side 16-bit grayscale PNG (64 megapixels by default): all
    black, so its pixel data compresses to ~130 KB, while decoding it fully costs GBs."""
    row = b"\x00" * (1 + 2 * side)  # filter byte + 2 bytes per pixel
    packer = zlib.compressobj(9)
    rows = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    path.write_bytes(_png(side, side, 16, 0, rows))
    return path


def text_chunk_bomb(path: Path, kind: bytes = b"zTXt", after_pixels: bool = False) -> Path:
    """A small valid 16x16 PNG with one compressed text chunk that inflates to 8 MB
    (Pillow refuses more than 1 MB per chunk)."""
    payload = zlib.compress(b"A" * (8 << 20), 9)
    if kind == b"zTXt":
        data = b"Comment\x00\x00" + payload
    else:  # iTXt: keyword, compression flag 1, method 0, empty language and translated keyword
        data = b"Comment\x00\x01\x00\x00\x00" + payload
    rows = zlib.compress(b"".join(b"\x00" + bytes(range(16)) * 3 for _ in range(16)))
    ihdr = struct.pack(">IIBBBBB", 16, 16, 8, 2, 0, 0, 0)
    chunks = [_chunk(b"IHDR", ihdr), _chunk(b"IDAT", rows)]
    chunks.insert(2 if after_pixels else 1, _chunk(kind, data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"".join(chunks) + _chunk(b"IEND", b""))
    return path


def noise_png(path: Path, side: int) -> Path:
    """Random pixels: a PNG of about 3 * side**2 bytes (noise does not compress)."""
    pixels = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, compress_level=1)
    return path


# --- raw HTTP -------------------------------------------------------------------------------


def call(app: AppProcess, api: str, data: list, timeout: float = 120) -> tuple[str, object]:
    """POST /gradio_api/call/<api>, then read its event stream: (last event, its data)."""
    base = f"{app.url}gradio_api/call/{api}"
    with httpx.Client(timeout=timeout) as http:
        response = http.post(base, json={"data": data})
        response.raise_for_status()
        event_id = response.json()["event_id"]
        event, payload = "", None
        with http.stream("GET", f"{base}/{event_id}") as stream:
            for line in stream.iter_lines():
                if line.startswith("event:"):
                    event = line.split(":", 1)[1].strip()
                elif line.startswith("data:"):
                    payload = json.loads(line.split(":", 1)[1].strip() or "null")
                    if event in ("complete", "error"):
                        return event, payload
    raise AssertionError(f"/{api}: the event stream ended without a result (last event {event!r})")


def upload(app: AppProcess, path: Path) -> str:
    """Upload the way the browser does (POST /gradio_api/upload); the stored file's path."""
    with httpx.Client(timeout=60) as http, open(path, "rb") as f:
        response = http.post(f"{app.url}gradio_api/upload", files={"files": (path.name, f)})
    response.raise_for_status()
    return response.json()[0]


def files_in(payload: object) -> list[str]:
    """Every file path or URL an output payload hands back."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, dict):
            found.extend(str(value[k]) for k in ("path", "url") if value.get(k))
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(payload)
    return found


# --- apps -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    """One tiny model and one LPIPS index, shared (read-only) by the apps of this module."""
    root = tmp_path_factory.mktemp("assets")
    make_tiny_checkpoint(root / "checkpoints" / "tiny")
    build_room_index(root)
    return root


def _start(assets: Path, root: Path, **env: str) -> AppProcess:
    app = AppProcess(
        {"BEDGEN_CHECKPOINTS": str(assets / "checkpoints"), "BEDGEN_INDEXES": str(assets / "indexes"),
         "BEDGEN_DEFAULT_MODEL": str(assets / "checkpoints" / "tiny"), "BEDGEN_MAX_UPLOAD_MB": "1",
         "HF_HUB_OFFLINE": "1", "BEDGEN_ENABLE_TRAINING": "0", "GRADIO_TEMP_DIR": str(root / "gradio-files"), **env},
        cwd=root,
    )
    app.root = root
    app.uploads = root / "gradio-files"
    app.model = str(assets / "checkpoints" / "tiny")
    app.index = str((assets / "indexes" / "rooms").resolve())
    try:
        app.wait_ready(timeout=300)  # a generous start on a busy machine; nothing else waits on it
    except BaseException:
        app.stop()
        raise
    return app


@pytest.fixture(scope="module")
def public_app(assets, tmp_path_factory):
    app = _start(assets, tmp_path_factory.mktemp("public"), BEDGEN_PUBLIC="1")
    yield app
    app.stop()


@pytest.fixture(scope="module")
def local_app(assets, tmp_path_factory):
    app = _start(assets, tmp_path_factory.mktemp("local"))
    yield app
    app.stop()


@pytest.fixture(params=["public", "local"])
def app(request) -> AppProcess:
    return request.getfixturevalue(f"{request.param}_app")


@pytest.fixture(scope="module")
def outside(tmp_path_factory) -> dict[str, str]:
    """Paths outside the upload folder: a real image (in the temp folder, which gradio lets
    apps return files from), a text file, nothing at all, and ways to reach them."""
    root = tmp_path_factory.mktemp("server-files")
    room(random.Random(7), 40).save(root / "private.png")
    (root / "notes.txt").write_text("not an image\n" * 20)
    return {
        "image": str(root / "private.png"),
        "not an image": str(root / "notes.txt"),
        "missing": str(root / "missing.png"),
        "folder": str(root),
        "relative": "../" * 12 + str(root / "private.png").lstrip("/"),
        "url": "http://127.0.0.1:9/private.png",
        "NUL": str(root / "private.png") + "\x00.png",
    }


def _interpolate(app: AppProcess, a: object, b: object) -> list:
    return [app.model, a, b, 0.5, 2, "noise", 1, 0, 0.5]  # model, A, B, t, frames, method, steps, seed, λ


def _neighbours(app: AppProcess, query: object) -> list:
    return [app.index, query, 2]


def _good(app: AppProcess, tmp_path: Path) -> str:
    image = tmp_path / "good.png"
    room(random.Random(1), 40).save(image)
    return upload(app, image)


# --- finding 1: image arguments read only what gradio stored for this app --------------------


def test_image_arguments_never_read_server_files_and_say_the_same_for_all(app, outside, tmp_path):
    good = _good(app, tmp_path)
    # A link inside the upload folder that points out, and a climb out of it, must fail too.
    (app.uploads / "link.png").symlink_to(outside["image"])
    paths = {**outside, "link in uploads": str(app.uploads / "link.png"),
             "climb from uploads": f"{app.uploads}/{os.path.relpath(outside['image'], app.uploads)}"}
    try:
        errors: dict[str, set[str]] = {"A": set(), "query": set()}
        # Bare dicts, for every kind of path; with gradio's marker (gradio refuses those itself,
        # in its own words), for the real image only.
        files = [{"path": path} for path in paths.values()] + [{"path": outside["image"], "meta": MARKER}]
        for file in files:
            for api, argument, data in (("interpolate", "A", _interpolate(app, file, {"path": good})),
                                        ("neighbours", "query", _neighbours(app, file))):
                event, payload = call(app, api, data)
                assert event == "error", f"/{api} read {file}: {payload}"
                assert not files_in(payload)
                if "meta" not in file:
                    errors[argument].add(json.dumps(payload))
        # One text per argument whatever the path is: no file-existence oracle.
        for argument, texts in errors.items():
            assert len(texts) == 1 and "upload" in next(iter(texts)), (argument, texts)
    finally:
        (app.uploads / "link.png").unlink()
    # The app keeps serving uploads, sent bare or marked as gradio's client and browser do.
    for file in ({"path": good}, {"path": good, "meta": MARKER}):
        event, payload = call(app, "neighbours", _neighbours(app, file))
        assert event == "complete", payload
        event, payload = call(app, "interpolate", _interpolate(app, file, file))
        assert event == "complete", payload


def test_generated_gallery_cannot_smuggle_a_server_file(app, outside):
    """"Use last generated image" takes the Generate gallery's value; a gallery item that
    names a server file must not come back as the image."""
    for file in ({"path": outside["image"]}, {"path": outside["image"], "meta": MARKER}):
        for api in ("use_generated_a", "use_generated_query"):
            event, payload = call(app, api, [[{"image": file, "caption": None}]])
            assert event == "error" or not files_in(payload), f"/{api} returned {payload}"


def test_gradio_client_uploads_still_work(app, tmp_path):
    image = tmp_path / "room.png"
    room(random.Random(2), 40).save(image)
    client = Client(app.url, verbose=False)
    gallery, _, status = client.predict(app.index, handle_file(str(image)), 2, api_name="/neighbours")
    assert len(gallery) == 3 and "LPIPS" in status


# --- finding 6: the upload size limit holds for data URLs ------------------------------------


def test_data_urls_obey_the_upload_size_limit(public_app, tmp_path):
    app = public_app
    big = noise_png(tmp_path / "big.png", 700)  # ~1.5 MB, over BEDGEN_MAX_UPLOAD_MB=1
    assert big.stat().st_size > 1 << 20
    with httpx.Client(timeout=60) as http, open(big, "rb") as f:
        assert http.post(f"{app.url}gradio_api/upload", files={"files": (big.name, f)}).status_code == 413
    url = "data:image/png;base64," + base64.b64encode(big.read_bytes()).decode()
    for file in ({"path": "", "url": url}, {"path": None, "url": url}):
        event, payload = call(app, "neighbours", _neighbours(app, file))
        assert event == "error", payload
        assert "1 MB" in str(payload) and "\n" not in str(payload), payload
    event, payload = call(app, "neighbours", _neighbours(app, {"path": "", "url": "data:image/png;base64,@@@"}))
    assert event == "error" and "data URL" in str(payload), payload
    # A small pasted image (a data URL under the limit) still works.
    small = io.BytesIO()
    room(random.Random(3), 40).save(small, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(small.getvalue()).decode()
    event, payload = call(app, "neighbours", _neighbours(app, {"path": "", "url": url}))
    assert event == "complete", payload


# --- finding 8: uploads and outputs are cleaned up ---------------------------------------------


@pytest.fixture(scope="module")
def cleaning_app(assets, tmp_path_factory):
    root = tmp_path_factory.mktemp("cleaning")
    (root / "tmp").mkdir()  # the app's temp folder: nothing may stay there either
    app = _start(assets, root, BEDGEN_PUBLIC="1", BEDGEN_CACHE_CLEAN_EVERY="1", BEDGEN_CACHE_MAX_AGE="2",
                 TMPDIR=str(root / "tmp"))
    yield app
    app.stop()


def test_uploads_and_outputs_older_than_the_age_are_deleted(cleaning_app, tmp_path):
    app = cleaning_app
    stored = Path(_good(app, tmp_path))
    assert stored.is_relative_to(app.uploads)
    # Inputs as data URLs, so the cleaner cannot take them away before the request reads them.
    png = io.BytesIO()
    room(random.Random(4), 40).save(png, format="PNG")
    image = {"path": "", "url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}
    event, payload = call(app, "interpolate", _interpolate(app, image, image))
    outputs = [Path(p) for p in files_in(payload) if Path(p).is_absolute()]
    assert event == "complete" and any(p.suffix == ".gif" for p in outputs), payload
    assert all(p.is_relative_to(app.uploads) for p in outputs), outputs
    deadline = time.monotonic() + 60  # the cleaner runs every second and deletes after 2 s
    while (stored.exists() or any(p.exists() for p in outputs)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not stored.exists() and not any(p.exists() for p in outputs)
    assert not list(app.root.rglob("*.gif"))  # no copy of the animation outside gradio's folder
    # The app keeps serving.
    event, payload = call(app, "neighbours", _neighbours(app, image))
    assert event == "complete", payload


def test_cache_settings_have_bounded_defaults_and_are_checked(monkeypatch):
    from bedgen.ui.settings import AppSettings

    for name in ("BEDGEN_CACHE_CLEAN_EVERY", "BEDGEN_CACHE_MAX_AGE", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BEDGEN_PUBLIC", "1")
    public = AppSettings.from_env()
    assert 0 < public.cache_clean_every <= public.cache_max_age <= 24 * 3600
    monkeypatch.setenv("BEDGEN_CACHE_MAX_AGE", "0")
    with pytest.raises(SystemExit, match="BEDGEN_CACHE_MAX_AGE"):
        AppSettings.from_env()
    monkeypatch.setenv("BEDGEN_PUBLIC", "0")
    monkeypatch.delenv("BEDGEN_CACHE_MAX_AGE")
    local = AppSettings.from_env()
    assert 0 < local.cache_clean_every <= local.cache_max_age


# --- finding 11: images that cost memory or hide bombs in metadata ----------------------------


def test_a_64_megapixel_16_bit_png_is_refused_from_its_header(tmp_path):
    path = sixteen_bit_png(tmp_path / "huge16.png")
    assert path.stat().st_size < 1 << 20  # the attack is a small upload
    with pytest.raises(BedgenError, match=r"16-bit.*megapixel") as error:
        load_image(path, "image A")
    assert "\n" not in str(error.value)
    # A 16-bit image of a sensible size still loads; so does an 8-bit one of 64 megapixels' header.
    assert load_image(sixteen_bit_png(tmp_path / "ok16.png", side=1000), "image A").size == (1000, 1000)


def test_a_huge_jpeg_is_decoded_at_reduced_size(tmp_path):
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (9000, 8000), (120, 90, 60)).save(path, quality=50)  # 72 MP: over the pixel limit
    image = load_image(path, "image A")
    assert image.size == (4500, 4000)  # libjpeg's 1/2 scale, decoded before any full-size buffer exists
    assert np.asarray(image)[0, 0].tolist() == pytest.approx([120, 90, 60], abs=2)


@pytest.mark.parametrize("kind,after_pixels", [(b"zTXt", False), (b"iTXt", False), (b"zTXt", True)])
def test_text_chunk_bombs_get_one_clear_line(tmp_path, kind, after_pixels):
    path = text_chunk_bomb(tmp_path / "bomb.png", kind, after_pixels)
    assert path.stat().st_size < 64 << 10
    with pytest.raises(BedgenError, match="metadata") as error:
        load_image(path, "query image")
    assert "\n" not in str(error.value) and str(error.value).startswith("query image")


def test_hostile_images_through_the_app_get_bedgens_error(public_app, tmp_path):
    app = public_app
    logged = len(app.log.read_text())
    cases = {"16-bit": (sixteen_bit_png(tmp_path / "huge16.png"), "16-bit"),
             "zTXt": (text_chunk_bomb(tmp_path / "ztxt.png"), "metadata")}
    for kind, (path, expected) in cases.items():
        event, payload = call(app, "neighbours", _neighbours(app, {"path": upload(app, path)}))
        assert event == "error" and expected in str(payload), (kind, payload)
        assert "Traceback" not in str(payload) and "failed:" not in str(payload), payload
    event, payload = call(app, "neighbours", _neighbours(app, {"path": _good(app, tmp_path)}))
    assert event == "complete", payload
    assert "neighbour search failed" not in app.log.read_text()[logged:]  # a user error, not a bug
