"""Exact LPIPS nearest neighbours: which indexed (training) images is an image closest to?

The metric, LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep
Features as a Perceptual Metric"):

    LPIPS(a, b) = Σ_l 1/(H_l W_l) Σ_{h,w} Σ_c w_lc (f̂a_lchw − f̂b_lchw)²

f_l are backbone activations (AlexNet or VGG16 on lpips's ScalingLayer of inputs in
[-1, 1]), f̂ = f / (sqrt(Σ_c f²) + 1e-10) exactly as ``lpips.normalize_tensor``, and
w_l ≥ 0 are the shipped linear weights (all non-negative; checked on load). So

    LPIPS(a, b) = ||φ(a) − φ(b)||²,   φ(x) = concat_l sqrt(w_lc / (H_l W_l)) · f̂_l(x),

a plain squared Euclidean distance, and "the k training images closest to x" is an
exact k-nearest-neighbour search over stored φ's. φ's dimension D is Σ_l C_l H_l W_l
(31 872 for AlexNet at 64 px).

Index folder (``build_index``; every file written atomically, index.json last)::

    index.json               settings, data description, fingerprint, shard list, typical NN distance
    projection.npz           PCA of a sample of φ's: mean μ (D,), components P (R, D), orthonormal rows
    shard-00000.npy          fp16 (n, D) φ's, read back with mmap
    shard-00000.reduced.npy  fp32 (n, R) ρ = P(φ − μ), the prefilter
    shard-00000.rows.npy     per image: dataset position, |φ̃|², radius ||φ̃ − φ||, |ρ̃|², ρ's radius
    shard-00000.keys.json    the source keys (relative path, LSUN id, ...)

Search is exact, in three stages:

1. Lower bounds for every indexed image from ρ: P has orthonormal rows (a PCA of a
   seeded sample of up to 1024 indexed images, fitted before the first shard and kept
   on resume), so ||ρ(q) − ρ(b)|| ≤ ||φ(q) − φ(b)||. Each bound also subtracts the
   measured radius of every rounding on the way (ρ stored as fp32; the fp32 matmul's
   error, at most γ_R |ρq| |ρb| with γ_n = n·2⁻²⁴ / (1 − n·2⁻²⁴) for any summation
   order; P's norm). ``exhaustive=True`` computes the bounds from every stored fp16 φ̃
   instead (chunked fp32 matmul, d = |q|² + |b|² − 2 q·b with |b|² precomputed).
2. Branch and bound: images are refined in increasing lower-bound order. Refining
   gives the distance d̃ to the stored fp16 φ̃ — from an fp32 dot product (error
   ≤ γ_D |q||φ̃|, ~1e-3), then in fp64 for the few images whose interval still reaches
   τ — and, with the radius r = ||φ̃ − φ|| stored per image, a rigorous interval
   [(√d̃ − r)², (√d̃ + r)²] for the true distance. τ = the k-th smallest upper end;
   refining stops when the next lower bound exceeds τ. Every image not refined, and
   every refined one whose interval starts above τ, is provably outside the top k.
3. Exact re-rank: fp16 rounding moves a distance by up to 2√d·r + r², r ≈ 2e-4·|φ|.
   Measured errors are ≤ 1e-5 (tests, bench/RESULTS.md), but the rigorous bound passes
   1e-4 for far pairs, so the remaining candidates (usually k; a few more when fp16
   intervals overlap τ) are read back from the source by their keys and embedded again
   in fp32. Their exact distances (fp64 sums) give the top k and the reported LPIPS,
   equal to ``lpips.LPIPS`` up to fp32 rounding (~1e-8). ``rerank=False`` skips this
   and reports the distances to the stored fp16 φ̃ (no source access).

"Exact" is with respect to φ as computed here: another device or thread count moves φ
by ~1e-7 relative, far below any gap that could reorder neighbours in practice.

Memorisation: at the end of a build, the distance from each of up to 256 indexed
images (seeded sample) to its nearest *other* indexed image gives the typical
nearest-neighbour distance (median and 5th percentile, in index.json). A query is
flagged as a possible memorised copy when its nearest distance is below
``MEMORISATION_FACTOR`` × that median: much closer to one training image than distinct
training images are to each other. Half the median sits below most distinct pairs (the
5th percentile, recorded to check this on a given dataset, was 0.56x the median for
procedural rooms at 64 px) yet well above copies: JPEG-recompressed or down-and-up-sized
rooms measured 25-60x closer than the median, +10% brightness 10x, a 3-pixel shift 3x.
The threshold is relative, in the spirit of Carlini et al. 2023 ("Extracting Training
Data from Diffusion Models"), because absolute LPIPS values change with the backbone,
its weights and the resolution. The factor was set with torchvision's pretrained
backbone: LPIPS is a perceptual distance only with those weights, so an index records
whether its backbone file is that one (SHA-256 against the hash torchvision publishes in
the file name), and with any other weights its results carry no verdict, only
``NON_STANDARD_NOTE``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from ..data.datasets import DataConfig, ImageDataset, commit_shards, decode, open_dataset, preprocess
from ..core.files import atomic_write
from ..core.checks import whole_number
from ..core.errors import BedgenError, one_line
from ..core.images import load_image
from ..models.lpips import LpipsEmbedder, check_net, shared_embedder, strict_fp32

log = logging.getLogger(__name__)

INDEX_FORMAT = "bedgen-lpips-index"
INDEX_VERSION = 1
MANIFEST = "index.json"
PROJECTION_FILE = "projection.npz"
# What a rerun into the same folder must agree on; anything else would mix two indexes.
BUILD_SETTINGS = (
    "format_version", "net", "resolution", "square", "fraction", "subset_seed", "image_column",
    "kind", "source", "source_images", "fingerprint", "shard_size", "dim",
)
SHARD_BYTES = 512 * 2**20  # one shard's fp16 φ's are held in memory while it is built
PCA_DIM = 256  # prefilter dimension R
PCA_FIT_IMAGES = 1024
PCA_FIT_ELEMENTS = 2**25  # the fp64 copy of the fit sample stays under 256 MiB
PCA_SEED = 0
TYPICAL_NN_SAMPLE = 256
TYPICAL_NN_SEED = 0
# nearest < 0.5 × median nearest-neighbour distance inside the training set = likely copy
MEMORISATION_FACTOR = 0.5
# What stands instead of a verdict when the backbone is not torchvision's pretrained one.
NON_STANDARD_NOTE = "(non-standard LPIPS weights: not comparable)"
FP32_ROUNDOFF = 2.0**-24
FP64_ROUNDOFF = 2.0**-53
BOUND_SLACK = 1e-9  # relative widening of every bound: fp64 rounding of the bookkeeping
# A re-embedded image may differ from its stored φ by its fp16 radius plus device noise
# (CPU vs GPU kernels: ~1e-6 relative); more than this means the file changed.
CHANGED_TOLERANCE = 1e-3
REFINE_ELEMENTS = 2**22  # stored vectors per refinement block, in elements (fp16 + fp32 copies: 24 MiB)
SCAN_ELEMENTS = 2**23  # fp32 elements per exhaustive-scan block (32 MiB)
BOUND_ELEMENTS = 2**24  # lower bounds held at once: indexed images × queries
ROW_DTYPE = np.dtype([
    ("position", "<i8"),  # index into the dataset the index was built from
    ("sqnorm", "<f8"),  # |φ̃|² of the stored fp16 vector
    ("radius", "<f8"),  # ||φ̃ − φ||, rounded up
    ("reduced_sqnorm", "<f8"),  # |ρ̃|² of the stored fp32 vector
    ("reduced_radius", "<f8"),  # ||ρ̃ − ρ||, rounded up
])


def embedder_for(index: "LpipsIndex", device: str = "auto") -> LpipsEmbedder:
    """The embedder an index was built with (checked by fingerprint), shared by every query."""
    try:
        embedder = shared_embedder(index.net, index.lpips_weights, device)
    except BedgenError as e:
        raise BedgenError(f"{index.path} was built with LPIPS {index.net} weights "
                          f"{index.lpips_weights or '(torchvision pretrained)'}: {e}") from None
    index.check_embedder(embedder)
    return embedder


# --- the prefilter projection ρ ----------------------------------------------------------


@dataclass
class _Projection:
    """ρ(x) = P (φ(x) − μ) with P's rows orthonormal (PCA of a sample of the index).

    Any such P shrinks distances, so ||ρ(a) − ρ(b)|| / norm_bound ≤ ||φ(a) − φ(b)||
    (norm_bound ≥ the spectral norm of the stored fp32 P, ≈ 1). μ cancels in differences;
    it only keeps ρ small so the fp32 matmul's error is small.
    """

    mean: np.ndarray  # (D,) float32
    components: np.ndarray  # (R, D) float32
    norm_bound: float
    _cache: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def dim(self) -> int:
        return self.components.shape[0]

    def reduce(self, phi: torch.Tensor) -> torch.Tensor:
        """float32 (n, D) φ -> float64 (n, R) ρ, in fp64 so its own rounding is negligible.

        Pφ − Pμ rather than P(φ − μ): the same to fp64 rounding, without an (n, D) temporary.
        """
        if "components" not in self._cache:
            components = torch.from_numpy(self.components).double()
            self._cache["shift"] = torch.from_numpy(self.mean).double() @ components.T
            self._cache["components"] = components
        return phi.double() @ self._cache["components"].T - self._cache["shift"]

    @classmethod
    def fit(cls, sample: torch.Tensor) -> "_Projection":
        """PCA by the n × n Gram matrix (n ≪ D), orthonormalised again by QR in fp64."""
        if len(sample) < 2:  # one image (or none readable): no direction to keep, bounds are 0
            mean = sample[0] if len(sample) else torch.zeros(sample.shape[1])
            return cls(mean.float().numpy(), np.zeros((0, sample.shape[1]), np.float32), 1.0)
        x = sample.double()
        mean = x.mean(dim=0)
        x -= mean
        eigenvalues, eigenvectors = torch.linalg.eigh(x @ x.T)
        order = torch.argsort(eigenvalues, descending=True)[:PCA_DIM]
        order = order[eigenvalues[order] > eigenvalues.max().clamp(min=0) * 1e-10]
        if len(order) == 0:  # all images identical
            components = torch.zeros(0, x.shape[1])
        else:
            directions, _ = torch.linalg.qr(x.T @ eigenvectors[:, order])
            components = directions.T.float()
        return cls(mean.float().numpy(), components.contiguous().numpy(), _spectral_norm_bound(components))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda f: np.savez(f, mean=self.mean, components=self.components,
                                               norm_bound=np.float64(self.norm_bound)))

    @classmethod
    def load(cls, path: Path, dim: int) -> "_Projection":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                projection = cls(arrays["mean"], arrays["components"], float(arrays["norm_bound"]))
        except FileNotFoundError:
            raise BedgenError(f"{path} is missing; the index is damaged, build it again into a new folder") from None
        except (OSError, ValueError, KeyError) as e:
            raise BedgenError(f"{path} is damaged ({one_line(e)}); build the index again into a new folder") from None
        if projection.mean.shape != (dim,) or projection.components.shape[1:] != (dim,):
            raise BedgenError(f"{path} does not match the index's dimension {dim}; build the index again")
        return projection


def _spectral_norm_bound(components: torch.Tensor) -> float:
    if len(components) == 0:
        return 1.0
    c = components.double()
    largest = float(torch.linalg.eigvalsh(c @ c.T).max().clamp(min=0).sqrt())
    return max(largest, 1.0) * (1 + 1e-12)


# --- building -------------------------------------------------------------------------------


def build_index(
    source: str,
    out: str | os.PathLike[str],
    resolution: int = 64,
    net: str = "alex",
    lpips_weights: str | os.PathLike[str] | None = None,
    square: str = "crop",
    fraction: float = 1.0,
    batch_size: int = 64,
    shard_size: int = 4096,
    progress: Callable[[int, int], None] | None = None,
    *,
    image_column: str | None = None,
    device: str = "auto",
) -> Path:
    """Embed every image of ``source`` (anything ``bedgen train`` reads, preprocessed the same
    way) into an LPIPS index at ``out``; resumable, and a no-op on a complete index.

    ``progress(done, total)`` counts images. Returns the index folder.
    """
    batch_size, shard_size = (whole_number(name, value, 1) for name, value in
                              (("batch_size", batch_size), ("shard_size", shard_size)))
    check_net(net)  # before the dataset is opened
    config = DataConfig(source=source, square=square, fraction=fraction, validation_fraction=0.0,
                        image_column=image_column, flip=False)
    dataset = open_dataset(config, resolution, "train")
    embedder = shared_embedder(net, lpips_weights, device)
    out = Path(out).expanduser().resolve()
    settings = _build_settings(dataset, embedder, resolution, shard_size)
    manifest = _start_manifest(out, settings, embedder)
    if manifest["complete"]:
        log.info("%s is already a complete index of %d images; nothing to do", out, manifest["count"])
        return out
    projection = _projection_for(out, dataset, embedder, batch_size)
    _embed_shards(out, manifest, dataset, embedder, projection, batch_size, progress)
    _finish(out, manifest, dataset)
    return out


def _build_settings(dataset: ImageDataset, embedder: LpipsEmbedder, resolution: int, shard_size: int) -> dict[str, Any]:
    shapes = embedder.layer_shapes(resolution)
    dim = sum(s.size for s in shapes)
    described = dataset.describe()
    rows_per_shard = max(1, min(shard_size, SHARD_BYTES // (2 * dim)))
    return {
        "format": INDEX_FORMAT,
        "format_version": INDEX_VERSION,
        "net": embedder.net,
        "resolution": resolution,
        "square": dataset.config.square,
        "fraction": dataset.config.fraction,
        "subset_seed": dataset.config.subset_seed,
        "image_column": dataset.config.image_column,
        "kind": described["kind"],
        "source": described["source"],  # absolute for local sources
        "source_images": len(dataset),
        "fingerprint": embedder.fingerprint,
        "shard_size": shard_size,
        "rows_per_shard": rows_per_shard,  # shard_size, lowered so a shard's fp16 φ's fit in SHARD_BYTES
        "num_shards": -(-len(dataset) // rows_per_shard),
        "dim": dim,
        "layers": [{"channels": s.channels, "height": s.height, "width": s.width} for s in shapes],
    }


def _weights_record(embedder: LpipsEmbedder) -> dict[str, Any]:
    """Where the backbone came from and whether it is the standard one; refreshed on every rerun
    (same fingerprint, but the file may have moved)."""
    return {"lpips_weights": str(embedder.weights) if embedder.weights else None,
            "lpips_weights_sha256": embedder.weights_sha256, "lpips_standard": embedder.standard}


def _start_manifest(out: Path, settings: dict[str, Any], embedder: LpipsEmbedder) -> dict[str, Any]:
    """A fresh manifest for a new folder, or the recorded one (minus lost shards) on a rerun."""
    manifest = _read_manifest(out) if (out / MANIFEST).is_file() else None
    if manifest is None:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise BedgenError(f"{out} exists and is not an LPIPS index; choose a new or empty folder for --out")
        out.mkdir(parents=True, exist_ok=True)
        manifest = {
            **settings, **_weights_record(embedder), "data": None,
            "count": 0, "skipped": 0, "skipped_keys": [], "shards": [], "typical_nn": None, "complete": False,
        }
        _commit(out, manifest)
        return manifest
    changed = [f"{k}: {manifest.get(k)!r} -> {settings[k]!r}" for k in BUILD_SETTINGS if manifest.get(k) != settings[k]]
    if changed:
        raise BedgenError(
            f"{out} holds an LPIPS index built with other settings ({'; '.join(changed)}); "
            "use another --out folder or delete it"
        )
    for stale in out.glob(".*.tmp-*"):  # half-written files of an interrupted run
        stale.unlink()
    manifest.update(_weights_record(embedder))
    kept = [s for s in manifest["shards"] if all((out / name).is_file() for name in _shard_files(s))]
    if len(kept) < len(manifest["shards"]):
        manifest["complete"] = False
    manifest["shards"] = kept
    return manifest


def _shard_files(shard: dict[str, Any]) -> list[str]:
    if not shard["count"]:
        return []  # every image of it was unreadable: nothing stored
    name = shard["name"]
    return [f"{name}.npy", f"{name}.reduced.npy", f"{name}.rows.npy", f"{name}.keys.json"]


def _commit(out: Path, manifest: dict[str, Any]) -> None:
    commit_shards(out / MANIFEST, manifest)


def _projection_for(out: Path, dataset: ImageDataset, embedder: LpipsEmbedder, batch_size: int) -> _Projection:
    """The saved projection on a rerun (shards already use it), else one fitted on a seeded sample."""
    dim = embedder.dim(dataset.resolution)
    path = out / PROJECTION_FILE
    if path.is_file():
        return _Projection.load(path, dim)
    size = min(PCA_FIT_IMAGES, len(dataset), max(2, PCA_FIT_ELEMENTS // dim))
    positions = np.sort(np.random.default_rng(PCA_SEED).choice(len(dataset), size, replace=False))
    sample = [phi for phi, _, _ in _embedded_batches(dataset, positions.tolist(), embedder, batch_size)]
    projection = _Projection.fit(torch.cat(sample) if sample else torch.zeros(0, dim))
    projection.save(path)
    return projection


def _embedded_batches(
    dataset: ImageDataset, positions: Sequence[int], embedder: LpipsEmbedder, batch_size: int
) -> Iterator[tuple[torch.Tensor, list[int], list[int]]]:
    """(φ of the readable images, their positions, positions of unreadable ones) per batch.

    ImageDataset replaces an unreadable image by the next readable one and says so with
    ok=False; that substitute is indexed at its own position, so it is dropped here.
    """
    # One worker decodes the next batch while this process embeds; not worth a process for a few batches.
    workers = 1 if len(positions) >= 4 * batch_size else 0
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, sampler=list(positions), num_workers=workers)
    for batch in loader:
        ok = batch["ok"].bool()
        yield embedder.embed(batch["image"][ok]), batch["index"][ok].tolist(), batch["index"][~ok].tolist()


class _ShardBuffer:
    """One shard being built: fp16 φ's, fp32 ρ's and the per-image radii of both roundings."""

    def __init__(self, capacity: int, dim: int, projection: _Projection):
        self.projection = projection
        self.embeddings = np.empty((capacity, dim), np.float16)
        self.reduced = np.empty((capacity, projection.dim), np.float32)
        self.rows = np.zeros(capacity, ROW_DTYPE)
        self.keys: list[str] = []
        self.skipped: list[str] = []

    def add(self, phi: torch.Tensor, keys: list[str], positions: list[int]) -> None:
        start, stop = len(self.keys), len(self.keys) + len(keys)
        stored = phi.half()
        reduced = self.projection.reduce(phi)
        reduced_stored = reduced.float()
        self.embeddings[start:stop] = stored.numpy()
        self.reduced[start:stop] = reduced_stored.numpy()
        rows = self.rows[start:stop]
        rows["position"] = positions
        rows["sqnorm"] = _norms64(stored).square().numpy()
        rows["radius"] = _rounding_radius(stored, phi)
        rows["reduced_sqnorm"] = _norms64(reduced_stored).square().numpy()
        rows["reduced_radius"] = _rounded_up((reduced_stored.double() - reduced).norm(dim=1))
        self.keys.extend(keys)

    def save(self, out: Path, number: int) -> dict[str, Any]:
        shard = {"index": number, "name": f"shard-{number:05d}", "count": len(self.keys), "skipped": self.skipped}
        if self.keys:
            n, name = len(self.keys), shard["name"]
            for suffix, array in ((".npy", self.embeddings), (".reduced.npy", self.reduced), (".rows.npy", self.rows)):
                atomic_write(out / f"{name}{suffix}", lambda f, a=array: np.save(f, a[:n], allow_pickle=False))
            atomic_write(out / f"{name}.keys.json", lambda f: f.write(json.dumps(self.keys).encode()))
        return shard


def _rounded_up(values: torch.Tensor) -> np.ndarray:
    return np.nextafter(values.numpy(), np.inf)


def _norms64(x: torch.Tensor) -> torch.Tensor:
    """Row norms summed in fp64 (fp16/fp32 squares are exact there), without an fp64 copy of x."""
    return torch.linalg.vector_norm(x, dim=1, dtype=torch.float64)


def _rounding_radius(stored: torch.Tensor, phi: torch.Tensor) -> np.ndarray:
    """An upper bound on ||φ̃ − φ|| per row: φ − fp16(φ) is exact in fp32 (less than half an
    fp16 ulp, on φ's fp32 grid), its norm is summed in fp64, then rounded up past that sum's error."""
    norms = _norms64(stored.float() - phi) * (1 + _gamma(phi.shape[1] + 2, FP64_ROUNDOFF))
    return _rounded_up(norms)


def _embed_shards(
    out: Path, manifest: dict[str, Any], dataset: ImageDataset, embedder: LpipsEmbedder,
    projection: _Projection, batch_size: int, progress: Callable[[int, int], None] | None,
) -> None:
    """Shard n holds dataset positions [n·rows, (n+1)·rows): a rerun knows what each one covers."""
    rows, total = manifest["rows_per_shard"], len(dataset)
    finished = {s["index"] for s in manifest["shards"]}
    done = sum(min(rows, total - n * rows) for n in finished)
    if progress:
        progress(done, total)
    for number in range(manifest["num_shards"]):
        if number in finished:
            continue
        positions = range(number * rows, min(total, (number + 1) * rows))
        buffer = _ShardBuffer(len(positions), manifest["dim"], projection)
        for phi, ok, bad in _embedded_batches(dataset, positions, embedder, batch_size):
            buffer.add(phi, [dataset.key(p) for p in ok], ok)
            buffer.skipped.extend(dataset.key(p) for p in bad)
            done += len(ok) + len(bad)
            if progress:
                progress(done, total)
        manifest["shards"].append(buffer.save(out, number))
        _commit(out, manifest)


def _finish(out: Path, manifest: dict[str, Any], dataset: ImageDataset) -> None:
    if manifest["count"] == 0:
        raise BedgenError(f"none of the {len(dataset)} images of {manifest['source']} could be read; nothing to index")
    manifest["data"] = dataset.describe()
    manifest["data"]["skipped"] = manifest["skipped"]
    manifest["typical_nn"] = _typical_nn(LpipsIndex(out, manifest))
    manifest["complete"] = True
    _commit(out, manifest)


def _typical_nn(index: "LpipsIndex") -> dict[str, Any]:
    """Median and 5th percentile of the distance from sampled indexed images to their nearest other one.

    Queries are the stored fp16 φ̃'s and distances those to stored φ̃'s (no re-rank):
    a statistic, good to ~1e-5, and it needs no source access.
    """
    stats: dict[str, Any] = {"median": None, "p05": None, "sample": 0, "seed": TYPICAL_NN_SEED}
    if len(index) < 2:
        return stats
    rng = np.random.default_rng(TYPICAL_NN_SEED)
    rows = np.sort(rng.choice(len(index), min(len(index), TYPICAL_NN_SAMPLE), replace=False))
    queries = torch.from_numpy(index._gather(rows)).float()
    nearest = []
    for row, found in zip(rows, index._candidates(queries, k=2, exhaustive=False)):
        order = np.lexsort((found.rows, found.stored))
        others = order[found.rows[order] != row]
        nearest.append(float(found.stored[others[0]]))
    stats.update(median=float(np.median(nearest)), p05=float(np.percentile(nearest, 5)), sample=len(rows))
    return stats


# --- opening and searching ------------------------------------------------------------------


@dataclass
class Neighbour:
    rank: int  # 1 = nearest
    key: str  # the source's key: relative path, LSUN id, split/row ...
    source: str  # the data source the index was built from
    path: str | None  # absolute file path for image-folder sources, else None
    lpips: float
    row: int = -1  # position in the index (what load_neighbour_image reads)


@dataclass
class SearchResult:
    neighbours: list[Neighbour]
    nearest: float  # LPIPS of neighbours[0]
    typical_nn: float | None  # median nearest-neighbour distance inside the index; None if unknown
    memorised: bool  # below_threshold, with the standard backbone weights (a verdict)
    evaluated: int = 0  # images whose full-dimension (fp16) distance was computed
    candidates: int = 0  # images that could still be in the top k after that; re-embedded when re-ranking
    below_threshold: bool = False  # nearest < MEMORISATION_FACTOR × typical_nn, whatever the weights
    standard_weights: bool = True  # the index's backbone is torchvision's pretrained one; else no verdict


@dataclass
class _Candidates:
    """Every image that may be in one query's top k, with distances to the stored fp16 φ̃."""

    rows: np.ndarray
    stored: np.ndarray
    evaluated: int


@dataclass
class _Queries:
    """Query φ's in the forms the stages use, with the rounding radius of the fp32 ρ."""

    full32: torch.Tensor
    full64: torch.Tensor
    sqnorm: np.ndarray
    reduced32: torch.Tensor
    reduced_sqnorm: np.ndarray
    reduced_radius: np.ndarray

    @classmethod
    def of(cls, phi: torch.Tensor, projection: _Projection) -> "_Queries":
        full64 = phi.double()
        reduced = projection.reduce(phi)
        reduced32 = reduced.float()
        return cls(
            phi.float().contiguous(), full64, full64.square().sum(1).numpy(), reduced32,
            reduced32.double().square().sum(1).numpy(), _rounded_up((reduced32.double() - reduced).norm(dim=1)),
        )


class _Shard:
    def __init__(self, folder: Path, entry: dict[str, Any], dim: int, reduced_dim: int):
        name, count = entry["name"], entry["count"]
        self.count = count
        self.embeddings = _load_array(folder / f"{name}.npy", np.float16, (count, dim), mmap=True)
        self.reduced = _load_array(folder / f"{name}.reduced.npy", np.float32, (count, reduced_dim), mmap=True)
        self.rows = _load_array(folder / f"{name}.rows.npy", ROW_DTYPE, (count,), mmap=False)
        self._keys_path = folder / f"{name}.keys.json"
        self._keys: list[str] | None = None

    def keys(self) -> list[str]:
        if self._keys is None:  # read on first use: a big index's keys are many strings
            try:
                keys = json.loads(self._keys_path.read_text())
            except (OSError, ValueError) as e:
                raise BedgenError(f"{self._keys_path} is missing or damaged ({one_line(e)}); "
                                  "build the index again") from None
            if not isinstance(keys, list) or len(keys) != self.count:
                raise BedgenError(f"{self._keys_path} does not list {self.count} keys; build the index again")
            self._keys = keys
        return self._keys


def _load_array(path: Path, dtype: Any, shape: tuple[int, ...], mmap: bool) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise BedgenError(f"{path} is missing; the index is damaged, build it again into a new folder") from None
    except (OSError, ValueError) as e:
        raise BedgenError(f"{path} is damaged ({one_line(e)}); build the index again into a new folder") from None
    if array.dtype != np.dtype(dtype) or array.shape != shape:
        raise BedgenError(f"{path} holds {array.dtype} {array.shape}, expected {np.dtype(dtype)} {shape}; "
                          "build the index again into a new folder")
    return array


def _read_manifest(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise BedgenError(f"no LPIPS index at {path}: it does not exist; build one with "
                          f"`bedgen index --data SRC --out {path}`")
    file = path / MANIFEST
    if not file.is_file():
        raise BedgenError(f"{path} is not an LPIPS index (no {MANIFEST}); build one with "
                          f"`bedgen index --data SRC --out {path}`")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, ValueError) as e:
        raise BedgenError(f"{file} is not valid JSON ({one_line(e)}); "
                          "delete the folder and build the index again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != INDEX_FORMAT:
        raise BedgenError(f"{path} is not an LPIPS index ({MANIFEST} of another format)")
    if manifest.get("format_version") != INDEX_VERSION:
        raise BedgenError(f"{path} is an LPIPS index of format version {manifest.get('format_version')}; "
                          f"this bedgen reads {INDEX_VERSION}: build it again")
    return manifest


class LpipsIndex:
    """A built index, opened read-only (``LpipsIndex.open``); see the module docstring."""

    def __init__(self, path: Path, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest
        self.net: str = manifest["net"]
        self.resolution: int = manifest["resolution"]
        self.square: str = manifest["square"]
        self.fingerprint: str = manifest["fingerprint"]
        self.lpips_weights: str | None = manifest["lpips_weights"]
        # Indexes from before the record: torchvision's download (no file given) was the standard one.
        self.standard_weights: bool = bool(manifest.get("lpips_standard", self.lpips_weights is None))
        self.source: str = manifest["source"]
        self.kind: str = manifest["kind"]
        self.dim: int = manifest["dim"]
        self.typical_nn: dict[str, Any] = manifest.get("typical_nn") or {}
        self.projection = _Projection.load(path / PROJECTION_FILE, self.dim)
        entries = [s for s in manifest["shards"] if s["count"]]
        self._shards = [_Shard(path, s, self.dim, self.projection.dim) for s in entries]
        self._starts = np.cumsum([0] + [s.count for s in self._shards])
        self.count: int = int(self._starts[-1])
        self._dataset: ImageDataset | None = None
        self._lock = threading.Lock()
        self._local = threading.local()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "LpipsIndex":
        path = Path(path).expanduser().resolve()
        manifest = _read_manifest(path)
        if not manifest.get("complete"):
            raise BedgenError(
                f"the index at {path} is incomplete ({len(manifest['shards'])} of {manifest['num_shards']} shards); "
                "run bedgen index again to finish it"
            )
        return cls(path, manifest)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"LpipsIndex({str(self.path)!r}, net={self.net!r}, resolution={self.resolution}, count={self.count})"

    def check_embedder(self, embedder: LpipsEmbedder) -> None:
        if embedder.fingerprint != self.fingerprint:
            raise BedgenError(
                f"index was built with other LPIPS weights/net ({self.net}, fingerprint {self.fingerprint}) than "
                f"the query embedder ({embedder.net}, {embedder.fingerprint}); pass the backbone weights the index "
                f"was built with ({self.lpips_weights or 'torchvision pretrained'}) or rebuild the index"
            )

    # --- search ---------------------------------------------------------------------------

    def search(
        self,
        images: Any,
        k: int = 5,
        embedder: LpipsEmbedder | None = None,
        *,
        exhaustive: bool = False,
        rerank: bool = True,
    ) -> list[SearchResult]:
        """The exact LPIPS top k of each query image (PIL images or paths; one image counts as a list of one)."""
        k = self._check_k(k)
        if embedder is None:
            embedder = embedder_for(self)
        else:
            self.check_embedder(embedder)
        pixels = _query_pixels(images, self.resolution, self.square)
        if len(pixels) == 0:
            return []
        queries = torch.cat([embedder.embed(torch.from_numpy(pixels[a:a + 64])) for a in range(0, len(pixels), 64)])
        found = self._candidates(queries, k, exhaustive)
        if rerank:
            exact = self._exact_distances(queries, found, embedder)
        else:
            exact = [c.stored for c in found]
        return [self._result(c, d, k) for c, d in zip(found, exact)]

    def _check_k(self, k: Any) -> int:
        return whole_number("k", k, 1, self.count, why="(the images in this index)")

    def _result(self, found: _Candidates, distances: np.ndarray, k: int) -> SearchResult:
        order = np.lexsort((found.rows, distances))[:k]  # ties broken by index row, deterministically
        neighbours = []
        for rank, i in enumerate(order, start=1):
            row = int(found.rows[i])
            key = self.key(row)
            neighbours.append(Neighbour(rank, key, self.source, self._file_path(key), float(distances[i]), row))
        nearest = neighbours[0].lpips
        typical = self.typical_nn.get("median")
        below = bool(typical is not None and nearest < MEMORISATION_FACTOR * typical)
        return SearchResult(neighbours, nearest, typical, below and self.standard_weights, found.evaluated,
                             len(found.rows), below, self.standard_weights)

    def _candidates(self, queries: torch.Tensor, k: int, exhaustive: bool) -> list[_Candidates]:
        """Stages 1-2 of the module docstring, for each query."""
        state = _Queries.of(queries, self.projection)
        group = max(1, BOUND_ELEMENTS // max(1, self.count))
        found = []
        with strict_fp32():
            for start in range(0, len(queries), group):
                columns = range(start, min(len(queries), start + group))
                bounds = self._scan_full(state, columns) if exhaustive else self._scan_reduced(state, columns)
                for c, j in enumerate(columns):
                    found.append(self._branch_and_bound(state, j, np.ascontiguousarray(bounds[:, c]), k))
        return found

    def _scan_reduced(self, q: _Queries, columns: range) -> np.ndarray:
        """Lower bounds on LPIPS from ρ (fp32 matmul): (count, len(columns)) float64."""
        out = np.empty((self.count, len(columns)))
        gamma = _gamma(self.projection.dim, FP32_ROUNDOFF)
        q_sq, q_radius = q.reduced_sqnorm[columns.start:columns.stop], q.reduced_radius[columns.start:columns.stop]
        q_reduced = q.reduced32[columns.start:columns.stop]
        for shard, start in zip(self._shards, self._starts):
            dots = (_tensor(shard.reduced) @ q_reduced.T).double().numpy()
            low, _, _ = _distance_bounds(dots, q_sq, shard.rows["reduced_sqnorm"][:, None], gamma, self.projection.dim)
            distance = low - shard.rows["reduced_radius"][:, None] - q_radius
            out[start:start + shard.count] = _lower(distance / self.projection.norm_bound)
        return out

    def _scan_full(self, q: _Queries, columns: range) -> np.ndarray:
        """Lower bounds on LPIPS from every stored fp16 φ̃ (chunked fp32 matmul): (count, len(columns))."""
        out = np.empty((self.count, len(columns)))
        gamma = _gamma(self.dim, FP32_ROUNDOFF)
        q_sq, q_full = q.sqnorm[columns.start:columns.stop], q.full32[columns.start:columns.stop]
        block = max(1, SCAN_ELEMENTS // self.dim)
        # One buffer for every chunk: a fresh one would cost its page faults each time.
        buffer = torch.empty(min(block, max(s.count for s in self._shards)), self.dim)
        for shard, start in zip(self._shards, self._starts):
            for a in range(0, shard.count, block):
                b = min(shard.count, a + block)
                chunk = buffer[: b - a]
                chunk.copy_(_tensor(shard.embeddings[a:b]))
                dots = (chunk @ q_full.T).double().numpy()
                low, _, _ = _distance_bounds(dots, q_sq, shard.rows["sqnorm"][a:b, None], gamma, self.dim)
                out[start + a:start + b] = _lower(low - shard.rows["radius"][a:b, None])
        return out

    def _branch_and_bound(self, q: _Queries, j: int, lower: np.ndarray, k: int) -> _Candidates:
        """Refine images in increasing lower-bound order until the next bound exceeds τ (docstring, stage 2)."""
        largest = max(1, REFINE_ELEMENTS // self.dim)
        refined = _Refined(k)
        size = min(largest, max(16, 2 * k))  # blocks grow: most searches end within the first one
        for chunk in _ascending(lower):
            a = 0
            while a < len(chunk):
                block = chunk[a:a + size]
                wanted = block[lower[block] <= refined.tau]  # a prefix: the chunk is sorted
                if len(wanted):
                    self._refine(q, j, np.sort(wanted), refined)
                if len(wanted) < len(block):
                    return refined.candidates()
                a += len(block)
                size = min(largest, 2 * size)
        return refined.candidates()

    def _refine(self, q: _Queries, j: int, rows: np.ndarray, refined: "_Refined") -> None:
        """Bounds on the true distances of ``rows`` (sorted): fp32 first, fp64 for those near τ.

        The fp32 dot product's rigorous error (γ_D |q||φ̃|, ~1e-3) settles most images (a
        fused fp32 sum of (q − φ̃)², 30x tighter, measured 20% slower end to end); the few
        whose interval still reaches τ get the fp64 one, whose width is the fp16 radius.
        """
        stored = self._load(rows)
        fields = self._rows(rows)
        bounds = _distance_bounds((stored @ q.full32[j]).double().numpy(), q.sqnorm[j], fields["sqnorm"],
                                  _gamma(self.dim, FP32_ROUNDOFF), self.dim)
        refined.add(rows, *_widen(bounds, fields["radius"]))
        close = np.flatnonzero(refined.last_low <= refined.tau)
        if len(close):
            dots = (stored[torch.from_numpy(close)].double() @ q.full64[j]).numpy()
            bounds = _distance_bounds(dots, q.sqnorm[j], fields["sqnorm"][close],
                                      _gamma(self.dim, FP64_ROUNDOFF), self.dim)
            refined.tighten(close, *_widen(bounds, fields["radius"][close]))

    def _load(self, rows: np.ndarray) -> torch.Tensor:
        """Stored φ̃ of sorted index rows as float32 (exact: fp16 ⊂ fp32), in per-thread buffers."""
        half, single = self._buffers(len(rows))
        shards, local = self._locate(rows)
        at = 0
        for s in np.unique(shards):
            n = int(np.count_nonzero(shards == s))
            torch.index_select(_tensor(self._shards[s].embeddings), 0, torch.from_numpy(local[at:at + n]),
                               out=half[at:at + n])
            at += n
        single[: len(rows)].copy_(half[: len(rows)])
        return single[: len(rows)]

    def _buffers(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Reused across queries: fresh 30 MB buffers would cost their page faults every time.
        cached = getattr(self._local, "buffers", None)
        if cached is None or len(cached[0]) < rows:
            size = max(rows, min(self.count, max(1, REFINE_ELEMENTS // self.dim)))
            cached = (torch.empty(size, self.dim, dtype=torch.float16), torch.empty(size, self.dim))
            self._local.buffers = cached
        return cached

    def _exact_distances(
        self, queries: torch.Tensor, found: list[_Candidates], embedder: LpipsEmbedder
    ) -> list[np.ndarray]:
        """Stage 3: candidates embedded again from the source; exact fp64 distances from fp32 φ's."""
        needed = np.unique(np.concatenate([c.rows for c in found]))
        q64 = queries.double()
        table = np.empty((len(needed), len(queries)))
        for a in range(0, len(needed), 64):
            rows = needed[a:a + 64]
            phi = embedder.embed(torch.from_numpy(self._read_pixels(rows)))
            self._check_unchanged(rows, phi)
            # Difference form, not |x|² + |y|² − 2x·y: no cancellation for near-copies.
            table[a:a + len(rows)] = torch.cdist(
                phi.double(), q64, compute_mode="donot_use_mm_for_euclid_dist").square().numpy()
        return [table[np.searchsorted(needed, c.rows), j] for j, c in enumerate(found)]

    def _check_unchanged(self, rows: np.ndarray, phi: torch.Tensor) -> None:
        stored = torch.from_numpy(self._gather(rows)).double()
        fields = self._rows(rows)
        moved = (phi.double() - stored).norm(dim=1).numpy()
        allowed = fields["radius"] + CHANGED_TOLERANCE * np.sqrt(fields["sqnorm"])
        for row, distance, limit in zip(rows, moved, allowed):
            if distance > limit:
                raise BedgenError(
                    f"indexed image {self.key(int(row))} of {self.source} changed since the index was built; "
                    f"rebuild it with bedgen index --data {self.source} --out {self.path}"
                )

    # --- rows, keys and source images -----------------------------------------------------

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shard = np.searchsorted(self._starts, rows, side="right") - 1
        return shard, rows - self._starts[shard]

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """Stored fp16 φ̃ of index rows, read shard by shard in file order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), np.float16)
        shards, local = self._locate(rows)
        for s in np.unique(shards):
            where = np.flatnonzero(shards == s)
            where = where[np.argsort(local[where])]
            out[where] = self._shards[s].embeddings[local[where]]
        return out

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        shards, local = self._locate(np.asarray(rows, dtype=np.int64))
        out = np.empty(len(rows), ROW_DTYPE)
        for s in np.unique(shards):
            where = shards == s
            out[where] = self._shards[s].rows[local[where]]
        return out

    def key(self, row: int) -> str:
        if not 0 <= row < self.count:
            raise IndexError(f"row {row} out of range for an index of {self.count} images")
        shard, local = self._locate(np.array([row]))
        return self._shards[int(shard[0])].keys()[int(local[0])]

    def _file_path(self, key: str) -> str | None:
        return str(Path(self.source) / key) if self.kind == "folder" else None

    def _read_pixels(self, rows: np.ndarray) -> np.ndarray:
        """uint8 (n, 3, R, R) of indexed images read back from the source, preprocessed as at build time."""
        if self.kind == "folder":  # no need to scan the folder: the key is the relative path
            return np.stack([self._read_file(self.key(int(row))) for row in rows])
        dataset = self._source_dataset()
        positions = self._rows(rows)["position"]
        images = []
        for row, position in zip(rows, positions):
            key = self.key(int(row))
            item = dataset[int(position)] if dataset.key(int(position)) == key else None
            if item is None or not item["ok"]:
                raise BedgenError(f"indexed image {key} of {self.source} can no longer be read; the source changed "
                                  f"since the index was built: rebuild it with bedgen index --out {self.path}")
            images.append(item["image"].numpy())
        return np.stack(images)

    def _read_file(self, key: str) -> np.ndarray:
        path = Path(self.source) / key
        try:
            return decode(path.read_bytes(), self.resolution, self.square)  # what the folder reader does
        except Exception as e:  # missing, unreadable or no longer an image
            raise BedgenError(f"indexed image {path} can no longer be read ({one_line(e)}); the source changed "
                              f"since the index was built: rebuild it with bedgen index --out {self.path}") from None

    def _source_dataset(self) -> ImageDataset:
        with self._lock:
            if self._dataset is None:
                m = self.manifest
                config = DataConfig(source=self.source, square=self.square, fraction=m["fraction"],
                                    subset_seed=m["subset_seed"], validation_fraction=0.0,
                                    image_column=m["image_column"], flip=False)
                try:
                    dataset = open_dataset(config, self.resolution, "train")
                except BedgenError as e:
                    raise BedgenError(f"the source of the index {self.path} cannot be opened: {e}") from None
                if len(dataset) != m["source_images"]:
                    raise BedgenError(f"{self.source} now holds {len(dataset)} images, not the {m['source_images']} "
                                      f"indexed; rebuild the index with bedgen index --out {self.path}")
                self._dataset = dataset
            return self._dataset


def _gamma(n: int, roundoff: float) -> float:
    """Higham's γ_n: |fl(x·y) − x·y| ≤ γ_n Σ|x_i y_i| for n terms summed in any order."""
    return n * roundoff / (1 - n * roundoff)


def _lower(distance: np.ndarray) -> np.ndarray:
    """A lower bound on a distance -> one on its square, widened for the fp64 bookkeeping."""
    return np.square(np.maximum(distance, 0)) * (1 - BOUND_SLACK)


def _tensor(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # memory-mapped read-only arrays: torch warns, nothing writes
        return torch.from_numpy(array)


def _ascending(values: np.ndarray, first: int = 64) -> Iterator[np.ndarray]:
    """Positions of ``values`` in increasing order, in growing chunks: sorting all N is
    wasted when the search stops after a few hundred."""
    remaining = np.arange(len(values))
    size = first
    while len(remaining):
        if size < len(remaining):
            part = np.argpartition(values[remaining], size - 1)
            chosen, remaining = remaining[part[:size]], remaining[part[size:]]
        else:
            chosen, remaining = remaining, remaining[:0]
        yield chosen[np.argsort(values[chosen], kind="stable")]
        size *= 4


def _distance_bounds(dots: np.ndarray, q_sq: Any, b_sq: Any, gamma: float, dim: int) -> tuple[np.ndarray, ...]:
    """(low, high, d): bounds on ||q − b|| and d ≈ ||q − b||² from |q|² + |b|² − 2 q·b, where the
    computed dot product is off by at most γ |q||b| and the fp64 norms by γ64 |·|²."""
    d = q_sq + b_sq - 2 * dots
    slack = 2 * gamma * np.sqrt(q_sq * b_sq) + 2 * _gamma(dim + 2, FP64_ROUNDOFF) * (q_sq + b_sq)
    return np.sqrt(np.maximum(d - slack, 0)), np.sqrt(np.maximum(d + slack, 0)), np.maximum(d, 0)


def _widen(bounds: tuple[np.ndarray, ...], radius: np.ndarray) -> tuple[np.ndarray, ...]:
    """Bounds on the distance to the stored φ̃ -> (d, low², high²) for the true φ, ||φ − φ̃|| ≤ radius."""
    low, high, d = bounds
    return d, _lower(low - radius), np.square(high + radius) * (1 + BOUND_SLACK)


class _Refined:
    """One query's refined images with bounds on their squared distances, and τ: the k-th smallest
    upper bound, so every image whose lower bound exceeds τ is outside the top k."""

    def __init__(self, k: int):
        self.k = k
        self.rows: list[np.ndarray] = []
        self.stored: list[np.ndarray] = []
        self.low: list[np.ndarray] = []
        self.high: list[np.ndarray] = []
        self.tau = np.inf

    @property
    def last_low(self) -> np.ndarray:
        return self.low[-1]

    def add(self, rows: np.ndarray, stored: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        self.rows.append(rows), self.stored.append(stored), self.low.append(low), self.high.append(high)
        self._update_tau()

    def tighten(self, where: np.ndarray, stored: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        """Replace the last block's bounds at ``where`` by tighter ones."""
        self.stored[-1][where], self.low[-1][where], self.high[-1][where] = stored, low, high
        self._update_tau()

    def _update_tau(self) -> None:
        highs = np.concatenate(self.high)
        self.tau = float(np.partition(highs, self.k - 1)[self.k - 1]) if len(highs) >= self.k else np.inf

    def candidates(self) -> _Candidates:
        rows, stored, low = (np.concatenate(x) for x in (self.rows, self.stored, self.low))
        keep = low <= self.tau
        return _Candidates(rows[keep], stored[keep], len(rows))


def _query_pixels(images: Any, resolution: int, square: str) -> np.ndarray:
    """Query images -> uint8 (n, 3, R, R) through the checks and preprocessing of training images."""
    if isinstance(images, (Image.Image, str, os.PathLike, bytes, bytearray)):
        images = [images]
    images = list(images)
    arrays = []
    for number, image in enumerate(images, start=1):
        name = f"query image '{image}'" if isinstance(image, (str, os.PathLike)) else (
            "query image" if len(images) == 1 else f"query image {number}")
        opened = load_image(image, name)
        try:
            arrays.append(preprocess(opened, resolution, square))
        except (OSError, ValueError) as e:
            raise BedgenError(f"{name} could not be converted to RGB ({one_line(e)})") from None
        finally:
            if opened is not image:
                opened.close()
    return np.stack(arrays) if arrays else np.zeros((0, 3, resolution, resolution), np.uint8)


# --- helpers for the app and the CLI ----------------------------------------------------------


def index_is_complete(path: str | os.PathLike[str]) -> bool:
    try:
        return bool(_read_manifest(Path(path).expanduser()).get("complete"))
    except BedgenError:
        return False


def find_indexes(root: str | os.PathLike[str], max_depth: int = 4) -> list[Path]:
    """Complete indexes in ``root`` or its subfolders (not inside an index, not hidden), sorted."""
    root = Path(root).expanduser()
    found = []
    for folder, subfolders, files in os.walk(root):
        here = Path(folder)
        if MANIFEST in files and index_is_complete(here):
            found.append(here)
            subfolders[:] = []
            continue
        depth = len(here.relative_to(root).parts)
        subfolders[:] = sorted(d for d in subfolders if not d.startswith(".")) if depth < max_depth else []
    return sorted(found)


def load_neighbour_image(index: LpipsIndex, neighbour: Neighbour) -> Image.Image:
    """The neighbour as the index saw it: read from the source, preprocessed at the index's resolution."""
    row = neighbour.row
    if not (0 <= row < len(index) and index.key(row) == neighbour.key):
        row = _row_of_key(index, neighbour.key)
    pixels = index._read_pixels(np.array([row]))[0]
    return Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)))


def _row_of_key(index: LpipsIndex, key: str) -> int:
    start = 0
    for shard in index._shards:
        keys = shard.keys()
        if key in keys:
            return start + keys.index(key)
        start += shard.count
    raise BedgenError(f"'{key}' is not in the index {index.path}")


__all__ = [
    "LpipsIndex", "MEMORISATION_FACTOR", "NON_STANDARD_NOTE", "Neighbour", "SearchResult",
    "build_index", "embedder_for", "find_indexes", "index_is_complete", "load_neighbour_image",
]
