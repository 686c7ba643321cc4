"""Which models exist: local checkpoints under a folder plus a curated Hub list."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import looks_like_checkpoint, read_description

DEFAULT_MODEL = "google/ddpm-ema-bedroom-256"


@dataclass(frozen=True)
class ModelEntry:
    ref: str
    source: str  # "local" | "hub"
    description: str


# Unconditional LSUN-Bedroom models on the Hub that bedgen can load and sample.
CURATED_HUB_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(DEFAULT_MODEL, "hub", "DDPM (Ho et al. 2020), EMA weights, 256 px, 1000 steps"),
    ModelEntry("google/ddpm-bedroom-256", "hub", "DDPM (Ho et al. 2020), raw weights, 256 px"),
    ModelEntry("openai/diffusers-cd_bedroom256_lpips", "hub", "consistency distillation (LPIPS), 1-2 steps"),
    ModelEntry("openai/diffusers-cd_bedroom256_l2", "hub", "consistency distillation (L2), 1-2 steps"),
    ModelEntry("openai/diffusers-ct_bedroom256", "hub", "consistency training, 1-2 steps"),
)


def checkpoints_dir() -> Path:
    """Where local models live: ``$BEDGEN_CHECKPOINTS`` or ``./checkpoints``."""
    return Path(os.environ.get("BEDGEN_CHECKPOINTS", "checkpoints")).expanduser()


def local_models(root: Path | None = None) -> list[ModelEntry]:
    """Checkpoint directories directly under ``root`` (newest first)."""
    root = checkpoints_dir() if root is None else root
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    found = [p for p in found if looks_like_checkpoint(p)]
    found.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    return [ModelEntry(str(p), "local", _describe_local(p)) for p in found]


def _describe_local(path: Path) -> str:
    info = read_description(path)
    if not info:
        return "diffusers checkpoint"
    config = info.get("config", {})
    return f"{info.get('family', '?')} · preset {info.get('preset', '?')} · {config.get('resolution', '?')} px"


def all_models(root: Path | None = None, hub: tuple[str, ...] | None = None) -> list[ModelEntry]:
    """Local checkpoints, then the Hub models ``hub`` (default: the curated list)."""
    if hub is None:
        return local_models(root) + list(CURATED_HUB_MODELS)
    known = {entry.ref: entry for entry in CURATED_HUB_MODELS}
    return local_models(root) + [known.get(ref, ModelEntry(ref, "hub", "Hub model")) for ref in hub]
