"""Training data: every source is tiny and written by the test itself."""

from __future__ import annotations

import copy
import hashlib
import io
import json
from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from PIL import Image

from bedgen.data.datasets import DataConfig, decode, open_dataset, prepare, preprocess
from bedgen.core.errors import BedgenError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)
R = 16


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def noise_jpeg(seed: int, size: tuple[int, int] = (48, 32)) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


def solid(color, size=(24, 16)) -> bytes:
    return encode(Image.new("RGB", size, color))


GOOD = {
    "a.png": solid(RED, (40, 20)),
    "e.webp": encode(Image.new("RGB", (20, 30), BLUE), "WEBP", lossless=True),
    "sub/b.JPG": noise_jpeg(1),
    "sub/deeper/c.jpeg": noise_jpeg(2),
    "sub/deeper/d.PNG": solid(GREEN),
}
BAD = {
    "sub/broken.jpg": noise_jpeg(3)[:600],  # truncated mid-scan
    "sub/notes.jpg": b"these are my notes, not a picture\n",
}
# Sorted relative paths; the two bad ones sit at 3 and 6.
FOLDER_KEYS = ["a.png", "e.webp", "sub/b.JPG", "sub/broken.jpg", "sub/deeper/c.jpeg", "sub/deeper/d.PNG", "sub/notes.jpg"]


def write_files(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def folder(tmp_path) -> Path:
    root = write_files(tmp_path / "images", {**GOOD, **BAD})
    write_files(root, {"readme.txt": b"ignored", ".thumbs/x.png": solid(RED)})
    return root


@pytest.fixture
def many(tmp_path) -> Path:
    """40 distinct 8x8 images: enough keys for subset and split statistics."""
    root = tmp_path / "many"
    root.mkdir()
    for i in range(40):
        (root / f"img{i:02d}.png").write_bytes(solid((i * 6, 255 - i * 6, 7), (8, 8)))
    return root


def keys(dataset) -> list[str]:
    return [dataset.key(i) for i in range(len(dataset))]


def write_lmdb(path: Path, items: dict[bytes, bytes]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in items.items():
            txn.put(key, value)
    env.close()
    return path


def lsun_items(n: int) -> dict[bytes, bytes]:
    return {hashlib.sha1(str(i).encode()).hexdigest().encode(): noise_jpeg(10 + i) for i in range(n)}


# --- preprocessing ---------------------------------------------------------------------


def test_crop_keeps_the_center_and_pad_white_adds_white_bands():
    red = Image.new("RGB", (40, 20), RED)
    cropped = preprocess(red, R, "crop")
    assert cropped.shape == (3, R, R) and cropped.dtype == np.uint8
    assert (cropped.transpose(1, 2, 0) == RED).all()
    # 40x20 padded to 40x40: red rows 10-30 become 4-12; bicubic blends two rows per edge.
    padded = preprocess(red, R, "pad-white").transpose(1, 2, 0)
    assert (padded[:3] == WHITE).all() and (padded[13:] == WHITE).all()
    assert (padded[5:11] == RED).all()
    assert (padded[3:5, :, 1] > 0).all() and (padded[3:5, :, 1] < 255).all()
    # The crop is cut before resizing: the discarded sides do not bleed into it.
    striped = Image.new("RGB", (60, 20), BLUE)
    striped.paste(Image.new("RGB", (20, 20), RED), (20, 0))
    striped.paste(Image.new("RGB", (20, 20), GREEN), (40, 0))
    assert (preprocess(striped, R, "crop").transpose(1, 2, 0) == RED).all()


def _rgba() -> Image.Image:
    image = Image.new("RGBA", (R, R), (0, 0, 255, 0))  # transparent blue -> white
    image.paste(Image.new("RGBA", (R // 2, R), (255, 0, 0, 255)), (0, 0))
    return image


def _palette(transparent: bool) -> Image.Image:
    image = Image.new("P", (R, R), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (R // 2, 0, R, R))
    if transparent:
        image.info["transparency"] = 1
    return image


def _sixteen_bit() -> Image.Image:
    values = np.full((R, R), 65535, dtype=np.uint16)
    values[:, R // 2:] = 32896  # 32896 / 257 = 128
    return Image.fromarray(values)


@pytest.mark.parametrize(
    "make, left, right",
    [
        (_rgba, RED, WHITE),
        (lambda: Image.new("LA", (R, R), (100, 255)), (100,) * 3, (100,) * 3),
        (lambda: Image.new("L", (R, R), 128), (128,) * 3, (128,) * 3),
        (_sixteen_bit, WHITE, (128,) * 3),
        (lambda: Image.open(io.BytesIO(encode(_sixteen_bit()))), WHITE, (128,) * 3),  # 16-bit PNG
        (lambda: _palette(False), RED, BLUE),
        (lambda: _palette(True), RED, WHITE),
        (lambda: Image.new("CMYK", (R, R), (0, 255, 255, 0)), RED, RED),
        (lambda: Image.new("1", (R, R), 1), WHITE, WHITE),
    ],
    ids=["RGBA", "LA", "L", "I;16", "16-bit PNG", "P", "P+transparency", "CMYK", "1"],
)
def test_every_mode_becomes_rgb(make, left, right):
    image = make()
    out = preprocess(image, R, "crop").transpose(1, 2, 0)  # same size: no resampling
    assert out.shape == (R, R, 3) and out.dtype == np.uint8
    assert (out[:, : R // 2] == left).all(), (image.mode, out[0, 0])
    assert (out[:, R // 2:] == right).all(), (image.mode, out[0, -1])


def test_exif_rotation_is_applied():
    landscape = Image.new("RGB", (64, 32), RED)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: the photo is really portrait
    out = decode(encode(landscape, "JPEG", exif=exif), R, "pad-white").transpose(1, 2, 0)
    assert (out[:, :2] > 240).all() and (out[:, -2:] > 240).all()  # white bands left/right
    assert (out[:2, R // 2] < 40)[..., 1:].all()  # red reaches top and bottom


# --- image folders ---------------------------------------------------------------------


def test_folder_is_recursive_case_insensitive_and_substitutes_bad_images(folder):
    dataset = open_dataset(DataConfig(source=str(folder)), R)
    assert keys(dataset) == FOLDER_KEYS
    items = [dataset[i] for i in range(len(dataset))]
    assert [item["ok"] for item in items] == [True, True, True, False, True, True, False]
    assert [item["index"] for item in items] == list(range(7))
    # The next readable image stands in (wrapping around at the end).
    assert torch.equal(items[3]["image"], items[4]["image"])
    assert torch.equal(items[6]["image"], items[0]["image"])
    assert torch.equal(items[0]["image"], torch.from_numpy(preprocess(Image.new("RGB", (40, 20), RED), R, "crop")))
    info = dataset.describe()
    assert json.loads(json.dumps(info)) == info
    assert info["kind"] == "folder" and info["images"] == 7 and info["skipped"] == 2


def test_dataloader_workers_survive_corrupt_images_and_batches_stay_full(folder):
    dataset = open_dataset(DataConfig(source=str(folder)), R)
    loader = torch.utils.data.DataLoader(dataset, batch_size=4, num_workers=2)
    batches = list(loader)
    assert [len(b["index"]) for b in batches] == [4, 3]
    assert all(b["image"].shape[1:] == (3, R, R) and b["image"].dtype == torch.uint8 for b in batches)
    assert sum(int(b["ok"].sum()) for b in batches) == 5


@pytest.mark.parametrize("content", [{}, {"notes.txt": b"no pictures here"}])
def test_empty_folder_is_an_error(tmp_path, content):
    root = write_files(tmp_path / "empty", content)
    root.mkdir(exist_ok=True)
    with pytest.raises(BedgenError, match="no images found"):
        open_dataset(DataConfig(source=str(root)), R)


def test_bad_arguments_are_errors_before_any_work(tmp_path, folder):
    with pytest.raises(BedgenError, match="does not exist"):
        open_dataset(DataConfig(source=str(tmp_path / "nowhere")), R)
    with pytest.raises(BedgenError, match="no data source"):
        open_dataset(DataConfig(), R)
    with pytest.raises(BedgenError, match="resolution"):
        open_dataset(DataConfig(source=str(folder)), 4)
    for fraction in (0.0, -0.5, 1.5):
        with pytest.raises(BedgenError, match="fraction"):
            open_dataset(DataConfig(source=str(folder), fraction=fraction), R)
    with pytest.raises(BedgenError, match="square"):
        open_dataset(DataConfig(source=str(folder), square="stretch"), R)
    with pytest.raises(BedgenError, match="is a file"):
        open_dataset(DataConfig(source=str(folder / "a.png")), R)


# --- LSUN LMDB -------------------------------------------------------------------------


def test_lsun_lmdb_is_read_directly(tmp_path):
    items = lsun_items(6)
    path = write_lmdb(tmp_path / "bedroom_train_lmdb", items)
    dataset = open_dataset(DataConfig(source=str(path)), R)
    assert keys(dataset) == sorted(k.decode() for k in items)  # LMDB keeps keys sorted
    for i in range(len(dataset)):
        item = dataset[i]
        expected = preprocess(Image.open(io.BytesIO(items[dataset.key(i).encode()])), R, "crop")
        assert item["ok"] and np.array_equal(item["image"].numpy(), expected)
    assert dataset.describe()["kind"] == "lmdb"
    # Workers fork after the parent opened the env; each must reopen its own.
    loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=2)
    assert sum(int(b["ok"].sum()) for b in loader) == 6
    # Spawned workers (macOS, Windows) get a copy made through __getstate__: no env in it.
    assert torch.equal(copy.deepcopy(dataset)[5]["image"], dataset[5]["image"])


def test_lmdb_with_one_corrupt_value_is_accepted_and_substituted(tmp_path):
    items = lsun_items(6)
    bad = sorted(items)[2]
    items[bad] = b"\xff\xd8 not really a jpeg"
    dataset = open_dataset(DataConfig(source=str(write_lmdb(tmp_path / "db", items))), R)
    assert [dataset[i]["ok"] for i in range(6)] == [True, True, False, True, True, True]


@pytest.mark.parametrize(
    "items, found",
    [
        ({b"a": b"hello", b"b": b"world"}, r"keys are not 40-hex LSUN ids \(e\.g\. b'a'\).*do not decode"),
        ({k: b"just text" for k in lsun_items(3)}, r"3 of the first 3 values do not decode as images"),
    ],
    ids=["text keys and values", "lsun keys, text values"],
)
def test_lmdb_that_is_not_lsun_is_an_error(tmp_path, items, found):
    path = write_lmdb(tmp_path / "other", items)
    with pytest.raises(BedgenError, match="is not an LSUN image database: .*" + found):
        open_dataset(DataConfig(source=str(path)), R)


def test_empty_lmdb_is_an_error(tmp_path):
    with pytest.raises(BedgenError, match="empty"):
        open_dataset(DataConfig(source=str(write_lmdb(tmp_path / "empty", {}))), R)


# --- subsets and splits ----------------------------------------------------------------


def test_fraction_is_reproducible_sized_and_nested(many):
    def subset(fraction, seed):
        return keys(open_dataset(DataConfig(source=str(many), fraction=fraction, subset_seed=seed), 8))

    quarter = subset(0.25, 0)
    assert len(quarter) == 10 and quarter == subset(0.25, 0)
    assert quarter != subset(0.25, 1)
    assert quarter == sorted(quarter)  # source order is kept
    assert set(quarter) < set(subset(0.5, 0))
    assert len(subset(0.33, 0)) == 13
    assert len(subset(1e-6, 0)) == 1  # at least one image


def test_validation_split_is_disjoint_deterministic_and_stable_across_fractions(many):
    def split(name, fraction=1.0, seed=0):
        config = DataConfig(source=str(many), validation_fraction=0.25, fraction=fraction, subset_seed=seed)
        return keys(open_dataset(config, 8, name))

    train, validation = split("train"), split("validation")
    assert set(train).isdisjoint(validation) and sorted(train + validation) == keys(open_dataset(DataConfig(source=str(many)), 8))
    assert 4 <= len(validation) <= 18
    assert validation == split("validation") and train == split("train")
    # An image never moves from training to validation when the subset changes.
    assert set(split("train", 0.5, 7)).isdisjoint(validation)
    assert set(split("validation", 0.5, 7)) <= set(validation)


def test_validation_split_edge_cases(many):
    with pytest.raises(BedgenError, match="validation_fraction > 0"):
        open_dataset(DataConfig(source=str(many)), 8, "validation")
    tiny = DataConfig(source=str(many), fraction=0.05, validation_fraction=0.01)
    assert len(open_dataset(tiny, 8, "validation")) == 1 and len(open_dataset(tiny, 8, "train")) == 1
    with pytest.raises(BedgenError, match="validation_fraction"):
        open_dataset(DataConfig(source=str(many), validation_fraction=1.0), 8)


# --- prepare ---------------------------------------------------------------------------


def test_prepare_writes_shards_that_read_back_as_direct_decoding(folder, tmp_path):
    out = tmp_path / "shards"
    meta = prepare(DataConfig(source=str(folder)), out, R, shard_size=2)
    assert meta["complete"] and meta["count"] == 5 and meta["skipped"] == 2
    assert meta["skipped_keys"] == ["sub/broken.jpg", "sub/notes.jpg"]
    assert meta == json.loads((out / "meta.json").read_text())
    assert sorted(p.name for p in out.glob("shard-*.npy")) == [f"shard-0000{n}.npy" for n in range(4)]
    first = np.load(out / "shard-00000.npy", allow_pickle=False)
    assert first.dtype == np.uint8 and first.shape == (2, 3, R, R)
    assert json.loads((out / "keys-00000.json").read_text()) == ["a.png", "e.webp"]

    raw = open_dataset(DataConfig(source=str(folder)), R)
    direct = {raw.key(i): raw[i]["image"] for i in range(len(raw)) if raw[i]["ok"]}
    shards = open_dataset(DataConfig(source=str(out)), R)
    assert keys(shards) == list(direct)
    for i in range(len(shards)):
        item = shards[i]
        assert item["ok"] and torch.equal(item["image"], direct[shards.key(i)])
    info = shards.describe()
    assert info["kind"] == "shards" and info["skipped"] == 2 and info["prepared"]["source"] == str(folder.resolve())
    loader = torch.utils.data.DataLoader(shards, batch_size=5, num_workers=2)
    assert [int(b["ok"].sum()) for b in loader] == [5]
    assert torch.equal(copy.deepcopy(shards)[4]["image"], shards[4]["image"])


def test_prepare_resumes_after_an_interruption(folder, tmp_path):
    out, calls = tmp_path / "shards", []

    def stop_at_three(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        prepare(DataConfig(source=str(folder)), out, R, shard_size=2, progress=stop_at_three)
    meta = json.loads((out / "meta.json").read_text())
    assert not meta["complete"] and [s["index"] for s in meta["shards"]] == [0]
    with pytest.raises(BedgenError, match="did not finish"):
        open_dataset(DataConfig(source=str(out)), R)

    first_shard = (out / "shard-00000.npy").stat().st_mtime_ns
    (out / ".shard-00001.npy.tmp-999").write_bytes(b"half a shard")  # as a crash leaves it
    resumed = prepare(DataConfig(source=str(folder)), out, R, shard_size=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[0] == (2, 7) and calls[-1] == (7, 7)  # shard 0 was not redone
    assert (out / "shard-00000.npy").stat().st_mtime_ns == first_shard

    fresh = prepare(DataConfig(source=str(folder)), tmp_path / "fresh", R, shard_size=2)
    assert resumed == fresh
    for n in range(4):
        name = f"shard-{n:05d}.npy"
        assert np.array_equal(np.load(out / name), np.load(tmp_path / "fresh" / name))
    assert not list(out.glob(".*tmp*"))


def test_prepare_redoes_a_shard_whose_file_is_lost(folder, tmp_path):
    out = tmp_path / "shards"
    meta = prepare(DataConfig(source=str(folder)), out, R, shard_size=3)
    (out / "shard-00002.npy").unlink()
    assert prepare(DataConfig(source=str(folder)), out, R, shard_size=3) == meta
    assert (out / "shard-00002.npy").is_file()


def test_prepare_refuses_other_settings_and_foreign_folders(folder, tmp_path):
    out = tmp_path / "shards"
    prepare(DataConfig(source=str(folder)), out, R, shard_size=2)
    with pytest.raises(BedgenError, match=r"other settings \(resolution: 16 -> 8"):
        prepare(DataConfig(source=str(folder)), out, 8, shard_size=2)
    with pytest.raises(BedgenError, match="square"):
        prepare(DataConfig(source=str(folder), square="pad-white"), out, R, shard_size=2)
    with pytest.raises(BedgenError, match="not a bedgen shards folder"):
        prepare(DataConfig(source=str(folder)), folder, R)
    with pytest.raises(BedgenError, match="already holds prepared shards"):
        prepare(DataConfig(source=str(out)), tmp_path / "again", R)
    # Shards only serve the resolution and squaring they were made with.
    with pytest.raises(BedgenError, match="prepared at 16 px"):
        open_dataset(DataConfig(source=str(out)), 32)
    with pytest.raises(BedgenError, match="square='crop'"):
        open_dataset(DataConfig(source=str(out), square="pad-white"), R)


def test_fraction_and_split_on_shards_select_the_same_images_as_the_raw_source(many, tmp_path):
    prepare(DataConfig(source=str(many)), tmp_path / "all", 8, shard_size=16)
    half = DataConfig(source=str(many), fraction=0.5, subset_seed=3)
    prepare(half, tmp_path / "half", 8)
    for config in (
        DataConfig(fraction=0.25, subset_seed=3),
        DataConfig(fraction=0.5, subset_seed=3, validation_fraction=0.2),
    ):
        for split in ("train", "validation") if config.validation_fraction else ("train",):
            config.source = str(many)
            expected = keys(open_dataset(config, 8, split))
            for prepared in ("all", "half"):
                config.source = str(tmp_path / prepared)
                assert keys(open_dataset(config, 8, split)) == expected, (prepared, config, split)
    assert len(open_dataset(DataConfig(source=str(tmp_path / "half")), 8)) == 20  # fraction 1: all prepared
    with pytest.raises(BedgenError, match="needs a new prepare"):
        open_dataset(DataConfig(source=str(tmp_path / "half"), fraction=0.25, subset_seed=4), 8)


# --- Hugging Face datasets -------------------------------------------------------------


@pytest.fixture
def hf(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return datasets


def test_local_parquet_dataset_with_automatic_image_column(hf, tmp_path):
    pictures = [solid(RED, (40, 20)), solid(GREEN), b"broken bytes", solid(BLUE)]
    features = hf.Features({"label": hf.Value("int64"), "picture": hf.Image()})
    table = hf.Dataset.from_dict(
        {"label": [0, 1, 2, 3], "picture": [{"bytes": b, "path": None} for b in pictures]}, features=features
    )
    (tmp_path / "pq").mkdir()
    table.to_parquet(str(tmp_path / "pq" / "train.parquet"))
    dataset = open_dataset(DataConfig(source=str(tmp_path / "pq")), R)
    assert keys(dataset) == ["train/0", "train/1", "train/2", "train/3"]
    info = dataset.describe()
    assert info["kind"] == "huggingface" and info["image_column"] == "picture"
    assert [dataset[i]["ok"] for i in range(4)] == [True, True, False, True]
    for i in (0, 1, 3):
        assert np.array_equal(dataset[i]["image"].numpy(), decode(pictures[i], R, "crop"))
    assert (tmp_path / "hf-cache").is_dir()  # nothing written to the user's cache


def test_binary_column_is_found_by_content_and_image_column_is_checked(hf, tmp_path):
    table = hf.Dataset.from_dict({"caption": ["a bed", "two beds"], "jpg": [noise_jpeg(5), noise_jpeg(6)]})
    table.to_parquet(str(tmp_path / "beds.parquet"))
    dataset = open_dataset(DataConfig(source=str(tmp_path / "beds.parquet")), R)
    assert dataset.describe()["image_column"] == "jpg"
    assert np.array_equal(dataset[1]["image"].numpy(), decode(noise_jpeg(6), R, "crop"))
    with pytest.raises(BedgenError, match=r"no column 'image'; its columns are \['caption', 'jpg'\]"):
        open_dataset(DataConfig(source=str(tmp_path / "beds.parquet"), image_column="image"), R)
    hf.Dataset.from_dict({"caption": ["a bed"]}).to_parquet(str(tmp_path / "text.parquet"))
    with pytest.raises(BedgenError, match="no column holding images"):
        open_dataset(DataConfig(source=str(tmp_path / "text.parquet")), R)


@pytest.mark.timeout(60)
def test_hub_dataset_offline_and_not_cached_is_a_clear_error(hf, monkeypatch):
    from huggingface_hub import constants

    # Set after datasets was imported: bedgen must honour it at call time. Should it
    # not, requests go to a closed local port, never to the real Hub.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf.config, "HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    with pytest.raises(BedgenError, match="nobody/no-such-beds.*HF_HUB_OFFLINE is set.*OfflineModeIsEnabled"):
        open_dataset(DataConfig(source="nobody/no-such-beds"), R)
