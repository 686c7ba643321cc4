"""LPIPS nearest-neighbour index: exact against lpips.LPIPS itself, resumable builds, clear errors.

Backbones are torchvision AlexNet / VGG16 feature stacks with random weights that the
tests save to files (nothing is downloaded); the reference is lpips.LPIPS with the same
weights copied in independently.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bedgen.data.datasets import preprocess
from bedgen.core.errors import BedgenError
from bedgen.evaluation.neighbours import (
    MEMORISATION_FACTOR, NON_STANDARD_NOTE, LpipsIndex, build_index, find_indexes, load_neighbour_image,
)
from bedgen.models.lpips import LpipsEmbedder, shared_embedder
from synthetic import write_rooms

RESOLUTION = 32
ROOMS = 40


# --- fixtures: data, weights saved by the test, the lpips reference ----------------------


def save_backbone(path: Path, net: str = "alex", seed: int = 0) -> Path:
    """A torchvision-format (features.N.weight) backbone state dict with random weights."""
    import torchvision

    torch.manual_seed(seed)
    if net == "alex":
        features = torchvision.models.alexnet().features
    else:  # vgg16's feature stack alone: the classifier's 120 M parameters are not needed
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    state = {f"features.{k}": v.contiguous() for k, v in features.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def reference_lpips(net: str, weights: Path):
    """lpips.LPIPS with the saved backbone copied into its slices (slice{k}.{i} <- features.{i})."""
    import lpips

    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = lpips.LPIPS(net=net, pnet_rand=True, verbose=False)
    with torch.no_grad():
        for name, parameter in ref.net.named_parameters():
            _slice, i, kind = name.split(".")
            parameter.copy_(state[f"features.{i}.{kind}"])
    return ref.eval()


def pixels(path_or_image, resolution: int = RESOLUTION) -> torch.Tensor:
    image = path_or_image if isinstance(path_or_image, Image.Image) else Image.open(path_or_image)
    return torch.from_numpy(preprocess(image, resolution, "crop")).float()[None] / 127.5 - 1


def reference_distances(ref, query, files, resolution: int = RESOLUTION) -> np.ndarray:
    q = pixels(query, resolution)
    with torch.no_grad():
        return np.array([float(ref(q, pixels(f, resolution))) for f in files])


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("neighbours")


@pytest.fixture(scope="module")
def rooms(root) -> list[Path]:
    return write_rooms(root / "rooms", ROOMS, size=48, seed=7)


@pytest.fixture(scope="module")
def alex_weights(root) -> Path:
    return save_backbone(root / "alexnet-random.pth")


@pytest.fixture(scope="module")
def ref(alex_weights):
    return reference_lpips("alex", alex_weights)


@pytest.fixture(scope="module")
def index(root, rooms, alex_weights) -> LpipsIndex:
    path = build_index(str(root / "rooms"), root / "index", resolution=RESOLUTION, lpips_weights=alex_weights,
                       shard_size=16, batch_size=8)
    return LpipsIndex.open(path)


@pytest.fixture(scope="module")
def unrelated_room(root) -> Path:
    return write_rooms(root / "queries", 1, size=60, seed=99)[0]


# --- exactness ------------------------------------------------------------------------------


@pytest.mark.parametrize("exhaustive", [False, True], ids=["prefiltered", "exhaustive"])
def test_distances_equal_lpips_for_every_indexed_image(index, ref, rooms, unrelated_room, exhaustive):
    expected = reference_distances(ref, unrelated_room, rooms)
    result = index.search([unrelated_room], k=ROOMS, exhaustive=exhaustive)[0]
    got = {n.key: n.lpips for n in result.neighbours}
    assert len(got) == ROOMS
    errors = [abs(got[f.name] - e) for f, e in zip(rooms, expected)]
    assert max(errors) < 1e-4
    assert [n.rank for n in result.neighbours] == list(range(1, ROOMS + 1))


@pytest.mark.parametrize("exhaustive", [False, True], ids=["prefiltered", "exhaustive"])
@pytest.mark.parametrize("query", [0, 5, "unrelated"])
def test_top_k_equals_brute_force(index, ref, rooms, unrelated_room, exhaustive, query):
    image = unrelated_room if query == "unrelated" else rooms[query]
    expected = reference_distances(ref, image, rooms)
    order = np.argsort(expected, kind="stable")[:5]
    result = index.search(str(image), k=5, exhaustive=exhaustive)[0]
    assert [n.key for n in result.neighbours] == [rooms[i].name for i in order]
    assert np.allclose([n.lpips for n in result.neighbours], expected[order], atol=1e-4, rtol=0)
    assert result.candidates >= 5 and result.evaluated >= result.candidates


def test_prefilter_refines_only_part_of_the_index(index, unrelated_room):
    prefiltered = index.search([unrelated_room], k=3)[0]
    exhaustive = index.search([unrelated_room], k=3, exhaustive=True)[0]
    assert prefiltered.evaluated < ROOMS
    assert [n.key for n in prefiltered.neighbours] == [n.key for n in exhaustive.neighbours]


def test_stored_fp16_distances_are_within_1e4_without_rerank(index, ref, rooms, unrelated_room):
    """The measured fp16 storage error; exact results come from the re-rank, not from this."""
    expected = reference_distances(ref, unrelated_room, rooms)
    result = index.search([unrelated_room], k=ROOMS, rerank=False)[0]
    got = {n.key: n.lpips for n in result.neighbours}
    errors = np.array([abs(got[f.name] - e) for f, e in zip(rooms, expected)])
    assert 0 < errors.max() < 1e-4


def test_an_indexed_image_finds_itself_below_the_memorisation_threshold(index, rooms):
    for i in (0, 17, ROOMS - 1):
        result = index.search([Image.open(rooms[i])], k=3)[0]
        first = result.neighbours[0]
        assert (first.rank, first.key) == (1, rooms[i].name)
        assert first.lpips < 1e-5 and result.nearest == first.lpips
        assert first.path == str(rooms[i].resolve()) and first.source == str(rooms[i].parent.resolve())
        assert result.below_threshold and result.typical_nn == index.typical_nn["median"]
        assert not result.standard_weights and not result.memorised  # random weights: no verdict


def test_a_recompressed_copy_is_flagged_and_noise_is_not(index, rooms):
    buffer = io.BytesIO()
    Image.open(rooms[3]).save(buffer, "JPEG", quality=90)
    copy = index.search([Image.open(buffer)], k=1)[0]
    assert copy.neighbours[0].key == rooms[3].name and copy.below_threshold
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    unrelated = index.search([noise], k=1)[0]
    assert not unrelated.below_threshold and not unrelated.memorised
    assert unrelated.nearest > MEMORISATION_FACTOR * unrelated.typical_nn


def test_index_json_describes_the_index(index, rooms, alex_weights):
    manifest = json.loads((index.path / "index.json").read_text())
    assert manifest["format"] == "bedgen-lpips-index" and manifest["complete"] is True
    assert (manifest["net"], manifest["resolution"], manifest["square"]) == ("alex", RESOLUTION, "crop")
    assert manifest["lpips_weights"] == str(alex_weights.resolve())
    assert manifest["lpips_weights_sha256"] == hashlib.sha256(alex_weights.read_bytes()).hexdigest()
    assert manifest["lpips_standard"] is False and index.standard_weights is False
    assert manifest["count"] == len(index) == ROOMS and manifest["skipped"] == 0
    assert manifest["data"]["kind"] == "folder" and manifest["data"]["source"] == str(rooms[0].parent.resolve())
    assert manifest["dim"] == sum(s["channels"] * s["height"] * s["width"] for s in manifest["layers"])
    assert [s["count"] for s in manifest["shards"]] == [16, 16, 8]
    typical = manifest["typical_nn"]
    assert typical["sample"] == ROOMS and 0 < typical["p05"] <= typical["median"]
    embeddings = np.load(index.path / "shard-00000.npy", mmap_mode="r", allow_pickle=False)
    assert embeddings.dtype == np.float16 and embeddings.shape == (16, manifest["dim"])
    assert json.loads((index.path / "shard-00002.keys.json").read_text()) == [p.name for p in rooms[32:]]


def test_neighbour_images_are_read_back_as_the_index_saw_them(index, rooms):
    result = index.search([rooms[9]], k=2)[0]
    image = load_neighbour_image(index, result.neighbours[0])
    assert image.size == (RESOLUTION, RESOLUTION) and image.mode == "RGB"
    assert np.array_equal(np.asarray(image).transpose(2, 0, 1), preprocess(Image.open(rooms[9]), RESOLUTION, "crop"))


# --- building: resume, settings, skipped images ----------------------------------------------


def _shard_arrays(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("shard-*")) + [folder / "projection.npz"]}


class Interrupt(Exception):
    pass


def test_an_interrupted_build_resumes_without_redoing_finished_shards(root, rooms, alex_weights, tmp_path):
    args = dict(resolution=RESOLUTION, lpips_weights=alex_weights, shard_size=8, batch_size=8)

    def stop_in_second_shard(done, total):
        if done > 8:
            raise Interrupt

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        build_index(str(root / "rooms"), out, progress=stop_in_second_shard, **args)
    with pytest.raises(BedgenError, match="incomplete .*run bedgen index again to finish it"):
        LpipsIndex.open(out)
    first = (out / "shard-00000.npy").stat()
    seen = []
    build_index(str(root / "rooms"), out, progress=lambda done, total: seen.append((done, total)), **args)
    assert seen[0] == (8, ROOMS) and seen[-1] == (ROOMS, ROOMS)  # the finished shard is not redone
    again = (out / "shard-00000.npy").stat()
    assert (again.st_ino, again.st_mtime_ns) == (first.st_ino, first.st_mtime_ns)

    fresh = build_index(str(root / "rooms"), tmp_path / "fresh", **args)
    assert _shard_arrays(out) == _shard_arrays(fresh)
    resumed, uninterrupted = (json.loads((p / "index.json").read_text()) for p in (out, fresh))
    assert resumed["typical_nn"] == uninterrupted["typical_nn"] and resumed["count"] == ROOMS

    # A complete index is left as it is.
    manifest_time = (out / "index.json").stat().st_mtime_ns
    assert build_index(str(root / "rooms"), out, **args) == out
    assert (out / "index.json").stat().st_mtime_ns == manifest_time


def test_rebuilding_with_other_settings_is_refused(index, root, alex_weights, tmp_path):
    source = str(root / "rooms")
    with pytest.raises(BedgenError, match=r"other settings \(resolution: 32 -> 48"):
        build_index(source, index.path, resolution=48, lpips_weights=alex_weights, shard_size=16)
    other = save_backbone(tmp_path / "other.pth", seed=1)
    with pytest.raises(BedgenError, match="other settings .*fingerprint"):
        build_index(source, index.path, resolution=RESOLUTION, lpips_weights=other, shard_size=16)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(BedgenError, match="not an LPIPS index; choose a new or empty folder"):
        build_index(source, tmp_path / "busy", resolution=RESOLUTION, lpips_weights=alex_weights)


def test_unreadable_images_are_skipped_once_and_recorded(tmp_path, alex_weights):
    paths = write_rooms(tmp_path / "rooms", 6, size=40, seed=3)
    paths[2].write_bytes(b"not a png at all")
    index = LpipsIndex.open(build_index(str(tmp_path / "rooms"), tmp_path / "index", resolution=RESOLUTION,
                                        lpips_weights=alex_weights))
    manifest = index.manifest
    assert len(index) == 5 and manifest["skipped"] == 1 and manifest["skipped_keys"] == [paths[2].name]
    keys = json.loads((index.path / "shard-00000.keys.json").read_text())
    assert keys == [p.name for p in paths if p != paths[2]]  # the substitute is indexed once, at its own place


def test_a_one_image_index_has_no_typical_distance(tmp_path, alex_weights):
    write_rooms(tmp_path / "one", 1, size=40, seed=5)
    index = LpipsIndex.open(build_index(str(tmp_path / "one"), tmp_path / "index", resolution=RESOLUTION,
                                        lpips_weights=alex_weights))
    result = index.search([tmp_path / "one" / "room-00000.png"], k=1)[0]
    assert result.nearest < 1e-5 and result.typical_nn is None and not result.memorised
    with pytest.raises(BedgenError, match=r"k must be between 1 and 1 \(the images in this index\)"):
        index.search([tmp_path / "one" / "room-00000.png"], k=2)


@pytest.mark.slow
def test_vgg_index_matches_lpips_vgg(tmp_path, alex_weights):
    weights = save_backbone(tmp_path / "vgg16-random.safetensors", net="vgg")
    paths = write_rooms(tmp_path / "rooms", 6, size=24, seed=11)
    index = LpipsIndex.open(build_index(str(tmp_path / "rooms"), tmp_path / "index", resolution=16, net="vgg",
                                        lpips_weights=weights))
    query = write_rooms(tmp_path / "query", 1, size=24, seed=12)[0]
    expected = reference_distances(reference_lpips("vgg", weights), query, paths, resolution=16)
    result = index.search([query], k=6)[0]
    assert [n.key for n in result.neighbours] == [paths[i].name for i in np.argsort(expected, kind="stable")]
    got = {n.key: n.lpips for n in result.neighbours}
    assert max(abs(got[p.name] - e) for p, e in zip(paths, expected)) < 1e-4
    assert index.search([paths[4]], k=1)[0].neighbours[0].key == paths[4].name
    with pytest.raises(BedgenError, match="index was built with other LPIPS weights/net"):
        index.search([paths[4]], k=1, embedder=shared_embedder("alex", alex_weights))


# --- weights, embedders and index errors ----------------------------------------------------


def test_safetensors_and_pth_of_the_same_weights_agree(index, alex_weights, tmp_path, rooms):
    same = save_backbone(tmp_path / "same.safetensors")
    embedder = LpipsEmbedder("alex", same)
    assert embedder.fingerprint == index.fingerprint
    assert index.search([rooms[1]], k=1, embedder=embedder)[0].neighbours[0].key == rooms[1].name


def test_querying_with_other_weights_or_net_is_refused(index, tmp_path, rooms):
    other = LpipsEmbedder("alex", save_backbone(tmp_path / "other.pth", seed=1))
    with pytest.raises(BedgenError, match="index was built with other LPIPS weights/net"):
        index.search([rooms[0]], k=1, embedder=other)


@pytest.mark.parametrize("case, message", [
    ("missing", "do not exist; pass --lpips-weights"),
    ("garbage", "cannot read LPIPS backbone weights"),
    ("other net", "is not a torchvision vgg16 backbone.*it looks like alex weights: use --net alex"),
    ("no features", "is not a torchvision vgg16 backbone: it lacks features.0.weight"),
    ("suffix", "neither .safetensors nor .pth"),
])
def test_bad_backbone_weights_are_clear_errors(alex_weights, tmp_path, case, message):
    path = {"missing": tmp_path / "nope.pth", "garbage": tmp_path / "garbage.pth", "other net": alex_weights,
            "no features": tmp_path / "empty.pth", "suffix": tmp_path / "weights.npz"}[case]
    if case == "garbage":
        path.write_bytes(b"\x00not a state dict")
    elif case == "no features":
        torch.save({"classifier.1.weight": torch.zeros(2, 2)}, path)
    elif case == "suffix":
        path.write_bytes(b"")
    with pytest.raises(BedgenError, match=message):
        LpipsEmbedder("vgg", path)


def test_pretrained_weights_offline_say_to_pass_a_file(monkeypatch, tmp_path):
    import urllib.request

    # No torch hub cache and a proxy that refuses connections: what an offline machine sees.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    # urlopen builds its opener once, proxies included, on first use (torch.hub's download here);
    # without this, every later urlopen in this process would go through the dead proxy.
    monkeypatch.setattr(urllib.request, "_opener", None)
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BedgenError, match="pretrained alexnet weights .*pass --lpips-weights PATH"):
        LpipsEmbedder("alex")


def test_local_http_works_after_the_offline_proxy_test():
    """Runs right after the test above (file order): its dead proxy must not outlive it. It did
    once, through urlopen's cached opener, and every app fixture that came later in the same
    process then timed out waiting for its server."""
    import http.server
    import threading
    import urllib.request

    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/", timeout=10) as response:
            assert response.status == 200
    finally:
        server.shutdown()
        server.server_close()


def test_opening_what_is_not_a_complete_index_is_a_clear_error(tmp_path):
    with pytest.raises(BedgenError, match="no LPIPS index at .*does not exist"):
        LpipsIndex.open(tmp_path / "gone")
    with pytest.raises(BedgenError, match="is not an LPIPS index"):
        LpipsIndex.open(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(BedgenError, match="not valid JSON"):
        LpipsIndex.open(tmp_path)


@pytest.mark.parametrize("k", [0, -1, ROOMS + 1, 2.5, True])
def test_k_out_of_range_is_refused(index, rooms, k):
    with pytest.raises(BedgenError, match=rf"k must be (a whole number )?between 1 and {ROOMS} \(the images in this index\)"):
        index.search([rooms[0]], k=k)


def test_embedders_are_shared_and_resolution_checked(alex_weights):
    assert shared_embedder("alex", alex_weights) is shared_embedder("alex", str(alex_weights))
    with pytest.raises(BedgenError, match="too small for the LPIPS alex backbone"):
        shared_embedder("alex", alex_weights).layer_shapes(16)


def test_find_indexes_lists_complete_indexes_only(index, tmp_path, root, alex_weights):
    assert find_indexes(index.path.parent) == [index.path]
    assert find_indexes(tmp_path / "nothing") == []
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "index.json").write_text(json.dumps({"format": "bedgen-lpips-index", "format_version": 1,
                                                                  "complete": False}))
    assert find_indexes(tmp_path) == []


# --- query images: odd files and modes --------------------------------------------------------


def _png_header_only(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of any size, compressed row by row (tiny on disk, huge decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(compressor.compress(row * 1000) for _ in range(height // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.mark.parametrize("case, message", [
    ("not an image", "not an image PIL can read"),
    ("truncated png", "truncated or corrupt"),
    ("1x1", "at least 8 pixels"),
    ("decompression bomb", "too large to decode safely|megapixel limit"),
    ("missing file", "does not exist"),
])
def test_bad_query_files_are_clear_errors(index, rooms, tmp_path, case, message):
    path = tmp_path / "query.png"
    if case == "not an image":
        path.write_bytes(b"hello, not an image")
    elif case == "truncated png":
        data = rooms[0].read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "1x1":
        Image.new("RGB", (1, 1), "red").save(path)
    elif case == "decompression bomb":
        path.write_bytes(_png_header_only(20000, 20000))
        assert path.stat().st_size < 200_000
    with pytest.raises(BedgenError, match=message):
        index.search([path], k=3)


def _same_neighbours(index, a, b) -> None:
    first, second = index.search([a, b], k=4)
    assert [n.key for n in first.neighbours] == [n.key for n in second.neighbours]
    assert np.allclose([n.lpips for n in first.neighbours], [n.lpips for n in second.neighbours], atol=1e-9)


def test_rgba_is_composited_on_white(index, rooms, tmp_path):
    rgba = Image.open(rooms[4]).convert("RGBA")
    alpha = np.full(rgba.size[::-1], 255, np.uint8)
    alpha[:, : rgba.size[0] // 2] = 0  # left half transparent
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(tmp_path / "rgba.png")
    white = Image.new("RGBA", rgba.size, "white")
    _same_neighbours(index, tmp_path / "rgba.png", Image.alpha_composite(white, rgba).convert("RGB"))


def test_16_bit_grayscale_is_scaled_not_clipped(index, rooms, tmp_path):
    gray8 = np.asarray(Image.open(rooms[6]).convert("L"))
    Image.fromarray(gray8.astype(np.uint16) * 257).save(tmp_path / "gray16.png")  # mode I;16
    assert Image.open(tmp_path / "gray16.png").mode in ("I;16", "I")
    Image.fromarray(gray8).save(tmp_path / "gray8.png")  # mode L
    _same_neighbours(index, tmp_path / "gray16.png", tmp_path / "gray8.png")
    result = index.search([tmp_path / "gray8.png"], k=1)[0]
    assert result.nearest > 0  # a grayscale copy is not the colour original


def test_an_animated_gif_gives_its_first_frame(index, rooms, tmp_path):
    frames = [Image.open(rooms[1]).convert("RGB"), Image.open(rooms[2]).convert("RGB")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with Image.open(tmp_path / "anim.gif") as gif:
        first = gif.convert("RGB")
    _same_neighbours(index, tmp_path / "anim.gif", first)
    assert index.search([tmp_path / "anim.gif"], k=1)[0].neighbours[0].key == rooms[1].name


# --- the command line ---------------------------------------------------------------------


def bedgen(*args):
    return subprocess.run([sys.executable, "-m", "bedgen", *map(str, args)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})


@pytest.mark.slow
def test_cli_index_then_neighbours(root, rooms, alex_weights, tmp_path, capsys):
    from bedgen.cli.main import main

    out = tmp_path / "cli-index"
    # index in this process (its output is all that differs), neighbours as a user runs it
    assert main(["index", "--data", str(root / "rooms"), "--out", str(out), "--resolution", str(RESOLUTION),
                 "--lpips-weights", str(alex_weights), "--batch-size", "16"]) == 0
    printed = capsys.readouterr().out
    assert f"indexed {ROOMS} images at {RESOLUTION} px" in printed and NON_STANDARD_NOTE in printed
    run = bedgen("neighbours", "--index", out, "--image", rooms[12], "-k", 3)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [line["rank"] for line in lines] == [1, 2, 3]
    assert lines[0]["key"] == rooms[12].name and lines[0]["path"] == str(rooms[12].resolve()) and lines[0]["lpips"] < 1e-5
    assert f"below {MEMORISATION_FACTOR} x typical {NON_STANDARD_NOTE}" in run.stderr
    assert "POSSIBLE MEMORISED COPY" not in run.stderr  # random weights: no confident verdict


def test_cli_neighbours_of_a_missing_index_exits_2(tmp_path, rooms, capsys):
    from bedgen.cli.main import main

    assert main(["neighbours", "--index", str(tmp_path / "gone"), "--image", str(rooms[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bedgen: error: no LPIPS index at") and len(err.splitlines()) == 1


def test_cli_bad_inputs_exit_2_with_one_line(index, rooms, tmp_path, capsys):
    from bedgen.cli.main import main

    (tmp_path / "notes.png").write_text("not an image")
    cases = [
        (["neighbours", "--index", index.path, "--image", tmp_path / "notes.png"], "not an image PIL can read"),
        (["neighbours", "--index", index.path, "--image", rooms[0], "-k", ROOMS + 1], "k must be between 1 and"),
        (["index", "--data", tmp_path / "nothing", "--out", tmp_path / "out"], "does not exist"),
    ]
    for args, message in cases:
        assert main([str(a) for a in args]) == 2
        err = capsys.readouterr().err
        assert err.startswith("bedgen: error: ") and message in err and len(err.splitlines()) == 1


# --- standard and non-standard backbone weights -------------------------------------------


def test_torchvisions_file_name_with_other_weights_is_not_standard(root, rooms, monkeypatch, tmp_path):
    """Random weights saved in the torch hub cache under torchvision's own file name: torchvision
    loads a cached file without checking it, so the index hashes it and marks it non-standard."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    cached.parent.mkdir(parents=True)
    torch.manual_seed(3)
    torch.save(torchvision.models.alexnet().state_dict(), cached)
    path = build_index(str(root / "rooms"), tmp_path / "index", resolution=RESOLUTION, batch_size=8)
    manifest = json.loads((path / "index.json").read_text())
    assert manifest["lpips_weights"] is None  # "torchvision's pretrained weights" ...
    assert manifest["lpips_standard"] is False  # ... but not their content
    result = LpipsIndex.open(path).search([rooms[5]], k=1)[0]
    assert result.neighbours[0].key == rooms[5].name and result.below_threshold
    assert not result.memorised and not result.standard_weights


def test_only_an_index_recording_standard_weights_gives_a_verdict(index, rooms, tmp_path):
    import shutil

    def search_copy(name: str, **record):
        folder = shutil.copytree(index.path, tmp_path / name)
        manifest = json.loads((folder / "index.json").read_text())
        for key in ("lpips_standard", "lpips_weights_sha256"):
            manifest.pop(key)
        (folder / "index.json").write_text(json.dumps({**manifest, **record}))
        return LpipsIndex.open(folder).search([rooms[9]], k=1)[0]

    standard = search_copy("standard", lpips_standard=True)
    assert standard.standard_weights and standard.below_threshold and standard.memorised
    # An index from before the record, built from a weights file: nothing says the file was standard.
    older = search_copy("older")
    assert not older.standard_weights and older.below_threshold and not older.memorised


def test_an_unknown_lpips_network_is_refused_by_name_before_any_work(tmp_path):
    from bedgen.models.lpips import lpips_network

    refusals = [
        lambda: build_index(str(tmp_path / "no-such-folder"), tmp_path / "index", net="squeeze"),  # before the data
        lambda: LpipsEmbedder("squeeze"),
        lambda: lpips_network("squeeze"),
    ]
    for refuse in refusals:
        with pytest.raises(BedgenError, match="unknown LPIPS network 'squeeze'; choose one of alex, vgg"):
            refuse()
    assert not (tmp_path / "index").exists()
