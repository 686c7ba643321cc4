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

Uploads: what HfApi's write methods send in 2.4.0
-------------------------------------------------
Every write carries ``Authorization: Bearer <token>``. Tokens are registered with
``add_token`` (user, role ``write`` | ``read`` | ``fineGrained``, organisations); a
write without a token answers 401, with a token that may not write to the
namespace 403, as on the Hub.

* ``whoami`` -> ``GET /api/whoami-v2``: ``name``, ``orgs[].{name, roleInOrg}`` and
  ``auth.accessToken.{displayName, role, fineGrained.scoped[].{entity, permissions}}``;
  401 for an unknown token.
* ``create_repo`` -> ``POST /api/repos/create`` with JSON ``{name, organization,
  type?, visibility?, sdk?, hardware?, variables?}`` -> ``{"url"}``; 409 if the repo
  exists, with ``url`` in the body (``exist_ok=True`` reads it from the 409). A new
  repo starts with an "initial commit" holding ``.gitattributes``, like the Hub.
  Spaces need ``sdk`` (gradio, streamlit, docker, static).
* ``create_branch`` -> ``POST /api/{type}s/{repo}/branch/{branch}`` ``{startingPoint?}``
  (409 if it exists); ``list_repo_refs`` -> ``GET /api/{type}s/{repo}/refs``;
  ``list_repo_commits`` -> ``GET /api/{type}s/{repo}/commits/{rev}`` (newest first).
* ``create_commit``, in order:
  1. with a README.md among the files: ``POST /api/validate-yaml`` ``{content,
     repoType}``; the front matter must be a YAML mapping (else 400 with
     ``errors``; the client reads the JSON body before the status).
  2. ``POST /api/{type}s/{repo}/preupload/{rev}`` ``{files: [{path, sample (base64 of
     the first 512 bytes), size}]}`` -> ``{files: [{path, uploadMode: regular | lfs,
     shouldIgnore, oid}]}``. ``oid`` is what the branch holds at that path now (git
     blob sha1 for regular files, sha256 for LFS files); the client drops additions
     whose local oid equals it, so identical files are not committed again. LFS here:
     the patterns of the Hub's default ``.gitattributes`` (``*.safetensors``,
     ``*.bin``, ...), binary samples (a NUL byte) and files over 10 MB.
  3. LFS files: ``POST /[spaces/|datasets/]{repo}.git/info/lfs/objects/batch``
     ``{operation: upload, objects: [{oid (sha256), size}], ref}`` -> per object no
     ``actions`` (already stored) or ``actions.upload.href`` (``PUT /lfs/{oid}`` on
     this server: the raw bytes, no auth, like a pre-signed S3 URL) and
     ``actions.verify`` (``POST .../objects/verify`` ``{oid, size}``). The PUT goes
     through ``http_backoff``, so a dropped connection is retried (after 1, 2, 4, 8,
     8 s). **Xet**: with ``hf_xet`` installed, 2.4.0 uploads LFS files through Xet
     storage instead, without asking the server, and this server does not speak
     Xet; ``HF_HUB_DISABLE_XET=1`` (read at import into
     ``constants.HF_HUB_DISABLE_XET``; ``disable_xet`` below sets both, and
     ``isolate_hf_hub`` calls it) makes the client take the LFS path.
  4. ``POST /api/{type}s/{repo}/commit/{rev}``, NDJSON: a ``header`` line ``{summary,
     description, parentCommit?}``, then ``file`` ``{path, content (base64),
     encoding}``, ``lfsFile`` ``{path, algo, oid, size}`` (the object must have been
     uploaded), ``deletedFile`` / ``deletedFolder`` ``{path}`` lines. Not retried by
     the client. ``rev`` must be an existing branch; a ``parentCommit`` other than
     the branch head -> 412. Answer ``{commitUrl, commitOid, pullRequestUrl}``; the
     new commit is visible to the download routes at once, all files together.
* Spaces: ``get_space_variables`` / ``add_space_variable`` / ``delete_space_variable``
  -> ``GET`` / ``POST`` / ``DELETE /api/spaces/{repo}/variables`` (``{key, value,
  description?}``; answer: every variable as ``{key: {value, description,
  updatedAt}}``); ``request_space_hardware`` -> ``POST /api/spaces/{repo}/hardware``
  ``{flavor}``; ``get_space_runtime`` -> ``GET /api/spaces/{repo}/runtime``.

Private repos (``visibility: private``) answer reads only to a token that may read
the namespace; anyone else gets 404 RepoNotFound, as the Hub hides them.
``cut_uploads(n[, only="lfs"|"commit"])`` drops the connection in the middle of the
next ``n`` upload bodies (LFS PUTs and commits, or one kind): the server reads half
the body, closes the socket and stores nothing.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["FakeHub", "disable_xet", "isolate_hf_hub", "set_hf_endpoint", "set_hf_offline"]

_SHA40 = re.compile(r"^[0-9a-f]{40}$")
# URL prefixes of non-model repos, as in huggingface_hub.constants.REPO_TYPES_URL_PREFIXES.
_TYPE_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
# "/api/{models,datasets,spaces}/..." -> repo type.
_API_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
_FIXED_DATE = "2024-01-01T00:00:00.000Z"
# What the Hub accepts as a repo name (each part of namespace/name).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_SPACE_SDKS = ("gradio", "streamlit", "docker", "static")
# The Hub's default .gitattributes for a new repo (its LFS patterns decide preupload's mode).
_LFS_PATTERNS = (
    "*.7z", "*.arrow", "*.bin", "*.bz2", "*.ckpt", "*.ftz", "*.gz", "*.h5", "*.joblib", "*.lfs.*", "*.mlmodel",
    "*.model", "*.msgpack", "*.npy", "*.npz", "*.onnx", "*.ot", "*.parquet", "*.pb", "*.pickle", "*.pkl", "*.pt",
    "*.pth", "*.rar", "*.safetensors", "*.tar.*", "*.tar", "*.tflite", "*.tgz", "*.wasm", "*.xz", "*.zip", "*.zst",
    "*tfevents*",
)
_GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in _LFS_PATTERNS).encode()
_LFS_MIN_SIZE = 10 * 1024 * 1024
_WRITE_ROLES_IN_ORG = ("admin", "write", "contributor")


def _git_blob_oid(data: bytes) -> str:
    """The git blob sha1 of `data`: what the Hub uses as ETag/oid of non-LFS files."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _upload_mode(path: str, size: int, sample: bytes) -> str:
    """"lfs" or "regular", decided like the Hub's preupload endpoint (see the module docstring)."""
    name = path.rsplit("/", 1)[-1]
    if any(fnmatch.fnmatchcase(name, pattern) for pattern in _LFS_PATTERNS):
        return "lfs"
    return "lfs" if size > _LFS_MIN_SIZE or b"\0" in sample else "regular"


def _remote_oid(path: str, data: bytes) -> str:
    """The oid preupload reports for a stored file: sha256 for LFS files, git blob sha1 otherwise."""
    if _upload_mode(path, len(data), data[:512]) == "lfs":
        return hashlib.sha256(data).hexdigest()
    return _git_blob_oid(data)


@dataclass
class _Token:
    name: str
    user: str
    role: str  # "write" | "read" | "fineGrained"
    orgs: dict[str, str]  # organisation -> the user's role in it
    scoped: list[dict]  # fine-grained: [{"entity": {"type", "name"}, "permissions": [...]}]

    def may_write(self, repo_type: str, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        if self.role == "write":
            return namespace == self.user or self.orgs.get(namespace) in _WRITE_ROLES_IN_ORG
        if self.role == "fineGrained":
            for scope in self.scoped:
                entity = scope["entity"]
                if "repo.write" not in scope["permissions"]:
                    continue
                if entity["type"] in ("user", "org") and entity["name"] == namespace:
                    return True
                if entity["type"] == repo_type and entity["name"] == repo_id:
                    return True
        return False

    def may_read(self, repo_id: str) -> bool:
        namespace = repo_id.split("/")[0]
        return namespace == self.user or namespace in self.orgs


@dataclass
class _Repo:
    """One repo: immutable commits (sha -> files) and refs (branch/tag -> sha)."""

    private: bool = False
    sdk: str | None = None
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    parents: dict[str, str | None] = field(default_factory=dict)
    titles: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha -> (title, message)
    variables: dict[str, dict] = field(default_factory=dict)  # Space variables
    hardware: str | None = None  # requested Space hardware

    def resolve(self, revision: str) -> str | None:
        """Branch/tag name or full commit sha -> commit sha (None if unknown)."""
        if revision in self.refs:
            return self.refs[revision]
        if revision in self.commits:
            return revision
        return None

    def history(self, sha: str) -> list[str]:
        """``sha`` and its ancestors, newest first."""
        chain: list[str] = []
        current: str | None = sha
        while current is not None and current not in chain:
            chain.append(current)
            current = self.parents.get(current)
        return chain


@dataclass
class _Request:
    method: str
    path: str  # as sent, still percent-encoded
    query: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""

    @property
    def token(self) -> str | None:
        auth = self.headers.get("authorization", "")
        return auth[7:].strip() or None if auth.lower().startswith("bearer ") else None

    def json(self):
        return json.loads(self.body or b"null")


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
        self._tokens: dict[str, _Token] = {}
        self._lfs: dict[str, bytes] = {}  # sha256 -> uploaded LFS object
        self._lock = threading.Lock()
        self._counter = itertools.count()
        self.requests: list[tuple[str, str]] = []
        self.endpoint: str | None = None
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._cuts = 0
        self._upload_cuts, self._upload_cut_kind = 0, None

    # ------------------------------------------------------------------ setup

    def cut_downloads(self, count: int) -> None:
        """The next ``count`` file downloads stop half-way (connection closed mid-body)."""
        with self._lock:
            self._cuts = count

    def cut_uploads(self, count: int, only: str | None = None) -> None:
        """The next ``count`` upload bodies are cut half-way, so nothing of them is stored: LFS PUTs
        and commits, or only one kind (``only="lfs"`` or ``only="commit"``)."""
        if only not in (None, "lfs", "commit"):
            raise ValueError("only must be None, 'lfs' or 'commit'")
        with self._lock:
            self._upload_cuts, self._upload_cut_kind = count, only

    def _take_cut(self, upload: str | None = None) -> bool:
        """Whether to cut this download (upload=None) or upload ("lfs" or "commit")."""
        with self._lock:
            if upload is None:
                if self._cuts <= 0:
                    return False
                self._cuts -= 1
                return True
            if self._upload_cuts <= 0 or self._upload_cut_kind not in (None, upload):
                return False
            self._upload_cuts -= 1
            return True

    def add_token(
        self,
        token: str,
        user: str,
        role: str = "write",
        orgs: dict[str, str] | None = None,
        scoped: list[dict] | None = None,
        name: str = "bedgen-tests",
    ) -> None:
        """Accept ``token`` as `user`'s access token with `role` ("write", "read" or "fineGrained").

        `orgs` maps organisation names to the user's role in them ("admin", "write",
        "contributor", "read"); `scoped` lists a fine-grained token's permissions as
        on the Hub: ``[{"entity": {"type": "user"|"org"|"model"|"space", "name": ...},
        "permissions": ["repo.content.read", "repo.write"]}]``.
        """
        if role not in ("write", "read", "fineGrained"):
            raise ValueError("role must be write, read or fineGrained")
        with self._lock:
            self._tokens[token] = _Token(name, user, role, dict(orgs or {}), list(scoped or []))

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
            if sha not in repo.commits:
                repo.parents[sha] = repo.refs.get(revision)
                repo.titles[sha] = ("add_repo", "")
            repo.commits[sha] = content
            repo.refs[revision] = sha
        return sha

    # ---------------------------------------------------------- inspection

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, bytes]:
        """The files of `repo_id` at `revision` (KeyError if either is unknown)."""
        with self._lock:
            repo = self._repos[(repo_type, repo_id)]
            sha = repo.resolve(revision)
            if sha is None:
                raise KeyError(revision)
            return dict(repo.commits[sha])

    def repo(self, repo_id: str, repo_type: str = "model") -> _Repo:
        """The stored repo (refs, commits, privacy, Space variables and hardware) for assertions."""
        with self._lock:
            return self._repos[(repo_type, repo_id)]

    def stored_blobs(self) -> list[tuple[str, bytes]]:
        """Every file of every commit of every repo, and every LFS object ever uploaded."""
        with self._lock:
            blobs = [
                (f"{repo_type}:{repo_id}@{sha}:{path}", data)
                for (repo_type, repo_id), repo in self._repos.items()
                for sha, files in repo.commits.items()
                for path, data in files.items()
            ]
            return blobs + [(f"lfs:{oid}", data) for oid, data in self._lfs.items()]

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

    def _token(self, request: _Request) -> _Token | None:
        with self._lock:
            return self._tokens.get(request.token or "")

    def _readable(self, request: _Request, repo_id: str, repo: _Repo) -> bool:
        if not repo.private:
            return True
        token = self._token(request)
        return token is not None and token.may_read(repo_id)

    def _check_write(self, request: _Request, repo_type: str, repo_id: str) -> "_Response | None":
        """None if the request's token may write to `repo_id`, else the Hub's error answer."""
        if request.token is None:
            return _Response.error(401, None, "Invalid credentials in Authorization header")
        token = self._token(request)
        if token is None:
            return _Response.error(401, None, "Invalid credentials in Authorization header")
        if not token.may_write(repo_type, repo_id):
            return _Response.error(403, None, f"You don't have the rights to write to {repo_id}")
        return None

    def _url(self, repo_type: str, repo_id: str) -> str:
        return f"{self.endpoint}/{_TYPE_PREFIX[repo_type]}{repo_id}"

    def _route(self, request: _Request) -> "_Response":
        method, raw_path = request.method, request.path
        segments = [unquote(s) for s in raw_path.strip("/").split("/")]

        if segments[:2] == ["api", "agent-harnesses"]:
            # Agent-detection registry fetched by huggingface_hub's User-Agent code.
            return _Response.json({"standardEnvVars": [], "harnesses": {}})
        if segments == ["api", "whoami-v2"]:
            return self._whoami(request)
        if segments == ["api", "repos", "create"] and method == "POST":
            return self._create_repo(request)
        if segments == ["api", "validate-yaml"] and method == "POST":
            return _validate_yaml(request)
        if len(segments) == 2 and segments[0] == "lfs" and method == "PUT":
            return self._lfs_put(segments[1], request.body)

        if len(segments) >= 3 and segments[0] == "api" and segments[1] in _API_TYPES:
            return self._api(_API_TYPES[segments[1]], segments[2:], request)

        repo_type = "model"
        if segments[0] in ("datasets", "spaces"):
            repo_type, segments = _API_TYPES[segments[0]], segments[1:]
        # LFS batch API: /[datasets/|spaces/]{repo_id}.git/info/lfs/objects/{batch|verify}
        for i in (0, 1):
            if len(segments) == i + 5 and segments[i].endswith(".git") and segments[i + 1 : i + 4] == ["info", "lfs", "objects"]:
                repo_segments = segments[:i] + [segments[i][: -len(".git")]]
                return self._lfs_batch(repo_type, repo_segments, segments[i + 4], request)
        # File downloads: /[datasets/|spaces/]{repo_id}/resolve/{revision}/{path}
        for i in (1, 2):
            if len(segments) > i + 2 and segments[i] == "resolve":
                if method not in ("GET", "HEAD"):
                    return _Response.error(405, None, "method not allowed")
                return self._resolve(repo_type, segments[:i], segments[i + 1], "/".join(segments[i + 2 :]), request)
        return _Response.error(404, None, f"no route for {raw_path}")

    def _api(self, repo_type: str, segments: list[str], request: _Request) -> "_Response":
        found = self._lookup(repo_type, segments)
        if found is None or not self._readable(request, found[0], found[1]):
            return _not_found_repo("/".join(segments[:2]))
        repo_id, repo, rest = found
        method = request.method
        action = rest[0] if rest else ""

        if method in ("GET", "HEAD") and (rest == [] or (len(rest) == 2 and action == "revision")):
            return self._repo_info(repo_type, repo_id, repo, rest[1] if rest else "main", request.query)
        if method == "GET" and len(rest) >= 2 and action == "tree":
            # list_repo_tree: GET /api/models/{repo_id}/tree/{rev}[/{path}]?recursive=..&expand=..
            sha = repo.resolve(rest[1])
            if sha is None:
                return _not_found_revision(repo_id, rest[1])
            return self._tree(repo.commits[sha], "/".join(rest[2:]).strip("/"), "recursive=true" in request.query.lower(), sha)
        if method == "GET" and rest == ["refs"]:
            return self._refs(repo)
        if method == "GET" and len(rest) == 2 and action == "commits":
            return self._commits(repo_id, repo, rest[1])
        if method == "GET" and repo_type == "space" and rest in (["variables"], ["runtime"]):
            denied = self._check_write(request, repo_type, repo_id)  # settings are for the owner only
            if denied is not None:
                return denied
            return _Response.json(_variables(repo) if action == "variables" else _runtime(repo))

        writes = {"preupload": self._preupload, "commit": self._commit, "branch": self._branch,
                  "variables": self._variables, "hardware": self._hardware}
        if method in ("POST", "DELETE") and action in writes:
            denied = self._check_write(request, repo_type, repo_id)
            if denied is not None:
                return denied
            return writes[action](repo_type, repo_id, repo, rest[1:], request)
        return _Response.error(404, None, f"unsupported api route {method} {'/'.join(rest)}")

    # ------------------------------------------------------------- read API

    def _repo_info(self, repo_type: str, repo_id: str, repo: _Repo, revision: str, query: str) -> "_Response":
        # repo_info / model_info: GET /api/models/{repo_id}[/revision/{rev}]
        sha = repo.resolve(revision)
        if sha is None:
            return _not_found_revision(repo_id, revision)
        files = repo.commits[sha]
        blobs = "blobs=true" in query.lower()
        siblings = [
            {"rfilename": p, **({"size": len(d), "blobId": _git_blob_oid(d)} if blobs else {})}
            for p, d in sorted(files.items())
        ]
        info = {
            "_id": hashlib.sha1(repo_id.encode()).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0] if "/" in repo_id else None,
            "sha": sha,
            "lastModified": _FIXED_DATE,
            "createdAt": _FIXED_DATE,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        if repo_type == "space":
            info.update(sdk=repo.sdk, runtime=_runtime(repo))
        return _Response.json(info)

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

    @staticmethod
    def _refs(repo: _Repo) -> "_Response":
        branches = [{"name": name, "ref": f"refs/heads/{name}", "targetCommit": sha} for name, sha in sorted(repo.refs.items())]
        return _Response.json({"branches": branches, "converts": [], "tags": [], "pullRequests": []})

    @staticmethod
    def _commits(repo_id: str, repo: _Repo, revision: str) -> "_Response":
        sha = repo.resolve(revision)
        if sha is None:
            return _not_found_revision(repo_id, revision)
        return _Response.json([
            {"id": c, "title": repo.titles.get(c, ("", ""))[0], "message": repo.titles.get(c, ("", ""))[1],
             "authors": [{"user": "bedgen-tests"}], "date": _FIXED_DATE}
            for c in repo.history(sha)
        ])

    def _resolve(self, repo_type: str, repo_segments: list[str], revision: str, path: str, request: _Request) -> "_Response":
        found = self._lookup(repo_type, repo_segments)
        if found is None or found[2] or not self._readable(request, found[0], found[1]):
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

    # ------------------------------------------------------------ write API

    def _whoami(self, request: _Request) -> "_Response":
        token = self._token(request)
        if token is None:
            return _Response.error(401, None, "Invalid credentials in Authorization header")
        access = {"displayName": token.name, "role": token.role, "createdAt": _FIXED_DATE}
        if token.role == "fineGrained":
            access["fineGrained"] = {"canReadGatedRepos": False, "global": [], "scoped": token.scoped}
        return _Response.json({
            "type": "user",
            "id": hashlib.sha1(token.user.encode()).hexdigest()[:24],
            "name": token.user,
            "fullname": token.user,
            "isPro": False,
            "canPay": False,
            "orgs": [{"type": "org", "name": org, "roleInOrg": role} for org, role in token.orgs.items()],
            "auth": {"type": "access_token", "accessToken": access},
        })

    def _create_repo(self, request: _Request) -> "_Response":
        payload = request.json() or {}
        repo_type = payload.get("type") or "model"
        token = self._token(request)
        namespace = payload.get("organization") or (token.user if token else None)
        name = payload.get("name") or ""
        if repo_type not in _TYPE_PREFIX:
            return _Response.error(400, None, f"invalid repo type {repo_type!r}")
        if not (_NAME.match(name) and (namespace is None or _NAME.match(namespace))) or ".." in name or "--" in name:
            return _Response.error(400, None, f"invalid repo name {name!r}")
        repo_id = f"{namespace}/{name}" if namespace else name
        denied = self._check_write(request, repo_type, repo_id)
        if denied is not None:
            return denied
        sdk = payload.get("sdk")
        if repo_type == "space" and sdk not in _SPACE_SDKS:
            return _Response.error(400, None, f"a Space needs an sdk among {', '.join(_SPACE_SDKS)}")
        url = self._url(repo_type, repo_id)
        with self._lock:
            if (repo_type, repo_id) in self._repos:
                response = _Response.error(409, None, f"You already created this {repo_type} repo")
                response.body = json.dumps({"error": f"You already created this {repo_type} repo", "url": url}).encode()
                return response
            repo = _Repo(private=payload.get("visibility") == "private" or payload.get("private") is True, sdk=sdk)
            repo.hardware = payload.get("hardware")
            for variable in payload.get("variables") or []:
                repo.variables[variable["key"]] = {"value": variable["value"], "description": variable.get("description")}
            self._repos[(repo_type, repo_id)] = repo
            self._new_commit(repo, "main", None, {".gitattributes": _GITATTRIBUTES}, "initial commit", "")
        return _Response.json({"url": url, "name": repo_id, "id": repo_id})

    def _new_commit(self, repo: _Repo, branch: str, parent: str | None, files: dict[str, bytes], title: str,
                    message: str) -> str:
        """Store a commit and move `branch` to it (the caller holds the lock)."""
        digest = hashlib.sha1(f"{parent}\0{title}\0{next(self._counter)}\0".encode())
        for path in sorted(files):
            digest.update(f"{path}\0{_git_blob_oid(files[path])}\n".encode())
        sha = digest.hexdigest()
        repo.commits[sha], repo.parents[sha], repo.titles[sha] = files, parent, (title, message)
        repo.refs[branch] = sha
        return sha

    def _branch(self, repo_type: str, repo_id: str, repo: _Repo, rest: list[str], request: _Request) -> "_Response":
        if len(rest) != 1 or request.method != "POST":
            return _Response.error(404, None, "unsupported branch route")
        branch = rest[0]
        if _SHA40.match(branch) or branch.startswith("refs/") or not re.match(r"^[\w.][\w./-]*$", branch):
            return _Response.error(400, None, f"Invalid reference for a branch: {branch}")
        start = (request.json() or {}).get("startingPoint") or "main"
        with self._lock:
            if branch in repo.refs:
                return _Response.error(409, None, f"Reference already exists: refs/heads/{branch}")
            sha = repo.resolve(start)
            if sha is None:
                return _not_found_revision(repo_id, start)
            repo.refs[branch] = sha
        return _Response.json({})

    def _preupload(self, repo_type: str, repo_id: str, repo: _Repo, rest: list[str], request: _Request) -> "_Response":
        revision = rest[0] if rest else "main"
        sha = repo.resolve(revision)
        if sha is None:
            return _not_found_revision(repo_id, revision)
        current = repo.commits[sha]
        answer = []
        for item in (request.json() or {}).get("files", []):
            path = item["path"]
            mode = _upload_mode(path, int(item["size"]), base64.b64decode(item["sample"]))
            oid = _remote_oid(path, current[path]) if path in current else None
            answer.append({"path": path, "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        return _Response.json({"files": answer, "commitOid": sha})

    def _lfs_batch(self, repo_type: str, repo_segments: list[str], action: str, request: _Request) -> "_Response":
        found = self._lookup(repo_type, repo_segments)
        if found is None or found[2] or request.method != "POST":
            return _not_found_repo("/".join(repo_segments))
        repo_id = found[0]
        denied = self._check_write(request, repo_type, repo_id)
        if denied is not None:
            return denied
        payload = request.json() or {}
        if action == "verify":
            with self._lock:
                stored = self._lfs.get(payload.get("oid", ""))
            if stored is None or len(stored) != payload.get("size"):
                return _Response.error(404, None, f"LFS object {payload.get('oid')} was not uploaded")
            return _Response.json({"success": True})
        if action != "batch" or payload.get("operation") != "upload":
            return _Response.error(400, None, "only LFS uploads are supported")
        verify = {"href": f"{self._url(repo_type, repo_id)}.git/info/lfs/objects/verify", "header": {}}
        objects = []
        for obj in payload.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            with self._lock:
                known = obj["oid"] in self._lfs
            if not known:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs/{obj['oid']}", "header": {}}, "verify": verify}
            objects.append(entry)
        return _Response.json({"transfer": "basic", "objects": objects})

    def _lfs_put(self, oid: str, body: bytes) -> "_Response":
        if hashlib.sha256(body).hexdigest() != oid:
            return _Response.error(400, None, "the uploaded bytes do not match the LFS oid")
        with self._lock:
            self._lfs[oid] = body
        return _Response.json({})

    def _commit(self, repo_type: str, repo_id: str, repo: _Repo, rest: list[str], request: _Request) -> "_Response":
        revision = rest[0] if rest else "main"
        try:
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
        except ValueError:
            return _Response.error(400, None, "the commit payload is not NDJSON")
        if not lines or lines[0].get("key") != "header":
            return _Response.error(400, None, "the commit payload must start with a header line")
        header = lines[0]["value"]
        with self._lock:
            if revision not in repo.refs:
                return _not_found_revision(repo_id, revision)
            head = repo.refs[revision]
            parent = header.get("parentCommit")
            if parent is not None and not head.startswith(parent):
                return _Response.error(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(repo.commits[head])
            for line in lines[1:]:
                key, value = line.get("key"), line.get("value") or {}
                path = value.get("path", "")
                if key == "file":
                    files[path] = base64.b64decode(value["content"])
                elif key == "lfsFile":
                    data = self._lfs.get(value.get("oid", ""))
                    if data is None:
                        return _Response.error(400, None, f"LFS object for {path} was never uploaded")
                    files[path] = data
                elif key == "deletedFile":
                    if files.pop(path, None) is None:
                        return _Response.error(404, "EntryNotFound", f"A file with this name doesn't exist: {path}")
                elif key == "deletedFolder":
                    for name in [p for p in files if p.startswith(path.rstrip("/") + "/")]:
                        del files[name]
                else:
                    return _Response.error(400, None, f"unknown commit operation {key!r}")
            sha = self._new_commit(repo, revision, head, files, header.get("summary", ""), header.get("description", ""))
        return _Response.json({
            "commitUrl": f"{self._url(repo_type, repo_id)}/commit/{sha}",
            "commitOid": sha,
            "success": True,
            "pullRequestUrl": None,
        })

    def _variables(self, repo_type: str, repo_id: str, repo: _Repo, rest: list[str], request: _Request) -> "_Response":
        if repo_type != "space" or rest:
            return _Response.error(404, None, "variables exist for Spaces only")
        payload = request.json() or {}
        with self._lock:
            if request.method == "POST":
                repo.variables[payload["key"]] = {"value": payload["value"], "description": payload.get("description")}
            else:
                repo.variables.pop(payload.get("key"), None)
            return _Response.json(_variables(repo))

    def _hardware(self, repo_type: str, repo_id: str, repo: _Repo, rest: list[str], request: _Request) -> "_Response":
        if repo_type != "space" or rest or request.method != "POST":
            return _Response.error(404, None, "hardware exists for Spaces only")
        with self._lock:
            repo.hardware = (request.json() or {}).get("flavor")
            return _Response.json(_runtime(repo))


def _variables(repo: _Repo) -> dict[str, dict]:
    return {key: {**value, "updatedAt": _FIXED_DATE} for key, value in repo.variables.items()}


def _runtime(repo: _Repo) -> dict:
    return {"stage": "BUILDING", "hardware": {"current": None, "requested": repo.hardware}, "gcTimeout": None}


def _validate_yaml(request: _Request) -> "_Response":
    """The README front matter must parse as a YAML mapping (what the Hub checks first)."""
    import yaml

    content = (request.json() or {}).get("content", "")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", content, re.DOTALL)
    if match is None:
        return _Response.json({"errors": [], "warnings": [{"message": "Empty or missing yaml metadata in repo card"}]})
    try:
        metadata = yaml.safe_load(match[1])
    except yaml.YAMLError as e:
        return _Response(400, {"Content-Type": "application/json"},
                         json.dumps({"errors": [{"message": f"invalid YAML: {e}"}]}).encode())
    if not isinstance(metadata, dict):
        return _Response(400, {"Content-Type": "application/json"},
                         json.dumps({"errors": [{"message": "the metadata must be a YAML mapping"}]}).encode())
    return _Response.json({"errors": [], "warnings": []})


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

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        hub: FakeHub = self.server.hub  # type: ignore[attr-defined]
        url = urlsplit(self.path)
        with hub._lock:
            hub.requests.append((method, url.path))
        upload = "lfs" if method == "PUT" and url.path.startswith("/lfs/") else (
            "commit" if method == "POST" and "/commit/" in url.path else None)
        if upload is not None and hub._take_cut(upload):
            self._drop_mid_body()
            return
        request = _Request(method, url.path, url.query, {k.lower(): v for k, v in self.headers.items()}, self._body())
        try:
            response = hub._route(request)
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

    def _body(self) -> bytes:
        """The request body (Content-Length or chunked transfer encoding)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _drop_mid_body(self) -> None:
        """An upload cut half-way: read half the body, then close the socket without an answer."""
        length = int(self.headers.get("Content-Length") or 0)
        try:
            if length:
                self.rfile.read(max(1, length // 2))
            else:
                self.rfile.readline()
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _send_half(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """A download that fails half-way: the full Content-Length, half the bytes, then a closed socket."""
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
    bedgen.core.hub) and patches the two import-time constants that matter.
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


def disable_xet(monkeypatch) -> None:
    """Uploads take the LFS path this server speaks, not Xet: env var (for subprocesses) plus the constant."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)


def isolate_hf_hub(monkeypatch, home: str | Path) -> Path:
    """Confine huggingface_hub to `home` for one test; returns the hub cache dir.

    Sets HF_HOME/HF_HUB_CACHE (env and constants) so the default cache is
    ``home/hub``, hides any real token (HF_TOKEN, token file), turns offline
    mode off, disables telemetry so no User-Agent agent-detection request
    goes to huggingface.co, and disables Xet uploads (see ``disable_xet``).
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
    disable_xet(monkeypatch)
    return cache
