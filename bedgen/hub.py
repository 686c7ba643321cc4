"""Model REFs: a local directory or a Hub id ``org/name[@revision]``.

Hub refs go through ``huggingface_hub.snapshot_download``, so its cache, token
(``HF_TOKEN``), endpoint (``HF_ENDPOINT``) and offline mode (``HF_HUB_OFFLINE``)
all apply. The environment is read at call time, not at import time, so a
process can switch endpoint or go offline without re-importing the library.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import BedgenError, ModelNotFoundError, one_line

HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:@(?P<revision>[\w./-]+))?$")
# Files an inference load may need; weights in pickle form are fetched only if no
# safetensors exist (and are then read weights-only).
SAFE_PATTERNS = ["*.json", "*.safetensors"]
PICKLE_PATTERNS = ["*.json", "*.bin"]


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
    hub = parse_hub_ref(ref)
    if hub is None:
        raise ModelNotFoundError(
            f"model '{ref}' is neither a local directory nor a Hub id of the form org/name[@revision]"
        )
    return download(hub, needs_pickle=False, patterns=patterns)


def download(hub: HubRef, needs_pickle: bool, patterns: list[str] | None = None) -> Path:
    """snapshot_download with bedgen's error messages; returns the snapshot folder."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
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
            f"model '{hub}' is not in the local cache and {why}; download it once while online "
            "or pass a local checkpoint directory"
        ) from e
    except (OSError, ValueError) as e:  # network failures surface as OSError subclasses
        raise ModelNotFoundError(f"could not download model '{hub}': {one_line(e)}") from e
    except Exception as e:  # httpx errors do not share a base class with OSError
        if type(e).__module__.startswith(("httpx", "httpcore", "huggingface_hub")):
            raise ModelNotFoundError(f"could not download model '{hub}': {one_line(e)}") from e
        raise
    return Path(path)


__all__ = ["HubRef", "parse_hub_ref", "resolve_ref", "download", "BedgenError"]
