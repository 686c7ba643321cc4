"""Training images: one dataset over image folders, LSUN LMDBs, Hugging Face datasets and prepared shards.

``open_dataset`` detects the kind of source and returns an :class:`ImageDataset` of
uint8 (3, R, R) tensors. Everything is decided before training starts: a missing,
empty or non-LSUN source raises :class:`BedgenError` with one line. During training
a corrupt item never raises; it is replaced by the next readable one and flagged
``ok=False`` so batches stay full and DataLoader workers never crash.

Subsets and splits are functions of each image's *key* (relative path, LSUN id,
``split/row`` or the key recorded by ``prepare``), never of its position:

* ``fraction`` keeps the ``max(1, round(fraction * N))`` keys with the smallest
  ``blake2b(subset_seed, key)``. Selections nest (a smaller fraction with the same
  seed is a subset of a larger one), which is what lets prepared shards serve any
  fraction they contain and give the same images as the raw source. On shards,
  fraction 1 means every prepared image, whatever fraction they were prepared with.
* ``validation_fraction`` puts a key in validation when ``blake2b("validation", key)``
  maps below it. Membership does not depend on ``fraction`` or ``subset_seed``, so
  an image used for training under one setting is never validation under another.
  If the threshold picks no image of a small subset, its smallest-hash key is used.

Random horizontal flips are the trainer's job (``DataConfig.flip``): an exactly
resumable run needs them drawn from the trainer's saved RNG, not a worker's.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from PIL import ExifTags, Image

from ..core.errors import BedgenError, one_line
from ..config.schema import DataConfig, Split, Square
from ..core.files import atomic_write
from ..core.hub import hub_offline, parse_hub_ref

SPLITS: tuple[str, ...] = ("train", "validation")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
TABLE_SUFFIXES = frozenset({".parquet", ".arrow"})
MIN_RESOLUTION = 8
WHITE = (255, 255, 255)
# BICUBIC (antialiased in Pillow: the kernel widens with the scale factor) is what
# guided-diffusion and most LSUN FID references downsample with; LANCZOS is a little
# sharper but rings around the hard edges bedrooms are full of (frames, bed edges).
# reducing_gap=3 first shrinks by an integer box filter while keeping >= 3x the target
# size: several times faster on big photos and, per Pillow, indistinguishable.
RESAMPLE = Image.Resampling.BICUBIC
REDUCING_GAP = 3.0
SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N"})
ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
LSUN_KEY = re.compile(rb"^[0-9a-f]{40}$")
LSUN_PROBE = 8  # entries checked before an LMDB is accepted
MAX_SUBSTITUTION = 1024  # readable items tried in place of a corrupt one
SHARDS_FORMAT = "bedgen-shards"
SHARDS_VERSION = 1
META = "meta.json"
# What a rerun of prepare into the same folder must agree on.
PREPARE_SETTINGS = (
    "format_version", "kind", "source", "image_column", "resolution", "square",
    "fraction", "subset_seed", "source_count", "selected", "shard_size",
)

log = logging.getLogger(__name__)


# --- decoding --------------------------------------------------------------------------


def preprocess(image: Image.Image, resolution: int, square: Square) -> np.ndarray:
    """Any PIL image -> uint8 array (3, R, R): EXIF-upright, RGB, squared, then resized.

    Transparent pixels and 16-bit values are handled explicitly (``_to_rgb``); the
    square is cut (center crop) or padded (white) *before* resizing, so the crop's
    edge pixels are not blended with the discarded neighbours.
    """
    rgb = _to_rgb(_upright(image))
    width, height = rgb.size
    if square == "crop":
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        squared = rgb.crop((left, top, left + side, top + side))
    else:
        side = max(width, height)
        squared = Image.new("RGB", (side, side), WHITE)
        squared.paste(rgb, ((side - width) // 2, (side - height) // 2))
    resized = squared.resize((resolution, resolution), RESAMPLE, reducing_gap=REDUCING_GAP)
    return np.ascontiguousarray(np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1))


def _upright(image: Image.Image) -> Image.Image:
    from PIL import ImageOps

    # Phone photos store rotation in EXIF; exif_transpose copies even when there is
    # none, so only call it when the tag asks for a turn.
    if image.getexif().get(ExifTags.Base.Orientation, 1) in (0, 1):
        return image
    return ImageOps.exif_transpose(image)


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in SIXTEEN_BIT_MODES:
        # Pillow's convert clips 16-bit values at 255; scale the full range instead.
        # Mode "I" (32-bit) is read as 16-bit data, which is what PNG/TIFF give.
        values = np.asarray(image).astype(np.float64) / 257.0
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        # Composite on white, as pad-white does: the colour stored under alpha=0 is
        # arbitrary (often black) and must not leak into training images.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode == "F":
        image = image.convert("L")
    return image if image.mode == "RGB" else image.convert("RGB")


def decode(data: bytes | Image.Image, resolution: int, square: Square) -> np.ndarray:
    """Encoded image bytes (or an already opened image) -> uint8 (3, R, R)."""
    if isinstance(data, Image.Image):
        return preprocess(data, resolution, square)
    # No JPEG draft mode (libjpeg's 1/2..1/8 DCT scaling): faster, but it changes
    # pixels by a few levels against a full decode, and resizing details move FID
    # (Parmar et al. 2022). `prepare` is the fast path; it decodes once.
    with Image.open(io.BytesIO(data)) as image:
        return preprocess(image, resolution, square)


def _decodes(data: bytes) -> bool:
    try:
        decode(data, MIN_RESOLUTION, "crop")
    except Exception:  # any decoder failure means "not an image" here
        return False
    return True


# --- keys, subsets, splits -------------------------------------------------------------


class _Keys:
    """Many strings in two numpy arrays instead of millions of Python objects.

    DataLoader workers fork from the trainer; a list of 3M ``bytes`` would be copied
    page by page into every worker as reference counts change.
    """

    def __init__(self, items: Iterable[bytes]):
        items = list(items)
        self._ends = np.cumsum(np.fromiter(map(len, items), np.int64, len(items)))
        self._blob = np.frombuffer(b"".join(items), np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def raw(self, i: int) -> bytes:
        start = int(self._ends[i - 1]) if i else 0
        return self._blob[start:int(self._ends[i])].tobytes()

    def __getitem__(self, i: int) -> str:
        return self.raw(i).decode()

    def raw_many(self, positions: np.ndarray) -> Iterator[memoryview]:
        blob = memoryview(self._blob)
        starts = np.concatenate(([0], self._ends[:-1]))[positions].tolist()
        return (blob[a:b] for a, b in zip(starts, self._ends[positions].tolist()))


def _key_hashes(keys: _Keys, positions: np.ndarray, salt: str) -> np.ndarray:
    """A uint64 per key, uniform-looking; stable across machines, processes and versions."""
    salted = hashlib.blake2b(salt.encode() + b"\0", digest_size=8)

    def digest(key: memoryview) -> bytes:
        h = salted.copy()
        h.update(key)
        return h.digest()

    return np.frombuffer(b"".join(map(digest, keys.raw_many(positions))), dtype=">u8").astype(np.uint64)


def subset_size(fraction: float, count: int) -> int:
    return max(1, round(fraction * count))


def _select_subset(keys: _Keys, positions: np.ndarray, fraction: float, seed: int, count: int) -> np.ndarray:
    """The ``subset_size(fraction, count)`` positions whose keys hash smallest, in source order."""
    size = min(len(positions), subset_size(fraction, count))
    if size == len(positions):
        return positions
    hashes = _key_hashes(keys, positions, f"subset:{seed}")
    chosen = np.argsort(hashes, kind="stable")[:size]
    return positions[np.sort(chosen)]


def _split(keys: _Keys, positions: np.ndarray, validation_fraction: float, split: Split) -> np.ndarray:
    if validation_fraction == 0:
        if split == "validation":
            raise BedgenError("the validation split is empty: set validation_fraction > 0 (e.g. 0.01)")
        return positions
    hashes = _key_hashes(keys, positions, "validation").astype(np.float64) / 2.0**64
    in_validation = hashes < validation_fraction
    if not in_validation.any():
        in_validation[np.argmin(hashes)] = True  # tiny subsets still get one image
    if in_validation.all():
        raise BedgenError(
            f"validation_fraction {validation_fraction} leaves no training images out of "
            f"{len(positions)}; lower it or use more data"
        )
    return positions[in_validation if split == "validation" else ~in_validation]


# --- readers: one per kind of source ---------------------------------------------------


class _Reader:
    """Random access to one source: ``load(j)`` raises on an unreadable item."""

    kind = ""

    def __init__(self, source: str, keys: _Keys):
        self.source = source
        self.keys = keys

    def __len__(self) -> int:
        return len(self.keys)

    def key(self, j: int) -> str:
        return self.keys[j]

    def read(self, j: int) -> bytes | Image.Image:
        raise NotImplementedError

    def load(self, j: int, resolution: int, square: Square) -> np.ndarray:
        return decode(self.read(j), resolution, square)

    def encoding(self, j: int) -> str | None:
        """The stored file format ("JPEG", "PNG", "WEBP", ...) from the header; None if unknown."""
        try:
            data = self.read(j)
            if isinstance(data, Image.Image):
                return data.format
            with Image.open(io.BytesIO(data)) as image:
                return image.format
        except Exception:  # unreadable items are reported by load(), not here
            return None

    def info(self) -> dict[str, Any]:
        return {}


class _PerProcess:
    """Handles (mmaps) opened lazily and reopened after a fork; never pickled."""

    def _handles(self) -> dict[str, Any]:
        if getattr(self, "_pid", None) != os.getpid():
            self._pid, self._open = os.getpid(), {}
        return self._open

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_pid", None)
        state.pop("_open", None)
        return state


class _FolderReader(_Reader):
    kind = "folder"

    def __init__(self, root: Path, relative_paths: list[str]):
        super().__init__(str(root), _Keys(p.encode() for p in relative_paths))
        self.root = root

    def read(self, j: int) -> bytes:
        return (self.root / self.key(j)).read_bytes()


def _scan_folder(root: Path) -> tuple[list[str], list[Path]]:
    """Image files (relative posix paths, sorted) and parquet/arrow files under ``root``."""
    images: list[str] = []
    tables: list[Path] = []
    for folder, subfolders, files in os.walk(root, followlinks=True):
        subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
        for name in files:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES and not name.startswith("."):
                images.append(Path(folder, name).relative_to(root).as_posix())
            elif suffix in TABLE_SUFFIXES:
                tables.append(Path(folder, name))
    return sorted(images), tables


class _LmdbReader(_Reader):
    kind = "lmdb"

    def __init__(self, path: Path):
        self.path = path
        with self._env().begin() as txn:
            keys = _Keys(txn.cursor().iternext(keys=True, values=False))
        super().__init__(str(path), keys)

    def _env(self):
        return _lmdb_env(self.path)

    def read(self, j: int) -> bytes:
        with self._env().begin(buffers=False) as txn:
            value = txn.get(self.keys.raw(j))
        if value is None:
            raise KeyError(f"LMDB key {self.key(j)} vanished")
        return value


_lmdb_envs: dict[Path, tuple[int, Any]] = {}  # path -> (pid that opened it, env)
_lmdb_lock = threading.Lock()


def _new_lmdb_lock() -> None:
    global _lmdb_lock
    _lmdb_lock = threading.Lock()  # a fork while a thread held the lock must not deadlock the child


os.register_at_fork(after_in_child=_new_lmdb_lock)


def _lmdb_env(path: Path):
    """One read-only env per process and path, opened on first use.

    LMDB refuses a second open of the same env in a process, and an env must not be
    used across fork: a DataLoader worker closes the copy it inherited (its own copy
    of the mapping; the parent's stays open) and opens its own.
    """
    import lmdb

    with _lmdb_lock:
        pid, env = _lmdb_envs.get(path, (None, None))
        if pid != os.getpid():
            if env is not None:
                env.close()
            # lock=False: a read-only dataset needs no reader table (and may sit on a
            # read-only disk); readahead=False: random access over a 40+ GB file.
            env = lmdb.open(
                str(path), subdir=path.is_dir(), readonly=True, lock=False,
                readahead=False, meminit=False, max_readers=1024,
            )
            _lmdb_envs[path] = (os.getpid(), env)
        return env


def _open_lmdb(path: Path) -> _LmdbReader:
    import lmdb

    try:
        reader = _LmdbReader(path)
    except lmdb.Error as e:
        raise BedgenError(f"cannot open LMDB {path}: {one_line(e)}") from e
    _check_lsun(reader)
    return reader


def _check_lsun(reader: _LmdbReader) -> None:
    """Refuse an LMDB whose first entries are not (40-hex id -> encoded image)."""
    if len(reader) == 0:
        raise BedgenError(f"LMDB {reader.path} is empty: no images found")
    probe = range(min(LSUN_PROBE, len(reader)))
    odd_keys = [reader.keys.raw(j) for j in probe if not LSUN_KEY.match(reader.keys.raw(j))]
    values = [(reader.keys.raw(j), reader.read(j)) for j in probe]
    not_images = [(k, v) for k, v in values if not _decodes(v)]
    found = []
    if odd_keys:
        found.append(
            f"{len(odd_keys)} of the first {len(probe)} keys are not 40-hex LSUN ids (e.g. {odd_keys[0][:48]!r})"
        )
    if 2 * len(not_images) > len(probe):  # one corrupt image among a few is not disqualifying
        key, value = not_images[0]
        found.append(
            f"{len(not_images)} of the first {len(probe)} values do not decode as images "
            f"(e.g. {key[:48]!r} -> {value[:24]!r})"
        )
    if found:
        raise BedgenError(f"LMDB {reader.path} is not an LSUN image database: {'; '.join(found)}")


class _HfReader(_Reader):
    kind = "huggingface"

    def __init__(self, source: str, dataset: Any, column: str, split: str):
        super().__init__(source, _Keys(f"{split}/{row}".encode() for row in range(len(dataset))))
        self.dataset, self.column, self.split = dataset, column, split

    def read(self, j: int) -> bytes | Image.Image:
        value = self.dataset[j][self.column]
        if isinstance(value, dict):  # Image(decode=False): {"bytes": ..., "path": ...}
            if value.get("bytes") is not None:
                return value["bytes"]
            return Path(value["path"]).read_bytes()
        if isinstance(value, (bytes, Image.Image)):
            return value
        raise ValueError(f"column {self.column!r} holds {type(value).__name__}, not an image")

    def info(self) -> dict[str, Any]:
        return {"image_column": self.column, "hf_split": self.split}


def _open_huggingface(source: str, config: DataConfig, local_tables: bool) -> _HfReader:
    try:
        import datasets
    except ImportError as e:
        raise BedgenError(f"'{source}' is read with Hugging Face datasets; pip install datasets") from e
    path = Path(source).expanduser()
    with _offline_when_asked(datasets):
        try:
            loaded = _load_hf(datasets, source, path, local_tables)
        except (OSError, ValueError, datasets.exceptions.DatasetsError) as e:
            raise BedgenError(f"{_hf_failure(source, local_tables)}: {one_line(e)}") from e
    split, dataset = _pick_split(source, loaded)
    if len(dataset) == 0:
        raise BedgenError(f"dataset '{source}' split '{split}' is empty: no images found")
    column = _image_column(datasets, source, dataset, config.image_column)
    dataset = dataset.select_columns([column])
    if isinstance(dataset.features[column], datasets.Image):
        # Decode ourselves: a corrupt image then fails in our hands (ok=False), not
        # inside datasets' formatter, and every source goes through one decoder.
        dataset = dataset.cast_column(column, datasets.Image(decode=False))
    return _HfReader(source, dataset, column, split)


def _hf_failure(source: str, local_tables: bool) -> str:
    if local_tables:
        return f"could not read dataset {source}"
    if hub_offline():
        return f"'{source}' is not a local path nor a cached Hugging Face dataset (HF_HUB_OFFLINE is set)"
    return f"'{source}' is not a local path and could not be loaded from the Hugging Face Hub"


def _load_hf(datasets: Any, source: str, path: Path, local_tables: bool) -> Any:
    saved = ("dataset_dict.json", "state.json")  # written by Dataset.save_to_disk
    if local_tables and path.is_dir() and any((path / name).exists() for name in saved):
        return datasets.load_from_disk(str(path))
    if local_tables and path.is_file():
        return datasets.load_dataset(path.suffix.lstrip("."), data_files=str(path))
    if local_tables:
        return datasets.load_dataset(str(path))
    hub = parse_hub_ref(source)
    return datasets.load_dataset(hub.repo_id, revision=hub.revision)


@contextlib.contextmanager
def _offline_when_asked(datasets: Any) -> Iterator[None]:
    """Honour HF_HUB_OFFLINE as set now; datasets and huggingface_hub read it at import."""
    if not hub_offline():
        yield
        return
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _pick_split(source: str, loaded: Any) -> tuple[str, Any]:
    """Our train/validation split is by key hash, so read the dataset's 'train' split."""
    if not hasattr(loaded, "keys"):  # a single Dataset
        return str(loaded.split or "train"), loaded
    names = list(loaded.keys())
    if "train" in names:
        return "train", loaded["train"]
    if len(names) == 1:
        return names[0], loaded[names[0]]
    raise BedgenError(f"dataset '{source}' has splits {names} and none is 'train'; keep one split")


def _image_column(datasets: Any, source: str, dataset: Any, wanted: str | None) -> str:
    columns = list(dataset.column_names)
    if wanted is not None:
        if wanted not in columns:
            raise BedgenError(f"dataset '{source}' has no column {wanted!r}; its columns are {columns}")
        return wanted
    for name, feature in dataset.features.items():
        if isinstance(feature, datasets.Image):
            return name
    first_rows = dataset[: min(3, len(dataset))]  # one corrupt row must not hide the column
    for name in columns:
        if any(_holds_image(value) for value in first_rows[name]):
            return name
    raise BedgenError(f"dataset '{source}' has no column holding images (columns: {columns}); set image_column")


def _holds_image(value: Any) -> bool:
    if isinstance(value, Image.Image):
        return True
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        value = value["bytes"]
    return isinstance(value, bytes) and _decodes(value)


class _ShardReader(_Reader, _PerProcess):
    kind = "shards"

    def __init__(self, root: Path, meta: dict[str, Any]):
        self.root, self.meta = root, meta
        shards = [s for s in meta["shards"] if s["count"] > 0]  # empty shards cannot be mmapped
        self.files = [s["file"] for s in shards]
        self.ends = np.cumsum([s["count"] for s in shards], dtype=np.int64)
        keys = [k for s in shards for k in json.loads((root / s["keys"]).read_text())]
        super().__init__(str(root), _Keys(k.encode() for k in keys))

    def _shard(self, s: int) -> np.ndarray:
        handles = self._handles()
        if s not in handles:
            handles[s] = np.load(self.root / self.files[s], mmap_mode="r", allow_pickle=False)
        return handles[s]

    def load(self, j: int, resolution: int, square: Square) -> np.ndarray:
        s = int(np.searchsorted(self.ends, j, side="right"))
        row = j - (int(self.ends[s - 1]) if s else 0)
        return np.array(self._shard(s)[row])  # a writable copy, not a view of the mmap

    def encoding(self, j: int) -> str | None:
        return None  # decoded pixels: the original file format is gone

    def check(self, resolution: int) -> None:
        for s, name in enumerate(self.files):
            array = np.load(self.root / name, mmap_mode="r", allow_pickle=False)
            expected = (int(self.ends[s] - (self.ends[s - 1] if s else 0)), 3, resolution, resolution)
            if array.dtype != np.uint8 or array.shape != expected:
                raise BedgenError(
                    f"shard {self.root / name} holds {array.dtype} {array.shape}, expected uint8 "
                    f"{expected}; run bedgen prepare again into a new folder"
                )

    def info(self) -> dict[str, Any]:
        fields = ("source", "kind", "fraction", "subset_seed", "source_count", "count", "skipped")
        return {"prepared": {f: self.meta[f] for f in fields}}


def _read_meta(root: Path) -> dict[str, Any] | None:
    path = root / META
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BedgenError(f"{path} is not valid JSON ({one_line(e)}); delete the folder, prepare again") from e
    if not isinstance(meta, dict) or meta.get("format") != SHARDS_FORMAT:
        return None
    if meta.get("format_version") != SHARDS_VERSION:
        raise BedgenError(
            f"{root} holds shards of format version {meta.get('format_version')}, this bedgen reads "
            f"{SHARDS_VERSION}; prepare them again"
        )
    return meta


def _open_shards(root: Path, meta: dict[str, Any], config: DataConfig, resolution: int) -> _ShardReader:
    if not meta.get("complete"):
        raise BedgenError(
            f"{root}: bedgen prepare did not finish ({len(meta['shards'])} of {meta['num_shards']} "
            "shards); run the same prepare command again to resume"
        )
    if meta["resolution"] != resolution:
        raise BedgenError(
            f"{root} was prepared at {meta['resolution']} px but training asks for {resolution} px; "
            f"prepare again with resolution {resolution} into another folder"
        )
    if meta["square"] != config.square:
        raise BedgenError(
            f"{root} was prepared with square={meta['square']!r} but the data config says "
            f"{config.square!r}; set square={meta['square']!r} or prepare again"
        )
    reader = _ShardReader(root, meta)
    reader.check(resolution)
    return reader


def _shard_positions(reader: _ShardReader, config: DataConfig) -> np.ndarray:
    """Every prepared image for fraction 1; otherwise the images the same fraction and
    seed select from the raw source (minus corrupt ones), which the shards must hold."""
    meta, everything = reader.meta, np.arange(len(reader), dtype=np.int64)
    same = config.fraction == meta["fraction"] and config.subset_seed == meta["subset_seed"]
    if same or config.fraction == 1:
        return everything
    if meta["fraction"] < 1 and (config.subset_seed != meta["subset_seed"] or config.fraction > meta["fraction"]):
        raise BedgenError(
            f"{reader.root} holds fraction {meta['fraction']} (subset_seed {meta['subset_seed']}) of its "
            f"source; fraction {config.fraction} with subset_seed {config.subset_seed} needs a new prepare"
        )
    return _select_subset(reader.keys, everything, config.fraction, config.subset_seed, meta["source_count"])


# --- the dataset -----------------------------------------------------------------------


class ImageDataset(torch.utils.data.Dataset):
    """uint8 (3, R, R) images of one split of one source; see the module docstring."""

    def __init__(self, reader: _Reader, positions: np.ndarray, resolution: int, config: DataConfig, split: Split):
        self._reader = reader
        self._positions = np.asarray(positions, dtype=np.int64)
        self.resolution = resolution
        self.config = config
        self.split = split
        self._bad: set[int] = set()  # per process: DataLoader workers keep their own

    def __len__(self) -> int:
        return len(self._positions)

    def key(self, i: int) -> str:
        return self._reader.key(int(self._positions[i]))

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        # Deterministic substitution: the next readable item, so batches stay full.
        for step in range(min(len(self), MAX_SUBSTITUTION)):
            j = (i + step) % len(self)
            image = None if j in self._bad else self._load(j)
            if image is not None:
                return {"image": torch.from_numpy(image), "index": i, "ok": step == 0}
        blank = torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8)
        return {"image": blank, "index": i, "ok": False}

    def _load(self, j: int) -> np.ndarray | None:
        try:
            return self._reader.load(int(self._positions[j]), self.resolution, self.config.square)
        except Exception as e:  # a corrupt item must never stop training or kill a worker
            self._bad.add(j)
            if len(self._bad) <= 10:
                log.warning("skipping unreadable image %s: %s", self.key(j), one_line(e))
            return None

    def encoding(self, i: int) -> str | None:
        """File format image ``i`` is stored in ("JPEG", "PNG", ...); None for prepared shards or unreadable items.

        Lossy references matter for FID: it rewards samples that share their artefacts.
        """
        return self._reader.encoding(int(self._positions[i]))

    def describe(self) -> dict[str, Any]:
        """JSON-able summary recorded in checkpoints."""
        prepared_skips = self._reader.meta["skipped"] if isinstance(self._reader, _ShardReader) else 0
        return {
            "kind": self._reader.kind,
            "source": self._reader.source,
            "split": self.split,
            "resolution": self.resolution,
            "square": self.config.square,
            "fraction": self.config.fraction,
            "subset_seed": self.config.subset_seed,
            "validation_fraction": self.config.validation_fraction,
            "images": len(self),
            "source_images": len(self._reader),
            "skipped": prepared_skips + len(self._bad),
            **self._reader.info(),
        }


def open_dataset(config: DataConfig, resolution: int, split: Split = "train") -> ImageDataset:
    """Open ``config.source`` (kind detected) for training; raises BedgenError before any work."""
    config.validate()
    _check_resolution(resolution)
    if split not in SPLITS:
        raise BedgenError(f"split must be one of {', '.join(SPLITS)}, not {split!r}")
    reader = _open_reader(config, resolution)
    if isinstance(reader, _ShardReader):
        positions = _shard_positions(reader, config)
    else:
        everything = np.arange(len(reader), dtype=np.int64)
        positions = _select_subset(reader.keys, everything, config.fraction, config.subset_seed, len(reader))
    positions = _split(reader.keys, positions, config.validation_fraction, split)
    return ImageDataset(reader, positions, resolution, config, split)


def _check_resolution(resolution: int) -> None:
    if not isinstance(resolution, int) or resolution < MIN_RESOLUTION:
        raise BedgenError(f"resolution must be an integer >= {MIN_RESOLUTION}, got {resolution!r}")


def _open_reader(config: DataConfig, resolution: int) -> _Reader:
    source = config.source.strip()
    path = Path(source).expanduser().resolve()  # absolute: describe() goes into checkpoints
    if not path.exists():
        if parse_hub_ref(source) is None:
            raise BedgenError(
                f"data source '{source}' does not exist; give an image folder, an LSUN LMDB directory, "
                "prepared shards or a Hugging Face dataset id org/name"
            )
        return _open_huggingface(source, config, local_tables=False)
    if path.is_file():
        return _open_file(path, config)
    meta = _read_meta(path)
    if meta is not None:
        return _open_shards(path, meta, config, resolution)
    if (path / "data.mdb").is_file():
        return _open_lmdb(path)
    images, tables = _scan_folder(path)
    if tables:
        return _open_huggingface(str(path), config, local_tables=True)
    if not images:
        raise BedgenError(
            f"no images found in {path} (looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return _FolderReader(path, images)


def _open_file(path: Path, config: DataConfig) -> _Reader:
    if path.suffix.lower() == ".mdb":
        return _open_lmdb(path)
    if path.suffix.lower() in TABLE_SUFFIXES:
        return _open_huggingface(str(path), config, local_tables=True)
    raise BedgenError(
        f"data source {path} is a file; give a folder of images, an LSUN LMDB directory (with data.mdb), "
        "a parquet/arrow file or folder, or prepared shards"
    )


# --- prepare ---------------------------------------------------------------------------


def prepare(
    config: DataConfig,
    out: Path,
    resolution: int,
    shard_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Decode the selected images once into uint8 shards at ``resolution``; resumable.

    ``validation_fraction`` is not applied: shards keep the source keys, and
    ``open_dataset`` splits them exactly as it splits the raw source. ``progress`` is
    called with (images done, images selected). ``workers`` threads decode (Pillow
    releases the GIL while decoding and resizing).
    """
    config.validate()
    _check_resolution(resolution)
    if shard_size < 1:
        raise BedgenError(f"shard_size must be at least 1, got {shard_size}")
    out = Path(out).expanduser()
    reader = _open_reader(config, resolution)
    if isinstance(reader, _ShardReader):
        raise BedgenError(f"{config.source} already holds prepared shards; train on it directly")
    everything = np.arange(len(reader), dtype=np.int64)
    positions = _select_subset(reader.keys, everything, config.fraction, config.subset_seed, len(reader))
    meta = _start_meta(out, _prepare_settings(config, reader, resolution, len(positions), shard_size))
    finished = {s["index"] for s in meta["shards"]}
    chunks = [positions[start:start + shard_size] for start in range(0, len(positions), shard_size)]
    done = sum(len(chunks[n]) for n in finished)
    if progress:
        progress(done, len(positions))
    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        for n, chunk in enumerate(chunks):
            if n in finished:
                continue
            shard = _write_shard(out, n, chunk, reader, resolution, config.square, pool, progress, done, len(positions))
            meta["shards"].append(shard)
            done += len(chunk)
            _commit(out, meta)
    meta["complete"] = True
    _commit(out, meta)
    return meta


def _prepare_settings(
    config: DataConfig, reader: _Reader, resolution: int, selected: int, shard_size: int
) -> dict[str, Any]:
    return {
        "format": SHARDS_FORMAT,
        "format_version": SHARDS_VERSION,
        "kind": reader.kind,
        "source": reader.source,  # absolute for local sources
        "image_column": getattr(reader, "column", None),
        "resolution": resolution,
        "square": config.square,
        "fraction": config.fraction,
        "subset_seed": config.subset_seed,
        "source_count": len(reader),
        "selected": selected,
        "shard_size": shard_size,
        "num_shards": -(-selected // shard_size),
    }


def _start_meta(out: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Fresh meta for a new folder, or the recorded one (minus lost shards) on a rerun."""
    meta = _read_meta(out) if out.is_dir() else None
    if meta is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BedgenError(f"{out} exists and is not a bedgen shards folder; choose a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
        meta = {**settings, "shards": [], "count": 0, "skipped": 0, "skipped_keys": [], "complete": False}
        _commit(out, meta)
        return meta
    changed = [
        f"{k}: {meta.get(k)!r} -> {settings[k]!r}" for k in PREPARE_SETTINGS if meta.get(k) != settings[k]
    ]
    if changed:
        raise BedgenError(
            f"{out} was prepared with other settings ({'; '.join(changed)}); use another folder or delete it"
        )
    for stale in out.glob(".*.tmp-*"):  # half-written files of the interrupted run
        stale.unlink()
    meta["shards"] = [s for s in meta["shards"] if (out / s["file"]).is_file() and (out / s["keys"]).is_file()]
    return meta


def _write_shard(
    out: Path, n: int, chunk: np.ndarray, reader: _Reader, resolution: int, square: Square,
    pool: ThreadPoolExecutor, progress: Callable[[int, int], None] | None, done: int, total: int,
) -> dict[str, Any]:
    def load(j: int) -> np.ndarray | None:
        try:
            return reader.load(int(j), resolution, square)
        except Exception as e:  # corrupt images are skipped and recorded, not fatal
            log.warning("skipping unreadable image %s: %s", reader.key(int(j)), one_line(e))
            return None

    images = np.empty((len(chunk), 3, resolution, resolution), dtype=np.uint8)
    keys: list[str] = []
    skipped: list[str] = []
    futures = [pool.submit(load, j) for j in chunk]
    try:
        for offset, (j, future) in enumerate(zip(chunk, futures)):
            image = future.result()
            if image is None:
                skipped.append(reader.key(int(j)))
            else:
                images[len(keys)] = image
                keys.append(reader.key(int(j)))
            if progress:
                progress(done + offset + 1, total)
    finally:
        for future in futures:
            future.cancel()  # an interrupted prepare stops decoding this shard
    shard = {
        "index": n, "file": f"shard-{n:05d}.npy", "keys": f"keys-{n:05d}.json",
        "count": len(keys), "skipped": skipped,
    }
    atomic_write(out / shard["file"], lambda f: np.save(f, images[: len(keys)], allow_pickle=False))
    atomic_write(out / shard["keys"], lambda f: f.write(json.dumps(keys).encode()))
    return shard


def _commit(out: Path, meta: dict[str, Any]) -> None:
    commit_shards(out / META, meta)


def commit_shards(path: Path, meta: dict[str, Any]) -> None:
    """Recompute a sharded folder's totals and write its manifest atomically: the point where
    a shard counts as done (prepared data here, LPIPS indexes in ``bedgen.evaluation.neighbours``)."""
    meta["shards"].sort(key=lambda s: s["index"])
    meta["count"] = sum(s["count"] for s in meta["shards"])
    meta["skipped_keys"] = [k for s in meta["shards"] for k in s["skipped"]]
    meta["skipped"] = len(meta["skipped_keys"])
    atomic_write(path, lambda f: f.write(json.dumps(meta, indent=1).encode()))


__all__ = ["DataConfig", "ImageDataset", "Square", "decode", "open_dataset", "prepare", "preprocess", "subset_size"]
