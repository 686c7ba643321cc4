"""bedgen space: the Space repo on the test Hub holds an app that starts and serves the pushed model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from huggingface_hub import SpaceCard, snapshot_download

import bedgen
from bedgen.cli.main import main
from bedgen.sharing.publish import push_model

from conftest import free_port, make_tiny_checkpoint
from hubserver import FakeHub, isolate_hf_hub
from test_publish import READ_TOKEN, TOKEN, one_error_line, write_requests

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub(tmp_path, monkeypatch):
    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    with FakeHub() as server:
        server.add_token(TOKEN, "alice", orgs={"acme": "admin"})
        server.add_token(READ_TOKEN, "alice", role="read", name="read-only")
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


# gradio's launch() HEADs its own URL with a 3 s timeout and exits with this message when that times out,
# which happens on a CPU-starved test machine although nothing is wrong with the app.
_STARVED = "When localhost is not accessible"


class SpaceApp:
    """``python app.py`` started from a checkout of the Space repo, with the Space's variables, as the Space runs it."""

    def __init__(self, checkout: Path, env: dict[str, str]):
        self.checkout = checkout
        self.log = checkout.parent / "space-app.log"
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HF_TOKEN")} | env
        self.env["PYTHONUNBUFFERED"] = "1"  # the log shows gradio's start-up lines as they happen
        self._start()

    def _start(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.process = subprocess.Popen([sys.executable, "app.py", "--port", str(self.port)], cwd=self.checkout,
                                        env=self.env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 240, restarts: int = 2) -> None:
        """Up once it answers and gradio's own start-up check has passed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                if _STARVED in self.log.read_text() and restarts > 0:
                    restarts -= 1
                    self._start()
                    deadline = time.monotonic() + timeout
                    continue
                raise RuntimeError(f"the Space app exited:\n{self.log.read_text()}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    if response.status == 200 and self._launched():
                        return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"the Space app is not up after {timeout} s:\n{self.log.read_text()}")

    def _launched(self) -> bool:
        """launch() has passed its self-check: with share off it then prints this line (unbuffered output)."""
        return self.process.poll() is None and "To create a public link" in self.log.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


def call(url: str, api_name: str, data: list) -> list:
    """POST /gradio_api/call/<api_name>, then read the event stream: raw HTTP, as any client would."""
    request = urllib.request.Request(f"{url}gradio_api/call/{api_name}", data=json.dumps({"data": data}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        event_id = json.loads(response.read())["event_id"]
    with urllib.request.urlopen(f"{url}gradio_api/call/{api_name}/{event_id}", timeout=300) as response:
        lines = response.read().decode().splitlines()
    events = [line.split(":", 1)[1].strip() for line in lines if line.startswith("event:")]
    payloads = [line.split(":", 1)[1].strip() for line in lines if line.startswith("data:")]
    assert events[-1] == "complete", lines
    return json.loads(payloads[-1])


@pytest.mark.slow
def test_space_runs_this_app_for_the_pushed_model(hub, tmp_path, capsys):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    push_model(local, "alice/tiny", samples=0)
    assert main(["space", "--repo", "acme/demo", "--model", "alice/tiny", "--hardware", "cpu-upgrade"]) == 0
    made = capsys.readouterr()
    assert made.out.strip() == f"{hub.endpoint}/spaces/acme/demo"
    assert TOKEN not in made.out + made.err

    space = hub.repo("acme/demo", "space")
    assert space.sdk == "gradio" and space.hardware == "cpu-upgrade"
    variables = {key: value["value"] for key, value in space.variables.items()}
    assert variables == {"BEDGEN_DEFAULT_MODEL": "alice/tiny", "BEDGEN_HUB_MODELS": "alice/tiny"}
    files = hub.files("acme/demo", repo_type="space")
    package = {f"bedgen/{p.relative_to(REPO / 'bedgen').as_posix()}": p.read_bytes()
               for p in (REPO / "bedgen").rglob("*.py") if "__pycache__" not in p.parts}
    assert {p: d for p, d in files.items() if p.startswith("bedgen/")} == package  # this version, pinned
    assert files["app.py"] == (REPO / "app.py").read_bytes()
    assert files["requirements.txt"] == (REPO / "requirements.txt").read_bytes()
    import gradio

    card = SpaceCard(files["README.md"].decode())
    assert (card.data.sdk, card.data.sdk_version, card.data.app_file) == ("gradio", gradio.__version__, "app.py")
    assert card.data.models == ["alice/tiny"]

    # A checkout of the Space repo starts in public mode with the Space's variables and serves the model.
    checkout = Path(snapshot_download("acme/demo", repo_type="space", local_dir=tmp_path / "space",
                                      endpoint=hub.endpoint))
    env = {**variables, "BEDGEN_PUBLIC": "1", "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "space-home"),
           "BEDGEN_CHECKPOINTS": str(checkout / "checkpoints"), "GRADIO_ANALYTICS_ENABLED": "False"}
    app = SpaceApp(checkout, env)
    try:
        find = "import importlib.util; print(importlib.util.find_spec('bedgen').origin)"  # without importing it
        which = subprocess.run([sys.executable, "-c", find], cwd=checkout,
                               env=app.env, capture_output=True, text=True, check=True)
        assert Path(which.stdout.strip()).parent == checkout / "bedgen"  # the Space's copy, not this checkout
        app.wait_ready()
        choices = call(app.url, "refresh_models", [])[0]["choices"]
        assert [value for _, value in choices] == ["alice/tiny"]
        with urllib.request.urlopen(f"{app.url}config", timeout=30) as response:
            config = json.loads(response.read())
        assert any(c.get("props", {}).get("value") == "alice/tiny" for c in config["components"])
        from gradio_client import Client

        gallery, _, status = Client(app.url, verbose=False).predict(
            "alice/tiny", 0, 3, "auto", 1, False, api_name="/generate")
        assert len(gallery) == 1 and "alice/tiny" in status
        # Public mode: a Hub model that is not one of the Space's is refused.
        with pytest.raises(Exception, match="not served by this app"):
            Client(app.url, verbose=False).predict("google/ddpm-ema-bedroom-256", 0, 3, "auto", 1, False,
                                                   api_name="/generate")
    finally:
        app.stop()

    # Updating: a second model; the app files are unchanged, so only the variables and README change.
    other = make_tiny_checkpoint(tmp_path / "other", seed=1)
    push_model(other, "alice/other", samples=0)
    assert main(["space", "--repo", "acme/demo", "--model", "alice/other", "--model", "alice/tiny"]) == 0
    variables = {key: value["value"] for key, value in hub.repo("acme/demo", "space").variables.items()}
    assert variables == {"BEDGEN_DEFAULT_MODEL": "alice/other", "BEDGEN_HUB_MODELS": "alice/other,alice/tiny"}
    assert SpaceCard(hub.files("acme/demo", repo_type="space")["README.md"].decode()).data.models == [
        "alice/other", "alice/tiny"]


def test_space_bad_input_is_one_line_and_creates_nothing(hub, tmp_path, capsys, monkeypatch):
    assert main(["space", "--repo", "acme/demo", "--model", "alice/never-pushed"]) == 2
    assert "'alice/never-pushed' was not found on the Hub" in one_error_line(capsys)
    assert main(["space", "--repo", "acme/bad name", "--model", "alice/x"]) == 2
    assert "is not a Hub repo id" in one_error_line(capsys)
    assert main(["space", "--repo", "acme/demo", "--model", "not a model"]) == 2
    assert "is not a Hub id" in one_error_line(capsys)
    with pytest.raises(SystemExit) as bad_hardware:
        main(["space", "--repo", "acme/demo", "--model", "alice/x", "--hardware", "a-toaster"])
    assert bad_hardware.value.code == 2
    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    assert main(["space", "--repo", "acme/demo", "--model", "alice/x"]) == 2
    assert "is read-only" in one_error_line(capsys)
    assert write_requests(hub) == []
    with pytest.raises(KeyError):
        hub.repo("acme/demo", "space")


def test_private_model_note(hub, tmp_path, capsys):
    push_model(make_tiny_checkpoint(tmp_path / "tiny"), "alice/hidden", samples=0, private=True)
    assert main(["space", "--repo", "alice/demo", "--model", "alice/hidden", "--private"]) == 0
    assert "Space secret HF_TOKEN" in capsys.readouterr().err
    assert hub.repo("alice/demo", "space").private
    assert bedgen.load("alice/hidden").info.layout == "bedgen"  # the owner's token reads it
