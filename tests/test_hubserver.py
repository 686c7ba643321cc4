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
