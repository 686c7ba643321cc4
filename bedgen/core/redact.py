"""What may leave this machine: secrets and local paths taken out of files before they are published.

``bedgen push`` uploads a checkpoint's JSON (``bedgen.json``: the full config, data
description, metrics with their reference paths) to a public place. Anything in it
that only makes sense here or must stay here is replaced, wherever it sits:

- a string that is (or holds) an absolute local path -> ``<local>/NAME`` (the last
  component only, so a reader still sees *which* data, not *where*);
- the value of any secret-looking environment variable (``HF_TOKEN``, ``*_TOKEN``,
  ``*_SECRET``, ``*PASSWORD*``, ``*_KEY``, ``BEDGEN_AUTH`` ...) and anything shaped
  like a Hugging Face token -> ``<redacted>``;
- the value of a key whose name says it is a secret (``token``, ``password`` ...).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Iterable

REDACTED = "<redacted>"
LOCAL = "<local>"
# Environment variables whose values are secrets (matched on the upper-cased name).
_SECRET_ENV = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|CREDENTIAL|(^|_)AUTH($|_)|(^|_)(API_)?KEY($|_)|COOKIE")
# JSON keys whose values are secrets (matched on the lower-cased key).
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_?key|auth|credentials?|cookie)s?($|_)")
# Hugging Face user / organisation tokens, and the common shapes of other providers' keys.
_TOKEN_LIKE = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}|gh[pousr]_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9_-]{20,})\b")
# A whole string that is a local absolute path: /x, ~/x, ~user/x, C:\x, \\server\x, file:///x.
_ABSOLUTE = re.compile(r"^(/|~|[A-Za-z]:[\\/]|\\\\|file://)")
# An absolute POSIX path inside a longer text: a "/" not preceded by a word character,
# ".", ":" or "/" (so the paths of URLs such as https://host/a/b are left alone).
_EMBEDDED_PATH = re.compile(r"(?<![\w.:/~-])(?:~[\w.-]*)?/[^\s'\"<>|,;()\[\]{}]+")
_MIN_SECRET = 8  # shorter env values ("1", "on") are settings, not secrets


def secrets_from_environment(extra: Iterable[str | None] = ()) -> list[str]:
    """The values of secret-looking environment variables (plus ``extra``), longest first."""
    values = {value for name, value in os.environ.items() if _SECRET_ENV.search(name.upper())}
    values |= {value for value in extra if value}
    # BEDGEN_AUTH is user:password[,user:password]: each password is a secret on its own.
    for pair in os.environ.get("BEDGEN_AUTH", "").split(","):
        values.add(pair.partition(":")[2])
    return sorted((v for v in values if len(v) >= _MIN_SECRET), key=len, reverse=True)


def redact(value: Any, secrets: list[str], key: str | None = None) -> Any:
    """A copy of a JSON-like value with secrets and local paths replaced (see the module docstring)."""
    if isinstance(value, dict):
        return {k: redact(v, secrets, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    if not isinstance(value, str):
        return value
    if key is not None and _SECRET_KEY.search(key.lower()) and value:
        return REDACTED
    return redact_text(value, secrets)


def redact_text(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    text = _TOKEN_LIKE.sub(REDACTED, text)
    if _ABSOLUTE.match(text.strip()):
        return _local_name(text.strip())
    return _EMBEDDED_PATH.sub(lambda m: _local_name(m[0]), text)


def _local_name(path: str) -> str:
    name = re.split(r"[\\/]", path.rstrip("\\/"))[-1]
    return f"{LOCAL}/{name}" if name and not name.startswith("~") else LOCAL


def redact_file(name: str, data: bytes, secrets: list[str]) -> bytes:
    """The bytes to publish for a file: JSON re-serialised redacted, other text redacted, binaries as they are.

    A file that needs no change is returned byte for byte (diffusers' configs stay identical).
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data  # weights, images: no strings we write into them
    if name.endswith(".json"):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
        if parsed is not None:
            cleaned = redact(parsed, secrets)
            return data if cleaned == parsed else (json.dumps(cleaned, indent=2) + "\n").encode()
    cleaned_text = "\n".join(redact_text(line, secrets) for line in text.split("\n"))
    return data if cleaned_text == text else cleaned_text.encode()


__all__ = ["LOCAL", "REDACTED", "redact", "redact_file", "redact_text", "secrets_from_environment"]
