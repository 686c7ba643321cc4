"""What a public app may touch: models, paths and the Train tab.

An app is *public* on a Hugging Face Space (``SPACE_ID`` is set there), with
``--share`` or with ``BEDGEN_PUBLIC=1``. Then

- local models are served only from the checkpoints folder (resolved, so neither
  ``..`` nor a symlink leads out of it);
- Hub models only from the allow-list (``BEDGEN_HUB_MODELS``, default the curated list);
- the Train tab exists only when ``BEDGEN_ENABLE_TRAINING=1`` *and* ``BEDGEN_AUTH``
  is set, because training reads server folders and runs long jobs.

A private app (the default on your own machine) loads any local folder or Hub id.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path

from ..errors import BedgenError
from ..hub import parse_hub_ref


def inside(path: Path, root: Path) -> bool:
    """``path`` is ``root`` or below it once both are resolved (links followed)."""
    path, root = path.resolve(), root.resolve()
    return path == root or root in path.parents


def parse_auth(raw: str) -> tuple[tuple[str, str], ...]:
    """``user:password[,user2:password2]`` -> pairs for ``launch(auth=...)``."""
    pairs = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            # never echo the value: it holds a password
            raise SystemExit("bedgen app: BEDGEN_AUTH must be user:password[,user:password]")
        pairs.append((user, password))
    return tuple(pairs)


@dataclass(frozen=True)
class ModelPolicy:
    """Which model refs requests may load."""

    checkpoints: Path
    public: bool = False
    hub_allow: tuple[str, ...] = ()  # repo ids or fnmatch patterns (org/*); used when public

    def check(self, ref: object) -> str:
        text = ref.strip() if isinstance(ref, str) else ""
        if not text:
            raise BedgenError("choose a model: a checkpoint from the list or a Hub id org/name")
        if "\x00" in text or len(text) > 512:
            raise BedgenError("a model ref is a folder name or a Hub id org/name of at most 512 characters")
        local = self._local(text)
        if local is not None:
            return text
        hub = parse_hub_ref(text)
        if self.public and hub is not None and not self._allowed(hub.repo_id):
            raise BedgenError(
                f"Hub model '{hub.repo_id}' is not served by this app; choose one from the list "
                "(the app's owner allows more through BEDGEN_HUB_MODELS)"
            )
        if self.public and hub is None:
            raise BedgenError(f"model '{text}' is neither a checkpoint in this app's list nor an allowed Hub id")
        return text  # a private app lets the loader explain what is wrong with it

    def _local(self, text: str) -> Path | None:
        candidate = Path(text).expanduser()
        if not candidate.exists():
            return None
        if self.public and not inside(candidate, self.checkpoints):
            raise BedgenError("this app serves local models from its checkpoints folder only; choose one from the list")
        return candidate

    def _allowed(self, repo_id: str) -> bool:
        return any(fnmatch.fnmatchcase(repo_id, pattern) for pattern in self.hub_allow)
