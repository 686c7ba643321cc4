"""A tiny fake Hugging Face Hub for tests (standard library only).

``FakeHub`` serves, from memory, the part of the Hub HTTP API that
``huggingface_hub.snapshot_download`` and ``hf_hub_download`` use in the
installed huggingface_hub (written against 2.4.0, which talks HTTP through
``httpx2``), so tests can run the library's REAL download path: its cache
layout (``blobs/``, ``snapshots/<sha>/``, ``refs/<branch>``, ``trees/<sha>.json``),
revision handling, ``allow_patterns`` filtering and offline fallback.

Usage::

    with FakeHub() as hub:                       # starts on 127.0.0.1:<free port>
        sha = hub.add_repo("org/model", {"config.json": b"{}", "w.bin": b"..."})
        hub.add_repo("org/model", {"config.json": b'{"v": 1}'}, revision="v1")
        path = snapshot_download("org/model", revision="v1",
                                 endpoint=hub.endpoint, cache_dir=tmp_path)
        assert ("GET", "/org/model/resolve/" + sha_v1 + "/config.json") in hub.requests

Requests made by snapshot_download(repo_id, revision=REV) in 2.4.0, in order
---------------------------------------------------------------------------
1. ``GET /api/models/{repo_id}/revision/{REV}`` (``HfApi.repo_info``; REV is
   percent-quoted with ``safe=""``). Only ``sha`` is used; ``id`` is required
   by ``ModelInfo``. Skipped when REV is already a 40-hex commit sha.
2. ``GET /api/models/{repo_id}/tree/{sha}?recursive=true&expand=false``
   (``HfApi.list_repo_tree``): a JSON list of ``{"type": "file"|"directory",
   "path", "size", "oid"}``; pagination only if a ``Link: rel="next"`` header
   is sent (never here). The listing is then cached on disk as
   ``<cache>/models--org--name/trees/<sha>.json``. Note: 2.4.0 no longer uses
   the ``siblings`` of repo_info to decide what to download; it uses this tree.
3. Per file matching allow/ignore patterns (``hf_hub_download`` with
   ``revision=<sha>``; skipped entirely if the snapshot file already exists):
   ``HEAD /{repo_id}/resolve/{sha}/{path}`` needs ``X-Repo-Commit`` (else
   ``FileMetadataError``), ``ETag`` (the blob file name in the cache) and
   ``Content-Length`` (size check). Then ``GET`` of the same URL (or of the
   ``Location`` of a redirect, which this server never sends). Datasets and
   spaces use ``/api/datasets/...`` and ``/datasets/{repo_id}/resolve/...``.
Xet: the Xet path is only taken when the HEAD response has ``X-Xet-Hash`` (+ a
refresh route) or a tree entry has ``xetHash``; this server sends neither, so
downloads always use plain HTTP GET even though ``hf_xet`` is installed.

Errors are signalled like the real Hub, through the ``X-Error-Code`` header
that ``huggingface_hub.utils.hf_raise_for_status`` inspects:
unknown repo -> 404 ``RepoNotFound`` (-> ``RepositoryNotFoundError``),
unknown revision -> 404 ``RevisionNotFound`` (-> ``RevisionNotFoundError``),
unknown file -> 404 ``EntryNotFound`` (-> ``RemoteEntryNotFoundError``; we also
send ``X-Repo-Commit`` like the Hub, so the library records the miss in
``.no_exist/<sha>/``).

Endpoint (HF_ENDPOINT) handling in huggingface_hub 2.4.0
--------------------------------------------------------
``HF_ENDPOINT`` is read ONCE, at import of ``huggingface_hub.constants``, into
``constants.ENDPOINT`` and ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (plus
``constants.HF_URL_HOSTS`` and the frozenset ``utils._http._HUB_ORIGINS``,
which only matter for cross-host redirects). Setting the env var at test time
therefore does nothing by itself. Two ways that work:

* Pass ``endpoint=`` explicitly (what bedgen does:
  ``snapshot_download(..., endpoint=os.environ.get("HF_ENDPOINT") or None)``).
  Both ``HfApi(endpoint=...)`` and ``hf_hub_url(..., endpoint=...)`` honour it,
  so ``monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)`` is all a test needs.
* With ``endpoint=None``, patch BOTH ``constants.ENDPOINT`` and
  ``constants.HUGGINGFACE_CO_URL_TEMPLATE`` (``set_hf_endpoint`` below).
  Patching ENDPOINT alone is not enough: the api calls go to the fake hub but
  ``hf_hub_url`` still builds ``https://huggingface.co/.../resolve/...`` from
  the template.

Offline mode (HF_HUB_OFFLINE)
-----------------------------
Also read once at import, into ``constants.HF_HUB_OFFLINE``; the library
consults it at call time through ``constants.is_offline_mode()`` (the httpx2
request hook raises ``OfflineModeIsEnabled`` for every request). So
``monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)``
toggles it (``set_hf_offline`` below). Alternatively pass
``local_files_only=True`` (bedgen does, from the env var), which skips the
network without touching constants. Either way:

* cached snapshot -> its path is returned, no request at all;
* never downloaded -> ``huggingface_hub.errors.LocalEntryNotFoundError``
  (subclass of ``FileNotFoundError`` and ``EntryNotFoundError``);
* cached, but the cached tree listing says files matching the requested
  patterns are missing (e.g. first download with ``allow_patterns=["*.json"]``,
  offline call with no patterns) -> ``IncompleteSnapshotError``, a subclass of
  ``LocalEntryNotFoundError``.
The same fallback happens when the Hub is unreachable (server stopped:
``httpx2.ConnectError`` is swallowed and the cache is used).

Hidden request to the real Hub: building the User-Agent calls
``utils._detect_agent.detect_agent()``, which (once per process, unless
``<HF_HOME>/.agent_harnesses.json`` is fresh) GETs
``{constants.ENDPOINT}/api/agent-harnesses`` -- i.e. huggingface.co, not
``endpoint=`` -- and writes the result under the real HF_HOME. It is skipped
when ``constants.HF_HUB_DISABLE_TELEMETRY`` or ``constants.HF_HUB_OFFLINE`` is
true; ``isolate_hf_hub`` below disables telemetry. (This server also answers
``/api/agent-harnesses`` with an empty registry, in case ENDPOINT is patched.)
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "isolate_hf_hub", "set_hf_endpoint", "set_hf_offline"]

_SHA40 = re.compile(r"^[0-9a-f]{40}$")
# URL prefixes of non-model repos, as in huggingface_hub.constants.REPO_TYPES_URL_PREFIXES.
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# "/api/{models,datasets,spaces}/..." -> repo type.
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_FIXED_DATE = "2024-01-01T00:00:00.000Z"


def _git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data`: what the Hub uses as ETag/oid of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class _Repo:
    """One repo: immutable commits (sha -> files) and refs (branch/tag -> sha)."""

    def __init__(self) -> None:
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}

    def resolve(self, revision: str) -> str | None:
        """Branch/tag name or full commit sha -> commit sha (None if unknown)."""
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None


class FakeHub:
    """In-memory Hub served over HTTP on 127.0.0.1; see the module docstring.

    Attributes:
        requests: ``(method, path)`` of every request received, in order; ``path``
            is the URL path exactly as sent (still percent-encoded, e.g. a
            revision ``refs/pr/1`` appears as ``refs%2Fpr%2F1``) without the query.
        endpoint: ``"http://127.0.0.1:PORT"`` once started, else None.
    """

    def __init__(self) -> None:
        self._repos: dict[tuple[str, str], _Repo] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []
        self.endpoint: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cuts = 0

    # ------------------------------------------------------------------ setup

    def cut_downloads(self, count: int) -> None:
        """The next ``count`` file downloads stop half-way (connection closed mid-body)."""
        with self._lock:
            self._cuts = count

    def _take_cut(self) -> bool:
        with self._lock:
            if self._cuts <= 0:
                return False
            self._cuts -= 1
            return True

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes] | str | Path,
        revision: str = "main",
        *,
        repo_type: str = "model",
    ) -> str:
        """Register (or move) branch/tag `revision` of `repo_id` to a commit holding `files`.

        `files` maps repo paths ("a/b.json") to bytes (str values are UTF-8
        encoded), or is a local directory whose files (recursively, ``.git``
        excluded) are served. Returns the 40-hex commit sha, which also works as
        a revision. The sha is a deterministic hash of repo and contents, so the
        same files under two branch names give the same commit (like a tag on
        the branch head). Re-adding a branch moves it; old shas stay resolvable.
        """
        if repo_type not in _TYPE_PREFIX:
            raise ValueError(f"repo_type must be one of {sorted(_TYPE_PREFIX)}")
        if _SHA40.match(revision):
            raise ValueError("revision must be a branch/tag name; commit shas are generated")
        if isinstance(files, (str, Path)):
            root = Path(files)
            if not root.is_dir():
                raise ValueError(f"{root} is not a directory")
            content = {
                p.relative_to(root).as_posix(): p.read_bytes()
                for p in sorted(root.rglob("*"))
                if p.is_file() and ".git" not in p.relative_to(root).parts
            }
        else:
            content = {
                path.strip("/"): data.encode() if isinstance(data, str) else bytes(data)
                for path, data in files.items()
            }
        digest = hashlib.sha1(f"{repo_type}\0{repo_id}\0".encode())
        for path in sorted(content):
            digest.update(f"{path}\0{_git_blob_oid(content[path])}\n".encode())
        sha = digest.hexdigest()
        with self._lock:
            repo = self._repos.setdefault((repo_type, repo_id), _Repo())
            repo.commits[sha] = content
            repo.refs[revision] = sha
        return sha

    # -------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Serve in a daemon thread on a free port; returns the endpoint URL."""
        if self._server is None:
            server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
            server.daemon_threads = True  # never wait for handler threads on exit
            server.hub = self  # type: ignore[attr-defined]  # reached by _Handler
            self._server = server
            self.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
            self._thread = threading.Thread(
                target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True, name="FakeHub"
            )
            self._thread.start()
        return self.endpoint  # type: ignore[return-value]

    def stop(self) -> None:
        """Stop serving and close the socket (later requests get 'connection refused')."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> "FakeHub":
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # ---------------------------------------------------------------- routing

    def _lookup(self, repo_type: str, segments: list[str]) -> tuple[str, _Repo, list[str]] | None:
        """Split URL segments into (repo_id, repo, rest); repo ids have 1 or 2 segments."""
        with self._lock:
            for n in (2, 1):
                repo = self._repos.get((repo_type, "/".join(segments[:n])))
                if len(segments) >= n and repo is not None:
                    return "/".join(segments[:n]), repo, segments[n:]
        return None

    def _route(self, method: str, raw_path: str, query: str) -> "_Response":
        segments = [unquote(s) for s in raw_path.strip("/").split("/")]

        if segments[:2] == ["api", "agent-harnesses"]:
            # Agent-detection registry fetched by huggingface_hub's User-Agent code.
            return _Response.json({"standardEnvVars": [], "harnesses": {}})

        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _API_TYPES:
            if method not in ("GET", "HEAD"):
                return _Response.error(405, None, "method not allowed")
            return self._api(_API_TYPES[segments[1]], segments[2:], query)

        # File downloads: /[datasets/|spaces/]{repo_id}/resolve/{revision}/{path}
        repo_type = "model"
        if segments[0] in ("datasets", "spaces"):
            repo_type, segments = _API_TYPES[segments[0]], segments[1:]
        for i in (1, 2):
            if len(segments) > i + 2 and segments[i] == "resolve":
                if method not in ("GET", "HEAD"):
                    return _Response.error(405, None, "method not allowed")
                return self._resolve(repo_type, segments[:i], segments[i + 1], "/".join(segments[i + 2 :]))
        return _Response.error(404, None, f"no route for {raw_path}")

    def _api(self, repo_type: str, segments: list[str], query: str) -> "_Response":
        found = self._lookup(repo_type, segments)
        if found is None:
            return _not_found_repo("/".join(segments[:2]))
        repo_id, repo, rest = found

        if rest == [] or (len(rest) == 2 and rest[0] == "revision"):
            # repo_info / model_info: GET /api/models/{repo_id}[/revision/{rev}]
            revision = rest[1] if rest else "main"
            sha = repo.resolve(revision)
            if sha is None:
                return _not_found_revision(repo_id, revision)
            files = repo.commits[sha]
            blobs = "blobs=true" in query.lower()
            siblings = [
                {"rfilename": p, **({"size": len(d), "blobId": _git_blob_oid(d)} if blobs else {})}
                for p, d in sorted(files.items())
            ]
            return _Response.json(
                {
                    "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
                    "id": repo_id,
                    "modelId": repo_id,
                    "author": repo_id.split("/")[0] if "/" in repo_id else None,
                    "sha": sha,
                    "lastModified": _FIXED_DATE,
                    "createdAt": _FIXED_DATE,
                    "private": False,
                    "disabled": False,
                    "gated": False,
                    "downloads": 0,
                    "likes": 0,
                    "tags": [],
                    "siblings": siblings,
                }
            )

        if len(rest) >= 2 and rest[0] == "tree":
            # list_repo_tree: GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=..&expand=..
            sha = repo.resolve(rest[1])
            if sha is None:
                return _not_found_revision(repo_id, rest[1])
            return self._tree(repo.commits[sha], "/".join(rest[2:]).strip("/"), "recursive=true" in query.lower(), sha)

        return _Response.error(404, None, f"unsupported api route {'/'.join(rest)}")

    @staticmethod
    def _tree(files: dict[str, bytes], base: str, recursive: bool, sha: str) -> "_Response":
        prefix = base + "/" if base else ""
        if base and base not in files and not any(p.startswith(prefix) for p in files):
            return _Response.error(404, "EntryNotFound", f"{base} does not exist", {"X-Repo-Commit": sha})
        entries: dict[str, dict] = {}
        for path, data in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            # Directories along the way (all of them if recursive, else only the first level).
            for depth in range(1, len(parts) if recursive else min(2, len(parts))):
                folder = prefix + "/".join(parts[:depth])
                entries.setdefault(
                    folder,
                    {"type": "directory", "oid": hashlib.sha1(folder.encode()).hexdigest(), "size": 0, "path": folder},
                )
            if recursive or len(parts) == 1:
                entries[path] = {"type": "file", "oid": _git_blob_oid(data), "size": len(data), "path": path}
        return _Response.json(list(entries.values()))

    def _resolve(self, repo_type: str, repo_segments: list[str], revision: str, path: str) -> "_Response":
        found = self._lookup(repo_type, repo_segments)
        if found is None or found[2]:
            return _not_found_repo("/".join(repo_segments))
        repo_id, repo, _ = found
        sha = repo.resolve(revision)
        if sha is None:
            return _not_found_revision(repo_id, revision)
        files = repo.commits[sha]
        if path not in files:
            return _Response.error(
                404, "EntryNotFound", f"{path} does not exist on revision {revision}", {"X-Repo-Commit": sha}
            )
        data = files[path]
        return _Response(
            200,
            {
                "Content-Type": "application/octet-stream",
                "X-Repo-Commit": sha,  # required: the commit the file was resolved at
                "ETag": f'"{_git_blob_oid(data)}"',  # required: becomes the blob's name in the cache
                "Accept-Ranges": "bytes",
            },
            data,
        )


class _Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes = b"") -> None:
        self.status, self.headers, self.body = status, headers, body

    @classmethod
    def json(cls, payload) -> "_Response":
        return cls(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())

    @classmethod
    def error(cls, status: int, code: str | None, message: str, extra: dict[str, str] | None = None) -> "_Response":
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
        return cls(status, headers, json.dumps({"error": message}).encode())


def _not_found_repo(repo_id: str) -> _Response:
    return _Response.error(404, "RepoNotFound", f"Repository {repo_id} not found")


def _not_found_revision(repo_id: str, revision: str) -> _Response:
    return _Response.error(404, "RevisionNotFound", f"Invalid rev id: {revision} (repo {repo_id})")


_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 (the default): one request per connection, so no idle keep-alive
    # threads outlive stop(). Content-Length is always sent anyway.
    server_version = "FakeHub/1.0"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_HEAD(self) -> None:
        self._serve("HEAD")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        with hub._lock:
            hub.requests.append((method, url.path))
        try:
            response = hub._route(method, url.path, url.query)
        except Exception as exc:  # a bug here should show up as a 500, not a hang
            response = _Response.error(500, None, f"{type(exc).__name__}: {exc}")

        status, body = response.status, response.body
        headers = dict(response.headers)
        match = _RANGE.match(self.headers.get("Range", "")) if status == 200 else None
        if match and method == "GET":  # resumed downloads send "Range: bytes=N-"
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(body) - 1, len(body) - 1)
            if start >= len(body):
                status, headers, body = 416, {"Content-Range": f"bytes */{len(body)}"}, b""
            else:
                headers["Content-Range"] = f"bytes {start}-{end}/{len(body)}"
                status, body = 206, body[start : end + 1]
        headers["Content-Length"] = str(len(body))
        if method == "GET" and "/resolve/" in url.path and status in (200, 206) and len(body) > 1 and hub._take_cut():
            self._send_half(status, headers, body)
            return
        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # client went away; nothing to do

    def _send_half(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A download that fails half-way: the full Content-Length, half the bytes, then a closed socket."""
        import socket

        try:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # keep pytest output clean
        pass


# ------------------------------------------------------------- test helpers


def set_hf_endpoint(monkeypatch, endpoint: str) -> None:
    """Make huggingface_hub use `endpoint` even when callers pass ``endpoint=None``.

    Sets the HF_ENDPOINT env var (for code that reads it at call time, like
    bedgen.hub) and patches the two import-time constants that matter.
    """
    from huggingface_hub import constants

    endpoint = endpoint.rstrip("/")
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")


def set_hf_offline(monkeypatch, offline: bool = True) -> None:
    """Toggle HF_HUB_OFFLINE at test time: env var plus the constant the library reads."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1" if offline else "0")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)


def isolate_hf_hub(monkeypatch, home: str | Path) -> Path:
    """Confine huggingface_hub to `home` for one test; returns the hub cache dir.

    Sets HF_HOME/HF_HUB_CACHE (env and constants) so the default cache is
    ``home/hub``, hides any real token (HF_TOKEN, token file), turns offline
    mode off, and disables telemetry so no User-Agent agent-detection request
    goes to huggingface.co.
    """
    from huggingface_hub import constants

    home = Path(home)
    cache = home / "hub"
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for name, value in {
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
        "HF_HUB_DISABLE_TELEMETRY": True,
    }.items():
        monkeypatch.setattr(constants, name, value)
    set_hf_offline(monkeypatch, False)
    return cache
