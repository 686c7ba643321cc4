"""What a public app may touch: models, paths and the Train tab.

In every mode, the app serves local models only from its checkpoints folder (resolved,
so neither ``..`` nor a symlink leads out of it), and a Hub id only from the Hub cache
(its revision a branch, tag or commit hash; the folder it resolves to checked again after
loading). The CLI and the library take any folder.

An app is *public* on a Hugging Face Space (``SPACE_ID`` is set there), with
``--share`` or with ``BEDGEN_PUBLIC=1``. Then also

- Hub models come only from the allow-list (``BEDGEN_HUB_MODELS``, default the curated list),
  each entry at the revision it names (see :meth:`ModelPolicy.allows_hub`);
- the Train tab exists only when ``BEDGEN_ENABLE_TRAINING=1`` *and* ``BEDGEN_AUTH``
  is set, because training reads server folders and runs long jobs.

A private app (the default on your own machine) loads any Hub id.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..core.errors import BedgenError
from ..core.hub import HubRef, hub_cache, inside, require_hub_ref

__all__ = ["ModelPolicy", "inside", "local_folder", "parse_auth", "without_server_paths"]

# An absolute path inside a text: "/" not preceded by a word, "." or ":" (so neither "img/s" nor
# the "//" of a URL), up to whitespace, a quote or Markdown emphasis.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/~-])/[^\s'\"`*,;()<>]+")


def local_folder(text: str, root: Path) -> Path | None:
    """The existing path a model ref names, resolved (links followed), or None when it names none.

    Looked up under ``root`` (a run name), then as the loader would read it: absolute, or from
    the app's working folder (the model lists show ``checkpoints/NAME``). A dangling link
    counts, so that it cannot pass for a Hub id and be filled in later.
    """
    for candidate in (root / text, Path(text)):
        try:
            candidate = candidate.expanduser()
            if candidate.exists() or candidate.is_symlink():
                return candidate.resolve()
        except (OSError, RuntimeError):  # a name too long, a link loop, an unknown ~user
            continue
    return None


def without_server_paths(value: Any, folders: Iterable[Path]) -> Any:
    """``value`` (text, or lists and dicts of it) with every absolute path shown as a client may
    see it: relative to the app folder that holds it, under that folder's name
    (``references/rooms.npz``), else by its name alone. Responses never name a server path."""
    roots = [(Path(folder).resolve(), Path(folder).resolve().name) for folder in folders]

    def shown(match: re.Match) -> str:
        path = Path(match.group())
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError):
            return path.name
        for root, name in roots:
            if inside(resolved, root):
                return str(Path(name) / resolved.relative_to(root))
        return path.name

    def walk(item: Any) -> Any:
        if isinstance(item, str):
            return ABSOLUTE_PATH.sub(shown, item)
        if isinstance(item, dict):
            return {key: walk(entry) for key, entry in item.items()}
        if isinstance(item, (list, tuple)):
            return type(item)(walk(entry) for entry in item)
        return item

    return walk(value)


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
    """Which model refs requests may load, and from where."""

    checkpoints: Path
    public: bool = False
    hub_allow: tuple[str, ...] = ()  # org/name[@revision], fnmatch patterns allowed (org/*, @*); used when public

    def check(self, ref: object) -> str:
        """The ref to load: a local model as its resolved folder (so nothing resolves it again
        from elsewhere), a Hub id as ``org/name[@revision]``."""
        text = ref.strip() if isinstance(ref, str) else ""
        if not text:
            raise BedgenError("choose a model: a checkpoint from the list or a Hub id org/name")
        if "\x00" in text or len(text) > 512:
            raise BedgenError("a model ref is a folder name or a Hub id org/name of at most 512 characters")
        local = local_folder(text, self.checkpoints)
        if local is not None:
            if not inside(local, self.checkpoints):
                raise BedgenError(f"model '{text}' is not served: this app serves local models from its "
                                  "checkpoints folder only; choose one from the list")
            return str(local)
        hub = require_hub_ref(text)
        if self.public and not self.allows_hub(hub):
            raise BedgenError(
                f"Hub model '{hub}' is not served by this app; choose one from the list "
                "(the app's owner allows more through BEDGEN_HUB_MODELS)"
            )
        return str(hub)

    def allows(self, ref: object) -> bool:
        """Whether :meth:`check` accepts ``ref`` (what the model lists show)."""
        try:
            self.check(ref)
        except BedgenError:
            return False
        return True

    def check_loaded(self, ref: str, folder: Path) -> None:
        """After resolution: the folder a ref was loaded from (a run's latest checkpoint, a
        Hub snapshot) lies in the checkpoints folder or the Hub cache."""
        if not (inside(folder, self.checkpoints) or inside(folder, hub_cache())):
            raise BedgenError(f"model '{ref}' resolved to a folder outside the checkpoints folder and the "
                              "Hub cache; this app does not serve it")

    def allows_hub(self, hub: HubRef) -> bool:
        """An allow-list entry ``org/name`` (or ``org/*``) allows the default branch (no revision,
        or ``@main``); ``org/name@REV`` allows that revision only, REV a pattern too (``@*``: all).

        Never every revision of a listed repo: anyone may open a pull request on a public Hub
        repo, and its files load as ``org/name@refs/pr/N`` or by their commit hash, so that
        would let anyone choose the weights a public app serves.
        """
        revision = hub.revision or "main"
        for entry in self.hub_allow:
            repo_pattern, _, revision_pattern = entry.partition("@")
            if fnmatch.fnmatchcase(hub.repo_id, repo_pattern) and fnmatch.fnmatchcase(revision, revision_pattern or "main"):
                return True
        return False
