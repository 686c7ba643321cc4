"""Hub REFs through the real huggingface_hub download code against a local endpoint."""

import json

import pytest
import torch

import bedgen
from bedgen.core.errors import ModelNotFoundError
from bedgen.core.hub import parse_hub_ref

from conftest import make_tiny_checkpoint
from hubserver import FakeHub, isolate_hf_hub
from test_checkpoint import write_flat_google_layout


@pytest.fixture
def hub(monkeypatch, tmp_path):
    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        yield server


@pytest.fixture
def two_revisions(hub, tmp_path):
    """org/tiny: main and v1 hold different weights."""
    main = make_tiny_checkpoint(tmp_path / "main", seed=0)
    v1 = make_tiny_checkpoint(tmp_path / "v1", seed=1)
    hub.add_repo("org/tiny", main)
    hub.add_repo("org/tiny", v1, revision="v1")
    return hub


def _weights(pipe):
    return pipe.unet.conv_in.weight.detach().clone()


def test_parse_hub_ref():
    assert parse_hub_ref("google/ddpm-ema-bedroom-256").repo_id == "google/ddpm-ema-bedroom-256"
    ref = parse_hub_ref("org/name@v1.2")
    assert (ref.repo_id, ref.revision) == ("org/name", "v1.2")
    assert parse_hub_ref("just-a-name") is None
    assert parse_hub_ref("a/b/c") is None


def test_hub_model_loads_and_samples_through_snapshot_download(two_revisions):
    pipe = bedgen.load("org/tiny")
    assert pipe.info.layout == "bedgen" and pipe.info.config.resolution == 16
    assert len(pipe.generate(2, seed=0, steps=2)) == 2
    fetched = [path for method, path in two_revisions.requests if method == "GET" and "/resolve/" in path]
    assert any(p.endswith("diffusion_pytorch_model.safetensors") for p in fetched)
    assert not any(p.endswith(".bin") for p in fetched)


def test_revision_selects_other_weights(two_revisions):
    main, v1 = bedgen.load("org/tiny"), bedgen.load("org/tiny@v1")
    assert not torch.equal(_weights(main), _weights(v1))
    assert "/api/models/org/tiny/revision/v1" in [p for _, p in two_revisions.requests]


def test_flat_google_layout_fetches_pickled_weights_only_when_needed(hub, tmp_path):
    reference = write_flat_google_layout(tmp_path / "google")
    sha = hub.add_repo("google/ddpm-tiny", tmp_path / "google")
    pipe = bedgen.load("google/ddpm-tiny")
    assert pipe.info.layout == "flat"
    assert torch.equal(_weights(pipe), reference.conv_in.weight)
    assert ("GET", f"/google/ddpm-tiny/resolve/{sha}/diffusion_pytorch_model.bin") in hub.requests


def test_cached_model_loads_offline_without_requests(two_revisions, monkeypatch):
    bedgen.load("org/tiny@v1")
    seen = len(two_revisions.requests)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = bedgen.load("org/tiny@v1")
    assert len(two_revisions.requests) == seen
    assert pipe.info.config is not None


def test_offline_and_not_cached_is_a_clear_error(two_revisions, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match=r"'org/tiny' is not in the local cache and offline mode is on"):
        bedgen.load("org/tiny")


def test_unreachable_hub_is_a_clear_error(hub, monkeypatch):
    hub.stop()
    with pytest.raises(ModelNotFoundError, match=r"'org/tiny' is not in the local cache and the Hub could not be reached"):
        bedgen.load("org/tiny")


def test_unknown_repo_and_revision(two_revisions):
    with pytest.raises(ModelNotFoundError, match="'org/missing' was not found on the Hub"):
        bedgen.load("org/missing")
    with pytest.raises(ModelNotFoundError, match="'org/tiny' has no revision 'v9'"):
        bedgen.load("org/tiny@v9")


def test_cli_samples_from_a_hub_revision(two_revisions, tmp_path):
    from bedgen.cli.main import main

    out = tmp_path / "samples"
    assert main(["sample", "--model", "org/tiny@v1", "-n", "2", "--steps", "2", "--out", str(out)]) == 0
    assert (out / "000001.png").is_file()
    assert json.loads((out / "samples.json").read_text())["model"] == "org/tiny@v1"
