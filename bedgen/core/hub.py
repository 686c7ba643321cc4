"""Model REFs: a local directory or a Hub id ``org/name[@revision]``.

Hub refs go through ``huggingface_hub.snapshot_download``, so its cache, token
(``HF_TOKEN``), endpoint (``HF_ENDPOINT``) and offline mode (``HF_HUB_OFFLINE``)
all apply. The environment is read at call time, not at import time, so a
process can switch endpoint or go offline without re-importing the library.

A revision is a branch or tag name or a commit hash, never a path: offline,
huggingface_hub reads ``refs/<revision>`` as a file and joins its content to
``snapshots/``, so ``..`` parts would make any folder the model. And whatever
folder a ref resolves to is checked to lie in that repo's snapshots in the cache.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BedgenError, ModelNotFoundError, one_line

# Revisions are git ref names ("main", "v1.2", "refs/pr/1") or commit hashes: no part starts
# with "." and, like repo ids, no ".." anywhere (git and the Hub refuse both), so neither part
# of a Hub id can climb out of its folder in the cache.
REVISION = r"[\w-][\w.-]*(?:/[\w-][\w.-]*)*"
HUB_ID = re.compile(rf"^(?!.*\.\.)(?P<repo>[A-Za-z0-9][\w.-]*/[\w-][\w.-]*)(?:@(?P<revision>{REVISION}))?$")
# Files an inference load may need; weights in pickle form are fetched only if no
# safetensors exist (and are then read weights-only).
SAFE_PATTERNS = ["*.json", "*.safetensors"]
PICKLE_PATTERNS = ["*.json", "*.bin"]
# What needs no Hub: appended to every error for a Hub model that could not be fetched, because
# the first model a fresh install offers is a Hub model.
OFFLINE_ROUTES = (
    "to work offline, train one in the Train tab or put a checkpoint folder in checkpoints/ "
    "(bedgen train --data DIR --preset tiny --out checkpoints/NAME)"
)


@dataclass(frozen=True)
class HubRef:
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_hub_ref(ref: str) -> HubRef | None:
    match = HUB_ID.match(ref.strip())
    if not match:
        return None
    return HubRef(match["repo"], match["revision"])


def inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it once both are resolved (links followed)."""
    path, root = Path(path).resolve(), Path(root).resolve()
    return path == root or root in path.parents


def hub_cache() -> Path:
    """huggingface_hub's cache folder (``HF_HUB_CACHE``, else ``HF_HOME/hub``), as it computed it."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def resolve_ref(ref: str, patterns: list[str] | None = None) -> Path:
    """Return a local directory for ``ref``, downloading it from the Hub if needed
    (only the files matching ``patterns``, default: every JSON and safetensors file)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ModelNotFoundError("no model given; pass a local checkpoint directory or a Hub id org/name")
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_dir():
            raise ModelNotFoundError(f"model '{ref}' is a file; a checkpoint is a directory")
        return local
    return download(require_hub_ref(ref), needs_pickle=False, patterns=patterns)


def require_hub_ref(ref: str) -> HubRef:
    """``ref`` as a Hub id, or the error for a ref that names no local folder and is no Hub id."""
    hub = parse_hub_ref(ref)
    if hub is None:
        raise ModelNotFoundError(
            f"model '{ref}' is neither a local directory nor a Hub id of the form org/name[@revision] "
            "(a revision is a branch, tag or commit hash)"
        )
    return hub


def download(hub: HubRef, needs_pickle: bool, patterns: list[str] | None = None) -> Path:
    """snapshot_download with bedgen's error messages; returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from huggingface_hub.file_download import repo_folder_name

    cache = hub_cache()
    try:
        path = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            cache_dir=cache,
            allow_patterns=patterns or (PICKLE_PATTERNS if needs_pickle else SAFE_PATTERNS),
            endpoint=hub_endpoint(),
            local_files_only=hub_offline(),
        )
    except GatedRepoError as e:
        raise ModelNotFoundError(
            f"model '{hub}' is gated on the Hub: accept its terms on the website and set HF_TOKEN"
        ) from e
    except RevisionNotFoundError as e:
        raise ModelNotFoundError(f"model '{hub.repo_id}' has no revision '{hub.revision}'") from e
    except RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"model '{hub}' was not found on the Hub (private repos need HF_TOKEN)"
        ) from e
    except LocalEntryNotFoundError as e:
        why = "offline mode is on (HF_HUB_OFFLINE=1)" if hub_offline() else "the Hub could not be reached"
        raise ModelNotFoundError(
            f"model '{hub}' is not in the local cache and {why}; download it once while online, "
            f"pass a local checkpoint directory, or {OFFLINE_ROUTES}"
        ) from e
    except (OSError, ValueError) as e:  # network failures surface as OSError subclasses
        raise ModelNotFoundError(f"could not download model '{hub}': {one_line(e)}; {OFFLINE_ROUTES}") from e
    except Exception as e:  # httpx errors do not share a base class with OSError
        if type(e).__module__.startswith(("httpx", "httpcore", "huggingface_hub")):
            raise ModelNotFoundError(f"could not download model '{hub}': {one_line(e)}; {OFFLINE_ROUTES}") from e
        raise
    # Checked after resolution: a ref file in the cache (hand-edited, or left by an older
    # library) could still name a folder elsewhere.
    if not inside(Path(path), cache / repo_folder_name(repo_id=hub.repo_id, repo_type="model") / "snapshots"):
        raise ModelNotFoundError(f"model '{hub}' resolved to a folder outside the Hub cache; it is not loaded")
    return Path(path)


__all__ = ["OFFLINE_ROUTES", "HubRef", "parse_hub_ref", "require_hub_ref", "resolve_ref", "download", "hub_cache", "inside", "BedgenError"]
