"""Atomic file writes: a reader, or the next run after a crash, sees the old file or the new one, never half.

Files are written beside their destination and renamed over it (a rename within one folder is
atomic on POSIX); folders are built beside theirs and swapped in with two renames, undone by
:func:`recover_interrupted_save` if a crash falls between them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable


def atomic_write(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write`` with a binary handle on a temporary file, flush it to disk, rename it to ``path``."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any, indent: int = 2) -> None:
    atomic_write(path, lambda handle: handle.write((json.dumps(data, indent=indent) + "\n").encode()))


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} when the file is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def replace_dir_atomically(path: Path, write: Callable[[Path], None]) -> None:
    """Build the new directory beside ``path``, then swap it in.

    A crash while writing leaves the old directory untouched. The swap is two
    renames; if a crash falls between them, :func:`recover_interrupted_save`
    puts the previous directory back on the next load.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = path.with_name(f".{path.name}.tmp-{tag}")
    old = path.with_name(f".{path.name}.old-{tag}")
    try:
        write(tmp)
        _fsync_tree(tmp)
        if path.exists():
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_interrupted_save(path: Path) -> None:
    """If a save died between its two renames, restore the previous directory."""
    if path.exists():
        return
    backups = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
    if backups:
        os.rename(backups[-1], path)


def _fsync_tree(root: Path) -> None:
    for file in root.rglob("*"):
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks: how weights files are told apart."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
