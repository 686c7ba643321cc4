"""Sharing from the app: the Train tab's "Push to the Hub", pushed models in the model lists,
and the public allow-list with revisions.

The apps run as subprocesses (``python app.py``) and are called over raw HTTP; the Hub is
tests/hubserver.py, reached by huggingface_hub's real client in the app (HF_ENDPOINT).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from bedgen.errors import BedgenError
from bedgen.ui.security import ModelPolicy

from conftest import AppProcess, make_tiny_checkpoint
from hubserver import FakeHub, isolate_hf_hub
from test_attacks_files import call
from test_publish import READ_TOKEN, TOKEN


def test_allow_list_entries_name_the_revisions_they_allow(tmp_path):
    """An entry without a revision allows the default branch; one with a revision allows that
    revision (a pattern allows several). Never every revision of a listed repo: anyone may
    open a pull request on a public repo, and it loads as ``@refs/pr/N`` or by commit hash."""
    policy = ModelPolicy(tmp_path, public=True, hub_allow=("org/m@branch", "org/plain", "team/*", "org/any@*"))
    for ref in ["org/m@branch", "org/plain", "org/plain@main", "team/x", "team/y@main", "org/any",
                "org/any@v3", "org/any@refs/pr/2"]:
        assert policy.check(ref) == ref
    for ref in ["org/m", "org/m@other", "org/mx@branch", "org/plain@refs/pr/1", "org/plain@" + "a" * 40,
                "org/plain@v2", "team/x@dev"]:
        with pytest.raises(BedgenError, match=f"'{ref}' is not served by this app"):
            policy.check(ref)
    local = ModelPolicy(tmp_path, public=False, hub_allow=("org/m@branch",))  # the list binds public apps only
    assert local.check("org/m@other") == "org/m@other"


# --- a public app without training: what it lists, and no push route


@pytest.fixture(scope="module")
def hub():
    with FakeHub() as server:
        server.add_token(TOKEN, "alice", orgs={"acme": "write"})
        server.add_token(READ_TOKEN, "alice", role="read", name="read-only")
        yield server


def hub_env(home: Path, hub: FakeHub) -> dict[str, str]:
    """The app's huggingface_hub: the test Hub, its own home (token file, cache, pushed list), no token
    from the environment, uploads through plain LFS (what the test Hub speaks)."""
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home), "HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "",
            "HF_HUB_CACHE": str(home / "hub"), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1"}


def error_line(outcome: tuple[str, object]) -> str:
    event, payload = outcome
    assert event == "error", payload
    message = payload["error"]
    assert "\n" not in message and TOKEN not in message and READ_TOKEN not in message
    return message



def test_public_app_lists_only_what_it_serves_and_has_no_push_route(hub, tmp_path, monkeypatch):
    from bedgen.publish import push_model

    home = tmp_path / "hf-home"
    isolate_hf_hub(monkeypatch, home)
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    # Pushed from this machine: two allowed by the list below, one repo at a revision it does not name.
    push_model(make_tiny_checkpoint(tmp_path / "v2"), "alice/shown", revision="v2", samples=0)
    push_model(make_tiny_checkpoint(tmp_path / "main", seed=1), "alice/shown", samples=0)
    push_model(make_tiny_checkpoint(tmp_path / "other", seed=2), "alice/hidden", samples=0)
    local = make_tiny_checkpoint(tmp_path / "checkpoints" / "local")
    env = {"BEDGEN_PUBLIC": "1", "BEDGEN_CHECKPOINTS": str(tmp_path / "checkpoints"),
           # as bedgen space sets it for a model at a branch, plus the curated default and a pattern
           "BEDGEN_HUB_MODELS": "alice/shown@v2,google/ddpm-ema-bedroom-256,acme/*",
           "BEDGEN_DEFAULT_MODEL": "alice/shown@v2", **hub_env(home, hub)}
    app = AppProcess(env, cwd=tmp_path)
    try:
        app.wait_ready()
        with httpx.Client(timeout=30) as http:
            config = http.get(f"{app.url}config").json()
            routes = {d.get("api_name") for d in config["dependencies"]}
            assert "generate" in routes and not routes & {"push_to_hub", "train_start", "train_status"}
            # Answered exactly as a name that never existed (gradio answers those with an error status).
            push, unknown = (httpx.post(f"{app.url}gradio_api/call/{name}", json={"data": ["alice/x", False]}, timeout=30)
                             for name in ("push_to_hub", "no_such_route"))  # each on its own connection
            assert push.status_code >= 400 and (push.status_code, push.text) == (unknown.status_code, unknown.text)
            assert "alice/hidden" not in json.dumps(config) and "acme/*" not in json.dumps(config)
        event, (listed,) = call(app, "refresh_models", [])
        assert [ref for _, ref in listed["choices"]] == [str(local), "alice/shown@v2", "google/ddpm-ema-bedroom-256"]
        event, (gallery, _, text) = call(app, "generate", ["alice/shown@v2", 0, 2, "auto", 1, False, 0])
        assert event == "complete" and len(gallery) == 1 and "alice/shown@v2" in text
        for ref in ("alice/shown", "alice/hidden"):
            assert f"'{ref}' is not served by this app" in error_line(call(app, "generate", [ref, 0, 2, "auto", 1, False, 0]))
    finally:
        app.stop()
