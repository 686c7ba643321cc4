"""The fake Hub in tests/hubserver.py against the REAL huggingface_hub download code."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from huggingface_hub import constants, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

try:  # pytest's default import mode puts tests/ on sys.path
    from hubserver import FakeHub, isolate_hf_hub, set_hf_endpoint, set_hf_offline
except ImportError:  # tests/ imported as a package
    from tests.hubserver import FakeHub, isolate_hf_hub, set_hf_endpoint, set_hf_offline

REPO = "acme/tiny"
CONFIG = {"model_type": "tiny", "hidden": 4}
WEIGHTS = bytes(range(256)) * 3
MAIN_FILES = {
    "config.json": json.dumps(CONFIG).encode(),
    "model.safetensors": WEIGHTS,
    "sub/extra.bin": b"\x00\x01pickle-ish",
}
V1_FILES = {"config.json": b'{"model_type": "tiny", "hidden": 8}', "v1-only.txt": b"hello"}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    isolate_hf_hub(monkeypatch, tmp_path / "hf")
    with FakeHub() as hub:
        hub.main_sha = hub.add_repo(REPO, MAIN_FILES)
        hub.v1_sha = hub.add_repo(REPO, V1_FILES, revision="v1")
        yield hub


def files_in(folder: str | Path) -> dict[str, bytes]:
    root = Path(folder)
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def resolve_gets(hub: FakeHub) -> list[str]:
    return [path for method, path in hub.requests if method == "GET" and "/resolve/" in path]


def test_snapshot_download_all_files(hub, tmp_path):
    path = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path) == tmp_path / "c" / "models--acme--tiny" / "snapshots" / hub.main_sha
    assert files_in(path) == MAIN_FILES
    assert (tmp_path / "c" / "models--acme--tiny" / "refs" / "main").read_text() == hub.main_sha
    # The request sequence of huggingface_hub 2.4.0 (see hubserver's docstring).
    assert hub.requests[0] == ("GET", f"/api/models/{REPO}/revision/main")
    assert hub.requests[1] == ("GET", f"/api/models/{REPO}/tree/{hub.main_sha}")
    assert sorted(resolve_gets(hub)) == sorted(f"/{REPO}/resolve/{hub.main_sha}/{p}" for p in MAIN_FILES)
    assert sum(m == "HEAD" for m, _ in hub.requests) == len(MAIN_FILES)

    # A second call only re-resolves the branch: tree listing and files come from the cache.
    hub.requests.clear()
    assert snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=tmp_path / "c") == path
    assert hub.requests == [("GET", f"/api/models/{REPO}/revision/main")]


def test_allow_patterns(hub, tmp_path):
    path = snapshot_download(
        REPO, allow_patterns=["*.json", "*.safetensors"], endpoint=hub.endpoint, cache_dir=tmp_path / "c"
    )
    assert files_in(path) == {k: MAIN_FILES[k] for k in ("config.json", "model.safetensors")}
    assert not any(p.endswith("extra.bin") for _, p in hub.requests)


def test_revisions_branch_and_commit_sha(hub, tmp_path):
    cache = tmp_path / "c"
    v1 = snapshot_download(REPO, revision="v1", endpoint=hub.endpoint, cache_dir=cache)
    assert hub.v1_sha != hub.main_sha and Path(v1).name == hub.v1_sha
    assert files_in(v1) == V1_FILES
    assert (cache / "models--acme--tiny" / "refs" / "v1").read_text() == hub.v1_sha

    # A 40-hex revision skips repo_info and goes straight to the tree listing.
    hub.requests.clear()
    main = snapshot_download(REPO, revision=hub.main_sha, endpoint=hub.endpoint, cache_dir=cache)
    assert files_in(main) == MAIN_FILES
    assert hub.requests[0] == ("GET", f"/api/models/{REPO}/tree/{hub.main_sha}")
    assert not any("/revision/" in p for _, p in hub.requests)

    # Moving a branch: the new commit is downloaded, the old sha still resolves.
    new_sha = hub.add_repo(REPO, {"config.json": b"{}"}, revision="main")
    moved = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
    assert Path(moved).name == new_sha and files_in(moved) == {"config.json": b"{}"}
    assert files_in(snapshot_download(REPO, revision=hub.main_sha, endpoint=hub.endpoint, cache_dir=cache)) == MAIN_FILES


def test_hf_hub_download_and_missing_file(hub, tmp_path):
    path = hf_hub_download(REPO, "sub/extra.bin", revision="main", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    assert Path(path).read_bytes() == MAIN_FILES["sub/extra.bin"]
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(REPO, "nope.json", endpoint=hub.endpoint, cache_dir=tmp_path / "c")


def test_unknown_repo_and_revision(hub, tmp_path):
    with pytest.raises(RepositoryNotFoundError):
        snapshot_download("acme/missing", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):
        snapshot_download(REPO, revision="v9", endpoint=hub.endpoint, cache_dir=tmp_path / "c")
    with pytest.raises(RevisionNotFoundError):  # unknown sha: the tree listing 404s
        snapshot_download(REPO, revision="f" * 40, endpoint=hub.endpoint, cache_dir=tmp_path / "c")


def test_offline_uses_cache_without_requests(hub, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    patterns = ["*.json", "*.safetensors"]
    online = snapshot_download(REPO, allow_patterns=patterns, endpoint=hub.endpoint, cache_dir=cache)
    hub.requests.clear()

    set_hf_offline(monkeypatch)  # constants.HF_HUB_OFFLINE is what the library consults
    assert snapshot_download(REPO, allow_patterns=patterns, endpoint=hub.endpoint, cache_dir=cache) == online
    assert snapshot_download(REPO, revision=Path(online).name, allow_patterns=patterns,
                             endpoint=hub.endpoint, cache_dir=cache) == online
    assert hub.requests == []

    with pytest.raises(LocalEntryNotFoundError, match="HF_HUB_OFFLINE"):
        snapshot_download("acme/never", endpoint=hub.endpoint, cache_dir=cache)
    with pytest.raises(LocalEntryNotFoundError):  # v1 was never downloaded either
        snapshot_download(REPO, revision="v1", endpoint=hub.endpoint, cache_dir=cache)
    # Cached tree listing says sub/extra.bin exists but it was never fetched.
    with pytest.raises(IncompleteSnapshotError):
        snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
    assert hub.requests == []

    # local_files_only=True behaves the same without touching constants.
    set_hf_offline(monkeypatch, False)
    assert snapshot_download(REPO, allow_patterns=patterns, local_files_only=True, cache_dir=cache) == online
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("acme/never", local_files_only=True, cache_dir=cache)
    assert hub.requests == []


def test_server_down_falls_back_to_cache(hub, tmp_path):
    cache = tmp_path / "c"
    online = snapshot_download(REPO, endpoint=hub.endpoint, cache_dir=cache)
    endpoint = hub.endpoint
    hub.stop()
    assert snapshot_download(REPO, endpoint=endpoint, cache_dir=cache) == online
    with pytest.raises(LocalEntryNotFoundError):
        snapshot_download("acme/never", endpoint=endpoint, cache_dir=cache)


def test_env_var_at_test_time(hub, tmp_path, monkeypatch):
    """HF_ENDPOINT set after import: honoured via endpoint=os.environ[...] or via set_hf_endpoint."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    assert constants.ENDPOINT != hub.endpoint  # read at import: the env var alone changes nothing
    path = snapshot_download(REPO, endpoint=os.environ.get("HF_ENDPOINT") or None)  # bedgen's way
    assert Path(path).parents[1] == tmp_path / "hf" / "hub" / "models--acme--tiny"  # isolate_hf_hub's cache

    hub.requests.clear()
    set_hf_endpoint(monkeypatch, hub.endpoint)
    assert files_in(snapshot_download(REPO, revision="v1", endpoint=None)) == V1_FILES
    assert hub.requests[0] == ("GET", f"/api/models/{REPO}/revision/v1")


def test_directory_source_and_dataset_type(tmp_path, monkeypatch):
    isolate_hf_hub(monkeypatch, tmp_path / "hf")
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "b" / "deep.json").write_text("[1]")
    (src / "top.txt").write_text("top")
    with FakeHub() as hub:
        sha = hub.add_repo("solo", src)  # no namespace, like legacy "gpt2"
        dsha = hub.add_repo("acme/data", {"x.csv": b"1,2"}, repo_type="dataset")
        path = snapshot_download("solo", endpoint=hub.endpoint)
        assert Path(path).name == sha and files_in(path) == {"a/b/deep.json": b"[1]", "top.txt": b"top"}
        dpath = snapshot_download("acme/data", repo_type="dataset", endpoint=hub.endpoint)
        assert Path(dpath).name == dsha and files_in(dpath) == {"x.csv": b"1,2"}
        assert ("GET", f"/datasets/acme/data/resolve/{dsha}/x.csv") in hub.requests
        with pytest.raises(RepositoryNotFoundError):  # a model repo is not a dataset
            snapshot_download("solo", repo_type="dataset", endpoint=hub.endpoint)


# --------------------------------------------------------------------------- uploads

TOKEN, READ_TOKEN = "hf_test_write_token_0123456789", "hf_test_read_token_0123456789"


@pytest.fixture
def uphub(tmp_path, monkeypatch):
    """A fake Hub with a write token for user 'alice' (member of 'acme') and a read-only one."""
    isolate_hf_hub(monkeypatch, tmp_path / "hf")
    with FakeHub() as hub:
        hub.add_token(TOKEN, "alice", orgs={"acme": "write", "readers": "read"})
        hub.add_token(READ_TOKEN, "alice", role="read")
        yield hub


def _api(hub, token=TOKEN):
    from huggingface_hub import HfApi

    return HfApi(endpoint=hub.endpoint, token=token)


def test_whoami_reports_user_orgs_and_token_role(uphub):
    from huggingface_hub.errors import HfHubHTTPError

    me = _api(uphub).whoami()
    assert me["name"] == "alice" and {o["name"]: o["roleInOrg"] for o in me["orgs"]} == {"acme": "write", "readers": "read"}
    assert me["auth"]["accessToken"]["role"] == "write"
    assert _api(uphub, READ_TOKEN).whoami()["auth"]["accessToken"]["role"] == "read"
    with pytest.raises(HfHubHTTPError, match="Invalid user token"):
        _api(uphub, "hf_unknown_token_000000000000").whoami()


def test_create_commit_regular_and_lfs_files_then_download(uphub, tmp_path):
    from huggingface_hub import CommitOperationAdd

    api = _api(uphub)
    url = api.create_repo("acme/up")
    assert url == f"{uphub.endpoint}/acme/up" and url.repo_id == "acme/up"
    assert api.create_repo("acme/up", exist_ok=True).repo_id == "acme/up"  # 409 -> exist_ok reads the url
    weights = bytes(range(256)) * 64  # binary: an LFS file
    info = api.create_commit("acme/up", [
        CommitOperationAdd("config.json", b'{"a": 1}'),
        CommitOperationAdd("unet/model.safetensors", weights),
        CommitOperationAdd("README.md", b"---\nlicense: mit\n---\n# hi\n"),
    ], commit_message="first upload")
    assert info.oid == uphub.repo("acme/up").refs["main"]
    posted = [path for method, path in uphub.requests if method in ("POST", "PUT")]
    assert "/api/validate-yaml" in posted and "/api/models/acme/up/preupload/main" in posted
    assert "/acme/up.git/info/lfs/objects/batch" in posted and "/acme/up.git/info/lfs/objects/verify" in posted
    assert any(p.startswith("/lfs/") for p in posted) and "/api/models/acme/up/commit/main" in posted
    path = snapshot_download("acme/up", endpoint=uphub.endpoint, cache_dir=tmp_path / "c")
    assert files_in(path) == {".gitattributes": files_in(path)[".gitattributes"], "config.json": b'{"a": 1}',
                              "unet/model.safetensors": weights, "README.md": b"---\nlicense: mit\n---\n# hi\n"}

    # The same files again: preupload reports identical oids, the client commits nothing, no LFS upload.
    uphub.requests.clear()
    again = api.create_commit("acme/up", [CommitOperationAdd("config.json", b'{"a": 1}'),
                                          CommitOperationAdd("unet/model.safetensors", weights)],
                              commit_message="same again")
    assert again.oid == info.oid
    assert not any(p.startswith("/lfs/") or p.endswith("/commit/main") for _, p in uphub.requests)
    titles = [c.title for c in api.list_repo_commits("acme/up")]
    assert titles == ["first upload", "initial commit"]


def test_branches_deletions_and_parent_commit(uphub):
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    api = _api(uphub)
    api.create_repo("alice/b")
    first = api.create_commit("alice/b", [CommitOperationAdd("a/x.txt", b"x"), CommitOperationAdd("a/y.txt", b"y"),
                                          CommitOperationAdd("keep.txt", b"k")], commit_message="files")
    api.create_branch("alice/b", branch="v1")
    api.create_branch("alice/b", branch="v1", exist_ok=True)
    assert {b.name: b.target_commit for b in api.list_repo_refs("alice/b").branches} == {"main": first.oid, "v1": first.oid}
    api.create_commit("alice/b", [CommitOperationDelete("a/"), CommitOperationAdd("new.txt", b"n")],
                      commit_message="on v1", revision="v1", parent_commit=first.oid)
    assert sorted(uphub.files("alice/b", "v1")) == [".gitattributes", "keep.txt", "new.txt"]
    assert sorted(uphub.files("alice/b", "main")) == [".gitattributes", "a/x.txt", "a/y.txt", "keep.txt"]
    with pytest.raises(HfHubHTTPError) as stale:  # v1 moved on since `first`
        api.create_commit("alice/b", [CommitOperationAdd("z.txt", b"z")], commit_message="stale",
                          revision="v1", parent_commit=first.oid)
    assert stale.value.response.status_code == 412
    with pytest.raises(RevisionNotFoundError):  # commits go to existing branches only
        api.create_commit("alice/b", [CommitOperationAdd("z.txt", b"z")], commit_message="x", revision="nope")


def test_permissions_private_repos_and_bad_names(uphub, tmp_path):
    from huggingface_hub import CommitOperationAdd
    from huggingface_hub.errors import HfHubHTTPError

    for token, repo, status in ((READ_TOKEN, "alice/r", 403), (TOKEN, "readers/r", 403), (TOKEN, "bob/r", 403),
                                (None, "alice/r", 401)):
        with pytest.raises(HfHubHTTPError) as denied:
            _api(uphub, token if token else False).create_repo(repo)
        assert denied.value.response.status_code == status, (token, repo)
    # The client validates names first (HFValidationError); the server refuses them too.
    import urllib.error
    import urllib.request

    raw = urllib.request.Request(f"{uphub.endpoint}/api/repos/create", method="POST",
                                 data=json.dumps({"name": "bad name", "organization": "alice"}).encode(),
                                 headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as bad:
        urllib.request.urlopen(raw)
    assert bad.value.code == 400

    api = _api(uphub)
    api.create_repo("alice/secret", private=True)
    api.create_commit("alice/secret", [CommitOperationAdd("w.safetensors", b"\0" * 10)], commit_message="w")
    assert api.repo_info("alice/secret").private is True
    with pytest.raises(RepositoryNotFoundError):  # hidden from anonymous readers
        snapshot_download("alice/secret", endpoint=uphub.endpoint, cache_dir=tmp_path / "c", token=False)
    path = snapshot_download("alice/secret", endpoint=uphub.endpoint, cache_dir=tmp_path / "c", token=TOKEN)
    assert files_in(path)["w.safetensors"] == b"\0" * 10
    with pytest.raises(HfHubHTTPError) as read_only:  # a read token cannot commit
        _api(uphub, READ_TOKEN).create_commit("alice/secret", [CommitOperationAdd("x.txt", b"x")], commit_message="x")
    assert read_only.value.response.status_code == 403


def test_fine_grained_token_scopes(uphub):
    from huggingface_hub.errors import HfHubHTTPError

    uphub.add_token("hf_fine_grained_token_000000", "alice", role="fineGrained",
                    scoped=[{"entity": {"type": "model", "name": "alice/only"}, "permissions": ["repo.write"]}])
    api = _api(uphub, "hf_fine_grained_token_000000")
    assert api.whoami()["auth"]["accessToken"]["fineGrained"]["scoped"][0]["entity"]["name"] == "alice/only"
    api.create_repo("alice/only")
    with pytest.raises(HfHubHTTPError):
        api.create_repo("alice/other")


def test_invalid_readme_metadata_is_refused_before_upload(uphub):
    from huggingface_hub import CommitOperationAdd

    api = _api(uphub)
    api.create_repo("alice/card")
    uphub.requests.clear()
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api.create_commit("alice/card", [CommitOperationAdd("README.md", b"---\n- just a list\n---\n")],
                          commit_message="bad card")
    assert [p for _, p in uphub.requests] == ["/api/validate-yaml"]


def test_space_repo_variables_and_hardware(uphub, tmp_path):
    from huggingface_hub import CommitOperationAdd

    api = _api(uphub)
    with pytest.raises(ValueError, match="space_sdk"):  # checked by the client
        api.create_repo("acme/demo", repo_type="space")
    url = api.create_repo("acme/demo", repo_type="space", space_sdk="gradio")
    assert url == f"{uphub.endpoint}/spaces/acme/demo"
    api.create_commit("acme/demo", [CommitOperationAdd("app.py", b"print('hi')\n")], commit_message="app",
                      repo_type="space")
    api.add_space_variable("acme/demo", "BEDGEN_DEFAULT_MODEL", "acme/model")
    api.add_space_variable("acme/demo", "OTHER", "x")
    api.delete_space_variable("acme/demo", "OTHER")
    assert {k: v.value for k, v in api.get_space_variables("acme/demo").items()} == {"BEDGEN_DEFAULT_MODEL": "acme/model"}
    runtime = api.request_space_hardware("acme/demo", "t4-small")
    assert runtime.requested_hardware == "t4-small" and uphub.repo("acme/demo", "space").sdk == "gradio"
    path = snapshot_download("acme/demo", repo_type="space", endpoint=uphub.endpoint, cache_dir=tmp_path / "c")
    assert files_in(path)["app.py"] == b"print('hi')\n"


def test_cut_commit_stores_nothing_and_the_next_commit_works(uphub):
    import httpx2
    from huggingface_hub import CommitOperationAdd

    api = _api(uphub)
    api.create_repo("alice/cut")
    before = uphub.repo("alice/cut").refs["main"]
    uphub.cut_uploads(1)  # the commit itself (regular files only: no LFS PUT comes first)
    with pytest.raises(httpx2.HTTPError):
        api.create_commit("alice/cut", [CommitOperationAdd("a.txt", b"a")], commit_message="cut")
    assert uphub.repo("alice/cut").refs["main"] == before and "a.txt" not in uphub.files("alice/cut")
    api.create_commit("alice/cut", [CommitOperationAdd("a.txt", b"a")], commit_message="again")
    assert uphub.files("alice/cut")["a.txt"] == b"a"


def test_cut_lfs_upload_is_retried_by_the_client(uphub):
    from huggingface_hub import CommitOperationAdd

    api = _api(uphub)
    api.create_repo("alice/retry")
    uphub.cut_uploads(1)  # the LFS PUT: http_backoff retries it once, after 1 s
    api.create_commit("alice/retry", [CommitOperationAdd("w.safetensors", b"\0\1" * 1000)], commit_message="w")
    assert uphub.files("alice/retry")["w.safetensors"] == b"\0\1" * 1000
    assert sum(1 for m, p in uphub.requests if m == "PUT" and p.startswith("/lfs/")) == 2
