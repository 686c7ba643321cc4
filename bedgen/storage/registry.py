"""Which models exist: local checkpoints under a folder, models pushed from this machine, a curated Hub list."""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .checkpoint import looks_like_checkpoint, read_description

DEFAULT_MODEL = "google/ddpm-ema-bedroom-256"
# Without a GPU the app opens on a consistency model (see bedgen.ui.settings.default_model_for_machine).
CPU_DEFAULT_MODEL = "openai/diffusers-cd_bedroom256_lpips"


@dataclass(frozen=True)
class ModelEntry:
    ref: str
    source: str  # "local" | "hub"
    description: str
    family: str = ""  # ddpm, iddpm, ldm, smld, vae, consistency, progressive; "" where unknown before loading
    steps: int | None = None  # a distilled student's own step count, where its bedgen.json says it


# Unconditional LSUN-Bedroom models on the Hub that bedgen can load and sample.
CURATED_HUB_MODELS: tuple[ModelEntry, ...] = (
    ModelEntry(DEFAULT_MODEL, "hub", "DDPM (Ho et al. 2020), EMA weights, 256 px, 1000 steps", "ddpm"),
    ModelEntry("google/ddpm-bedroom-256", "hub", "DDPM (Ho et al. 2020), raw weights, 256 px", "ddpm"),
    ModelEntry(CPU_DEFAULT_MODEL, "hub", "consistency distillation (LPIPS), 1-2 steps", "consistency"),
    ModelEntry("openai/diffusers-cd_bedroom256_l2", "hub", "consistency distillation (L2), 1-2 steps", "consistency"),
    ModelEntry("openai/diffusers-ct_bedroom256", "hub", "consistency training, 1-2 steps", "consistency"),
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
    return [_local_entry(p) for p in found]


# A foreign diffusers folder's family, from the pipeline class its model_index.json names.
PIPELINE_FAMILIES = {"DDPMPipeline": "ddpm", "DDIMPipeline": "ddpm", "LDMPipeline": "ldm", "ScoreSdeVePipeline": "smld",
                     "ConsistencyModelPipeline": "consistency"}


def _local_entry(path: Path) -> ModelEntry:
    info = read_description(path)
    if not info:
        try:
            pipeline = json.loads((path / "model_index.json").read_text()).get("_class_name", "")
        except (OSError, ValueError, AttributeError):
            pipeline = ""
        return ModelEntry(str(path), "local", "diffusers checkpoint", PIPELINE_FAMILIES.get(pipeline, ""))
    config, family = info.get("config", {}), str(info.get("family", ""))
    description = f"{family or '?'} · preset {info.get('preset', '?')} · {config.get('resolution', '?')} px"
    # A progressive student is trained for its final step count (bedgen.families.progressive).
    steps = (config.get("sampling") or {}).get("steps") if family == "progressive" else None
    return ModelEntry(str(path), "local", description, family, steps)


def students_of(teacher: str, root: Path | None = None) -> list[str]:
    """Local consistency students of ``teacher`` (newest first): checkpoints under ``root`` whose
    bedgen.json names it as ``distill.teacher``, the same folder or the same Hub id."""
    wanted = _same_model_key(teacher)
    found = []
    for entry in local_models(root):
        config = read_description(entry.ref).get("config", {})
        named = (config.get("distill") or {}).get("teacher")
        if config.get("family") == "consistency" and named and _same_model_key(named) == wanted:
            found.append(entry.ref)
    return found


def _same_model_key(ref: str) -> str:
    """A local folder by its resolved path (a relative and an absolute name match), else the ref."""
    path = Path(ref).expanduser()
    try:
        return str(path.resolve()) if path.is_dir() else ref
    except (OSError, RuntimeError):
        return ref


def all_models(root: Path | None = None, hub: tuple[str, ...] | None = None) -> list[ModelEntry]:
    """Local checkpoints, then the models pushed from this machine, then the Hub models ``hub``
    (default: the curated list); each ref once."""
    known = {entry.ref: entry for entry in CURATED_HUB_MODELS}
    listed = list(CURATED_HUB_MODELS) if hub is None else [known.get(ref, ModelEntry(ref, "hub", "Hub model")) for ref in hub]
    seen: set[str] = set()
    entries = []
    for entry in local_models(root) + pushed_models() + listed:
        if entry.ref not in seen:
            seen.add(entry.ref)
            entries.append(entry)
    return entries


# --- models pushed from this machine ------------------------------------------------------

log = logging.getLogger(__name__)


def pushed_record_file() -> Path:
    """Where ``bedgen push`` remembers what it published: ``$HF_HOME/bedgen/pushed.json``
    (``~/.cache/huggingface`` by default), beside huggingface_hub's token and cache."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HOME") or constants.HF_HOME).expanduser() / "bedgen" / "pushed.json"


def _current_endpoint() -> str:
    from huggingface_hub import constants

    from ..core.hub import hub_endpoint

    return (hub_endpoint() or constants.ENDPOINT).rstrip("/")


def pushed_records(endpoint: str | None = None) -> list[dict[str, Any]]:
    """The push records for the Hub at ``endpoint`` (default: HF_ENDPOINT or huggingface.co), newest first.

    Each has ``ref`` (org/name[@branch]), ``repo_id``, ``revision``, ``url``, ``commit``,
    ``private``, ``family``, ``source`` (the local checkpoint) and ``pushed`` (UTC time).
    """
    endpoint = (endpoint or _current_endpoint()).rstrip("/")
    try:
        records = json.loads(pushed_record_file().read_text())
    except (OSError, ValueError):
        return []  # nothing pushed yet, or a damaged record: the list is a convenience
    return [r for r in records if isinstance(r, dict) and str(r.get("endpoint", "")).rstrip("/") == endpoint
            and isinstance(r.get("ref"), str)]


def pushed_models(endpoint: str | None = None) -> list[ModelEntry]:
    """Models pushed from this machine (see :func:`pushed_records`) as model-list entries."""
    return [
        ModelEntry(r["ref"], "hub", f"pushed from this machine · {r.get('family', '?')}"
                   + (" · private" if r.get("private") else ""), str(r.get("family") or ""))
        for r in pushed_records(endpoint)
    ]


def remember_push(result: Any, endpoint: str, source: Path, family: str) -> None:
    """Add (or refresh) the record of a push; a record that cannot be written only logs a warning."""
    from ..core.files import write_json

    file = pushed_record_file()
    try:
        records = json.loads(file.read_text()) if file.is_file() else []
    except (OSError, ValueError):
        records = []
    endpoint = endpoint.rstrip("/")
    records = [r for r in records if isinstance(r, dict) and (r.get("endpoint"), r.get("ref")) != (endpoint, result.ref)]
    records.insert(0, {
        "ref": result.ref, "repo_id": result.repo_id, "revision": result.revision, "url": result.url,
        "commit": result.commit, "private": result.private, "family": family, "endpoint": endpoint,
        "source": str(Path(source).resolve()),
        "pushed": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        write_json(file, records)
    except OSError as e:
        log.warning("could not record the push in %s: %s", file, e.strerror or e)
