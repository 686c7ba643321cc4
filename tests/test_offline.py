"""A first start on a machine that cannot reach the Hub: an empty checkpoints folder and the
default (Hub) model. The first Generate must fail with a message that names what works
offline, and the Generate tab says so before anyone clicks."""

from __future__ import annotations

import httpx
import pytest

from conftest import AppProcess, free_port
from test_attacks_refs import call, expect_error

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time

OFFLINE_ROUTES = "train one in the Train tab or put a checkpoint folder in checkpoints/"


@pytest.fixture(scope="module")
def first_start(tmp_path_factory):
    root = tmp_path_factory.mktemp("first-start")
    (root / "checkpoints").mkdir()
    with AppProcess(
        {
            "BEDGEN_CHECKPOINTS": str(root / "checkpoints"),
            "HF_HOME": str(root / "hf"),
            "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",  # nothing listens there
            "HF_HUB_OFFLINE": "0",
            "HF_HUB_ETAG_TIMEOUT": "2",
            "HF_HUB_DOWNLOAD_TIMEOUT": "2",
        },
        cwd=root,
    ) as app:
        yield app


def test_first_click_offline_names_what_works_offline(first_start):
    outcome = call(first_start, "generate", ["google/ddpm-ema-bedroom-256", 0, 2, "auto", 1, False, 0])
    expect_error(outcome, "'google/ddpm-ema-bedroom-256'", "could not be reached", OFFLINE_ROUTES, "bedgen train")
    assert "\n" not in outcome[1]["error"]


def test_generate_tab_hints_at_offline_routes_when_no_local_model(first_start):
    config = httpx.get(f"{first_start.url}config", timeout=30).json()
    texts = [str(c.get("props", {}).get("value", "")) for c in config["components"] if c.get("type") == "markdown"]
    assert any("No local models yet" in text and "checkpoints/" in text for text in texts), texts
