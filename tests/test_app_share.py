"""Sharing from the app: the Train tab's "Push to the Hub", pushed models in the model lists,
and the public allow-list with revisions.

The apps run as subprocesses (``python app.py``) and are called over raw HTTP; the Hub is
tests/hubserver.py, reached by huggingface_hub's real client in the app (HF_ENDPOINT).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from bedgen.core.errors import BedgenError
from bedgen.ui.security import ModelPolicy

from conftest import AppProcess, make_tiny_checkpoint
from hubserver import FakeHub, isolate_hf_hub
from synthetic import write_rooms
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


# --- the Train tab's push, through a local app -------------------------------------------------


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


@pytest.fixture(scope="module")
def train_app(hub, tmp_path_factory):
    root = tmp_path_factory.mktemp("share-app")
    write_rooms(root / "data" / "rooms", 8, size=20)
    with AppProcess({"BEDGEN_CHECKPOINTS": str(root / "checkpoints"), "BEDGEN_DATA_ROOTS": str(root / "data"),
                     "BEDGEN_DEFAULT_MODEL": "google/ddpm-ema-bedroom-256", **hub_env(root / "hf-home", hub)},
                    cwd=root) as app:
        yield app, root


def push(app: AppProcess, repo: str, private: bool = False) -> tuple[str, object]:
    return call(app, "push_to_hub", [repo, private])


def error_line(outcome: tuple[str, object]) -> str:
    event, payload = outcome
    assert event == "error", payload
    message = payload["error"]
    assert "\n" not in message and TOKEN not in message and READ_TOKEN not in message
    return message


def train_tiny(app: AppProcess, root: Path, name: str) -> list:
    """A 1-step run of the tiny preset at 16 px through /train_start (the step, one checkpoint, one preview
    grid); its last /train_status once it has stopped."""
    event, payload = call(app, "train_start", [str(root / "data" / "rooms"), "tiny", 16, 1, 4, 1e-3, "adamw", name, ""])
    assert event == "complete", payload
    deadline = time.monotonic() + 240  # against hanging only
    while time.monotonic() < deadline:
        event, status = call(app, "train_status", [])
        assert event == "complete", status
        if "finished" in status[0] or "exited" in status[0]:
            return status
        time.sleep(1)
    raise AssertionError(f"the run did not finish; last status: {status[0]}")


def write_login(root: Path, token: str) -> None:
    """What ``hf auth login`` leaves: the token in $HF_HOME/token, read by huggingface_hub at each call."""
    (root / "hf-home").mkdir(parents=True, exist_ok=True)
    (root / "hf-home" / "token").write_text(token)


def test_push_the_finished_run_from_the_train_tab(train_app, hub):
    app, root = train_app
    assert "no run to push" in error_line(push(app, "alice/tiny-run"))
    status = train_tiny(app, root, "tab-run")
    assert "finished" in status[0], status[0]
    assert status[4]["visible"] is True  # the section shows once the run has stopped

    # Without a token on the server, with a read-only one, with an odd repo id: one line, nothing written.
    assert "no Hugging Face token: set HF_TOKEN" in error_line(push(app, "alice/tiny-run"))
    write_login(root, READ_TOKEN)
    assert "the token 'read-only' is read-only" in error_line(push(app, "alice/tiny-run"))
    write_login(root, TOKEN)
    assert "repo name 'alice/has space' is not a Hub repo id" in error_line(push(app, "alice/has space"))
    assert "'alice' is not a member of 'bob'" in error_line(push(app, "bob/tiny-run"))
    assert [r for r in hub.requests if r[0] in ("POST", "PUT", "DELETE")] == []
    hub.cut_uploads(1, only="commit")  # the connection drops half-way through the commit
    assert "the connection to the Hub was lost" in error_line(push(app, "alice/cut"))

    event, (summary, models) = push(app, "alice/tiny-run", True)
    url = f"{hub.endpoint}/alice/tiny-run"
    assert event == "complete" and f"[{url}]({url})" in summary and "`alice/tiny-run`" in summary
    run = root / "checkpoints" / "tab-run"
    latest = run / json.loads((run / "bedgen-run.json").read_text())["latest"]
    files = hub.files("alice/tiny-run")
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert files[weights] == (latest / weights).read_bytes()  # the run's latest (EMA) checkpoint
    assert {"README.md", "samples.png", "loss.png", "bedgen.json", "model_index.json"} <= set(files)
    assert hub.repo("alice/tiny-run").private
    for name, data in hub.stored_blobs():
        assert TOKEN.encode() not in data and str(root).encode() not in data, name
    assert "alice/tiny-run" in [ref for _, ref in models["choices"]]  # the push updates Generate's list

    # The Generate tab lists it (newest pushed first, after the local runs) and samples from the Hub.
    event, (listed,) = call(app, "refresh_models", [])
    refs = [ref for _, ref in listed["choices"]]
    assert refs.index(str(run)) < refs.index("alice/tiny-run") < refs.index("google/ddpm-ema-bedroom-256")
    event, (gallery, _, text, *_shown) = call(app, "generate", ["alice/tiny-run", 0, 2, "auto", 1, False, 0])
    assert event == "complete" and len(gallery) == 1 and "alice/tiny-run" in text


# --- a public app without training: what it lists, and no push route -----------------------------


def test_public_app_lists_only_what_it_serves_and_has_no_push_route(hub, tmp_path, monkeypatch):
    from bedgen.sharing.publish import push_model

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
    with AppProcess(env, cwd=tmp_path) as app:
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
        event, (gallery, _, text, *_shown) = call(app, "generate", ["alice/shown@v2", 0, 2, "auto", 1, False, 0])
        assert event == "complete" and len(gallery) == 1 and "alice/shown@v2" in text
        for ref in ("alice/shown", "alice/hidden"):
            assert f"'{ref}' is not served by this app" in error_line(call(app, "generate", [ref, 0, 2, "auto", 1, False, 0]))
