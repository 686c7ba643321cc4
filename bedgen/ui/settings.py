"""App configuration, read from environment variables (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.checks import whole_number
from ..core.errors import BedgenError
from ..storage.registry import CPU_DEFAULT_MODEL, CURATED_HUB_MODELS, DEFAULT_MODEL, checkpoints_dir
from .security import ModelPolicy, parse_auth


def env_int(name: str, default: int, low: int = 0) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return whole_number(f"environment variable {name}", raw, low)
    except BedgenError as e:
        raise SystemExit(f"bedgen app: {e}") from None


def env_positive(name: str, default: int) -> int:
    return env_int(name, default, low=1)


def _env_flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    return raw in {"1", "true", "yes", "on"}


def _env_path(name: str) -> Path | None:
    raw = os.environ.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def default_model_for_machine() -> str:
    """The model the app opens on when ``BEDGEN_DEFAULT_MODEL`` is not set.

    With a GPU: the 1000-step DDPM (google/ddpm-ema-bedroom-256, published FID 6.36), sampled with
    DPM-Solver++ in 20 steps. Without one: the consistency distillation of an LSUN Bedroom 256
    model (openai/diffusers-cd_bedroom256_lpips) at 2 steps, published FID 5.22, so no worse;
    one evaluation of its UNet costs 3.4 of the DDPM's on a 2-core AVX2 CPU with the Winograd engine
    (bench/cpu_defaults.py, bench/RESULTS.md), so a click takes 2 x 3.4 = 6.7 evaluations' time
    instead of 20 (3.0x faster: 17.0 s against 50.7 s there).
    """
    return DEFAULT_MODEL if torch.cuda.is_available() else CPU_DEFAULT_MODEL


@dataclass(frozen=True)
class AppSettings:
    checkpoints: Path
    default_model: str
    max_images: int = 8  # per request, enforced server-side
    default_images: int = 1
    max_steps: int = 1000
    model_cache_size: int = 2  # pipelines kept in memory
    concurrency: int = 1  # generate requests running at once
    queue_size: int = 32  # waiting requests before new ones are refused
    data_roots: tuple[Path, ...] = (Path("data"),)  # where the Train tab may read images
    training_enabled: bool = True
    indexes: Path = Path("indexes")  # where the Neighbours tab looks for LPIPS indexes
    references: Path = Path("references")  # .npz reference statistics for the Evaluate tab
    sweeps: Path = Path("checkpoints/sweeps")  # where the Evaluate tab looks for sweep folders
    inception_weights: Path | None = None  # None: torch-fidelity's standard file (downloaded once)
    max_eval_samples: int = 2000  # per evaluation request, enforced server-side
    lpips_weights: Path | None = None  # AlexNet backbone for the fine-tune report; None: torchvision's download
    public: bool = False  # a Space, --share or BEDGEN_PUBLIC: see bedgen.ui.security
    auth: tuple[tuple[str, str], ...] = ()  # (user, password) pairs; empty = no login
    hub_models: tuple[str, ...] = tuple(entry.ref for entry in CURATED_HUB_MODELS)  # listed; the allow-list when public
    max_upload_mb: float = 20.0  # per uploaded file, refused by the server before it is stored
    training_requested: bool = True  # BEDGEN_ENABLE_TRAINING as given (public apps also need auth)
    # Uploads and outputs (gradio's cache) older than cache_max_age seconds are deleted every
    # cache_clean_every seconds: what an app keeps on disk is bounded by its traffic over that age.
    cache_clean_every: int = 600
    cache_max_age: int = 24 * 3600

    @property
    def model_policy(self) -> ModelPolicy:
        return ModelPolicy(self.checkpoints, self.public, self.hub_models)

    def notices(self) -> list[str]:
        """What the owner of a public app should know at start (never a secret)."""
        if self.public and self.training_requested and not self.auth:
            return ["the Train tab is off: a public app trains only with BEDGEN_ENABLE_TRAINING=1 and BEDGEN_AUTH set"]
        return []

    @classmethod
    def from_env(cls, share: bool = False) -> "AppSettings":
        public = share or bool(os.environ.get("SPACE_ID")) or _env_flag("BEDGEN_PUBLIC", False)
        auth = parse_auth(os.environ.get("BEDGEN_AUTH", ""))
        # Training reads server folders and runs long jobs: off on a public app unless asked for and behind a login.
        training_requested = _env_flag("BEDGEN_ENABLE_TRAINING", default=not public)
        hub_models = tuple(m.strip() for m in os.environ.get("BEDGEN_HUB_MODELS", "").split(",") if m.strip())
        return cls(
            checkpoints=checkpoints_dir(),
            default_model=os.environ.get("BEDGEN_DEFAULT_MODEL") or default_model_for_machine(),
            max_images=env_int("BEDGEN_MAX_IMAGES", 8),
            # One image keeps a CPU click under half a minute at 256 px; GPUs do 4 at once.
            default_images=env_int("BEDGEN_DEFAULT_IMAGES", 4 if torch.cuda.is_available() else 1),
            max_steps=env_int("BEDGEN_MAX_STEPS", 1000),
            model_cache_size=env_int("BEDGEN_MODEL_CACHE", 2),
            concurrency=env_int("BEDGEN_CONCURRENCY", 1),
            queue_size=env_int("BEDGEN_QUEUE_SIZE", 32),
            data_roots=tuple(
                Path(p).expanduser() for p in os.environ.get("BEDGEN_DATA_ROOTS", "data").split(os.pathsep) if p
            ),
            indexes=Path(os.environ.get("BEDGEN_INDEXES", "indexes")).expanduser(),
            references=Path(os.environ.get("BEDGEN_REFERENCES", "references")).expanduser(),
            sweeps=Path(os.environ.get("BEDGEN_SWEEPS", str(checkpoints_dir() / "sweeps"))).expanduser(),
            inception_weights=_env_path("BEDGEN_INCEPTION_WEIGHTS"),
            max_eval_samples=env_int("BEDGEN_MAX_EVAL_SAMPLES", 2000),
            lpips_weights=_env_path("BEDGEN_LPIPS_WEIGHTS"),
            public=public,
            auth=auth,
            hub_models=hub_models or tuple(entry.ref for entry in CURATED_HUB_MODELS),
            max_upload_mb=env_int("BEDGEN_MAX_UPLOAD_MB", 20),
            training_requested=training_requested,
            training_enabled=training_requested and (bool(auth) or not public),
            cache_clean_every=env_positive("BEDGEN_CACHE_CLEAN_EVERY", 600),
            # A visitor of a public app needs its files for a session; a local user may come back the next day.
            cache_max_age=env_positive("BEDGEN_CACHE_MAX_AGE", 3600 if public else 24 * 3600),
        )
