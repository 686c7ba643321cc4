"""Attacks on the server itself, sent as raw HTTP the way an attacker would send them.

- abandoned work: fire-and-forget requests are capped per visitor and cancelled when
  nobody reads their result, so the next visitor is served;
- login brute force: repeated wrong passwords lock the address out (HTTP 429);
- DNS rebinding: a local app answers only to local hosts and origins;
- seeds: integers beyond 2**53 are kept exact or refused, never silently rounded.

Each visitor is a distinct loopback source address (127.0.0.2, 127.0.0.3, ...): Linux
routes all of 127.0.0.0/8 to the loopback device, so one machine plays many visitors.
No assertion is on elapsed time; loops that wait have a generous deadline only so that
a broken server fails the test instead of hanging it.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from conftest import AppProcess, make_tiny_checkpoint

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time

DEADLINE_S = 120  # an upper bound against hanging, never an expected duration


def visitor(address: str, **kwargs) -> httpx.Client:
    """An HTTP client whose connections come from ``address`` (a loopback alias)."""
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=30, **kwargs)


def result(client: httpx.Client, url: str) -> tuple[str, object]:
    """Read a /call result stream to its end: ("complete" | "error", data)."""
    deadline = time.monotonic() + DEADLINE_S
    kind = None
    with client.stream("GET", url, timeout=httpx.Timeout(30, read=DEADLINE_S)) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: ") and kind in ("complete", "error"):
                return kind, json.loads(line.removeprefix("data: "))
            assert time.monotonic() < deadline, "no result before the deadline"
    raise AssertionError("the stream ended without a result")


def call(client: httpx.Client, base: str, api: str, data: list) -> tuple[str, object]:
    response = client.post(f"{base}gradio_api/call/{api}", json={"data": data})
    assert response.status_code == 200, response.text
    return result(client, f"{base}gradio_api/call/{api}/{response.json()['event_id']}")


def generate_args(model: str, seed: object = 0, steps: int = 2, images: int = 1, sampler: str = "auto") -> list:
    return [model, seed, steps, sampler, images, False, 0]


# --- a public app: abandoned work, public host names, seeds -------------------------------------


@pytest.fixture(scope="module")
def public_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks-public")
    models = root / "checkpoints"
    make_tiny_checkpoint(models / "tiny")
    # 1000 training steps so a request may ask for 1000 denoising steps; 64 px x 8 images
    # makes each step cost enough that 1000 of them outlast the 20 s below even on a quiet machine.
    make_tiny_checkpoint(models / "slow", resolution=64, **{"diffusion.num_train_timesteps": 1000})
    # Unread requests are cancelled after 20 s: far longer than the few sequential POSTs the
    # test sends take even on a loaded machine, so the cap is what refuses them, not the clock.
    with AppProcess(
        {"BEDGEN_PUBLIC": "1", "BEDGEN_CHECKPOINTS": str(models), "BEDGEN_DEFAULT_MODEL": str(models / "tiny"),
         "BEDGEN_CONCURRENCY": "1", "BEDGEN_MAX_PENDING_PER_VISITOR": "2", "BEDGEN_ABANDON_AFTER_S": "20",
         "HF_HUB_OFFLINE": "1"},
        cwd=root,
    ) as app:
        yield app, models


def test_abandoned_requests_are_capped_per_visitor_and_cancelled(public_app):
    app, models = public_app
    slow = str(models / "slow")
    attacker, other = visitor("127.0.0.2"), visitor("127.0.0.3")
    # Five fire-and-forget requests of 1000 steps x 8 images whose results are never read.
    posts = [attacker.post(f"{app.url}gradio_api/call/generate", json={"data": generate_args(slow, i, 1000, 8, "ddpm")})
             for i in range(5)]
    assert [p.status_code for p in posts] == [200, 200, 429, 429, 429], [p.text for p in posts]
    for refused in posts[2:]:
        assert "2 requests" in refused.json()["detail"] and "wait" in refused.json()["detail"]

    # Another visitor is served although the attacker's work was queued first ...
    kind, data = call(other, app.url, "generate", generate_args(slow, 7))
    assert kind == "complete", data
    assert [item["caption"] for item in data[0]] == ["seed 7"]

    # ... because nobody read the attacker's results: both were cancelled, the running one
    # stopped between two denoising steps, and a late reader is told why.
    for accepted in posts[:2]:
        kind, data = result(attacker, f"{app.url}gradio_api/call/generate/{accepted.json()['event_id']}")
        assert kind == "error" and "cancelled" in data["error"], (data, app.log.read_text()[-3000:])
    log = app.log.read_text()
    assert log.count("cancelled generate from 127.0.0.2") == 2, log
    assert "stopped generate from 127.0.0.2" in log, log
    # The cap counts live work only: the attacker may send again, and is served when reading.
    kind, data = call(attacker, app.url, "generate", generate_args(slow, 3))
    assert kind == "complete", data


def test_running_work_stops_when_its_client_disconnects(public_app):
    app, models = public_app
    slow = str(models / "slow")
    with visitor("127.0.0.7") as client:
        event = client.post(f"{app.url}gradio_api/call/generate",
                            json={"data": generate_args(slow, 0, 1000, 8, "ddpm")}).json()["event_id"]
        with client.stream("GET", f"{app.url}gradio_api/call/generate/{event}") as response:
            assert response.status_code == 200
        # the connection is closed here, long before 1000 steps x 8 images are done
    deadline = time.monotonic() + DEADLINE_S
    while "stopped generate from 127.0.0.7" not in (log := app.log.read_text()):
        assert time.monotonic() < deadline, f"the work went on after its client left:\n{log[-2000:]}"
        time.sleep(0.5)
    assert "cancelled generate from 127.0.0.7" not in log  # stopped by the disconnect, not as unread
    with visitor("127.0.0.8") as client:
        kind, data = call(client, app.url, "generate", generate_args(str(models / "tiny"), 5))
        assert kind == "complete" and data[0][0]["caption"] == "seed 5", data


def test_no_route_skips_the_queue(public_app):
    """Off a Space Gradio also serves queued events at /gradio_api/run/<name>, outside the queue
    and so outside its size, its concurrency and the per-visitor cap."""
    app, models = public_app
    with visitor("127.0.0.6") as client:
        direct = client.post(f"{app.url}gradio_api/run/generate", json={"data": generate_args(str(models / "tiny"))})
        assert direct.status_code == 404 and "queue" in direct.json()["detail"], direct.text
        kind, _ = call(client, app.url, "generate", generate_args(str(models / "tiny")))
        assert kind == "complete"


def test_public_app_answers_to_its_public_host_name(public_app):
    app, _ = public_app
    with visitor("127.0.0.4") as client:
        page = client.get(app.url, headers={"Host": "someone-bedgen.hf.space"})
        assert page.status_code == 200
        info = client.get(f"{app.url}gradio_api/info",
                          headers={"Host": "someone-bedgen.hf.space", "Origin": "https://someone-bedgen.hf.space"})
        assert info.status_code == 200 and "/generate" in info.text


@pytest.mark.parametrize("seed", [2**53 + 1, "9007199254740993", 2**63 - 2])
def test_large_seeds_are_kept_exact(public_app, seed):
    app, models = public_app
    with visitor("127.0.0.5") as client:
        kind, data = call(client, app.url, "generate", generate_args(str(models / "tiny"), seed))
    assert kind == "complete", data
    assert [item["caption"] for item in data[0]] == [f"seed {int(seed)}"]


@pytest.mark.parametrize("seed", [9007199254740993.0, "9007199254740993.5", "1e400", 2**63, True])
def test_seeds_that_cannot_be_kept_exact_are_refused_by_name(public_app, seed):
    app, models = public_app
    with visitor("127.0.0.5") as client:
        kind, data = call(client, app.url, "generate", generate_args(str(models / "tiny"), seed))
        assert kind == "error" and "seed" in data["error"], data
        assert "\n" not in data["error"]
        kind, data = call(client, app.url, "generate", generate_args(str(models / "tiny"), 12.0))
        assert kind == "complete" and data[0][0]["caption"] == "seed 12", data


# --- login brute force ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def login_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks-login")
    models = root / "checkpoints"
    make_tiny_checkpoint(models / "tiny")
    with AppProcess(
        {"BEDGEN_PUBLIC": "1", "BEDGEN_AUTH": "alice:wonderland-42", "BEDGEN_LOGIN_LOCKOUT_S": "2",
         "BEDGEN_CHECKPOINTS": str(models), "BEDGEN_DEFAULT_MODEL": str(models / "tiny"), "HF_HUB_OFFLINE": "1"},
        cwd=root,
    ) as app:
        yield app


def _login(client: httpx.Client, url: str, password: str) -> httpx.Response:
    return client.post(f"{url}login", data={"username": "alice", "password": password})


def _until_unlocked(client: httpx.Client, url: str, password: str) -> httpx.Response:
    """Try to log in until the answer is no longer "locked" (429)."""
    deadline = time.monotonic() + DEADLINE_S
    while (response := _login(client, url, password)).status_code == 429:
        assert time.monotonic() < deadline, "the lockout never ended"
        time.sleep(0.2)
    return response


def test_repeated_wrong_passwords_lock_the_address_out(login_app):
    app = login_app
    attacker, other = visitor("127.0.0.2"), visitor("127.0.0.3")
    for i in range(5):
        assert _login(attacker, app.url, f"guess-{i}").status_code == 400
    # Locked: even the right password is refused, with a one-line reason.
    locked = _login(attacker, app.url, "wonderland-42")
    assert locked.status_code == 429, locked.text
    assert "too many failed logins" in locked.text and "\n" not in locked.text.strip()
    # The rest of the app keeps serving, and another address logs in meanwhile.
    assert attacker.get(app.url).status_code == 200
    assert _login(other, app.url, "wonderland-42").status_code == 200
    assert other.get(f"{app.url}gradio_api/info").status_code == 200

    # When the lockout ends, one more wrong password locks the address again at once
    # (each lockout is longer than the last) ...
    assert _until_unlocked(attacker, app.url, "guess-5").status_code == 400
    assert _login(attacker, app.url, "wonderland-42").status_code == 429
    # ... and the right password works once the (longer) lockout has passed.
    assert _until_unlocked(attacker, app.url, "wonderland-42").status_code == 200
    assert "wonderland-42" not in app.log.read_text()


def test_login_throttle_backs_off_and_limits_all_addresses_together():
    from bedgen.ui.guard import LoginThrottle

    now = [1000.0]
    throttle = LoginThrottle(lockout_s=10, free_attempts=3, global_per_s=2, global_burst=4, clock=lambda: now[0])
    for _ in range(3):
        assert throttle.refusal("a") is None
        throttle.record("a", success=False)
    assert "10 s" in throttle.refusal("a")
    now[0] += 10
    assert throttle.refusal("a") is None
    throttle.record("a", success=False)
    assert "20 s" in throttle.refusal("a")  # exponential backoff
    now[0] += 20
    throttle.record("a", success=True)
    assert throttle.refusal("a") is None and "a" not in throttle.clients  # success forgets the address
    # the global bucket: a burst of 4, then 2 per second, whatever the addresses
    now[0] += 100
    assert [throttle.refusal(f"10.0.0.{i}") is None for i in range(6)] == [True] * 4 + [False] * 2
    now[0] += 1
    assert throttle.refusal("10.0.0.9") is None


# --- DNS rebinding ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("attacks-local")
    models = root / "checkpoints"
    make_tiny_checkpoint(models / "tiny")
    with AppProcess(
        {"BEDGEN_CHECKPOINTS": str(models), "BEDGEN_DEFAULT_MODEL": str(models / "tiny"),
         "BEDGEN_ALLOWED_HOSTS": "bedroom.lan", "HF_HUB_OFFLINE": "1"},
        cwd=root,
    ) as app:
        yield app


def test_local_app_refuses_outside_hosts_and_origins(local_app):
    app = local_app
    port = app.port
    client = httpx.Client(timeout=30)
    evil_host = {"Host": "evil.example"}
    evil_origin = {"Origin": "http://evil.example"}
    for headers in (evil_host, {"Host": f"evil.example:{port}"}, {"Host": f"127.0.0.1.nip.io:{port}"},
                    {"Host": "localhost.evil.example"}, evil_origin, {"Origin": "null"}):
        for method, path in (("GET", ""), ("GET", "gradio_api/info"), ("GET", "config")):
            response = client.request(method, f"{app.url}{path}", headers=headers)
            assert response.status_code == 403, (headers, path, response.text[:200])
            assert "not allowed" in response.text and "\n" not in response.text.strip()
        # the Train tab's endpoints (training is on by default locally) are refused too
        response = client.post(f"{app.url}gradio_api/call/train_status", json={"data": []}, headers=headers)
        assert response.status_code == 403, response.text
    # local names, addresses and the names the owner allows keep working
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"bedroom.lan:{port}"):
        assert client.get(f"{app.url}gradio_api/info", headers={"Host": host}).status_code == 200, host
    for origin in (f"http://localhost:{port}", f"http://127.0.0.1:{port}", f"http://bedroom.lan:{port}"):
        response = client.post(f"{app.url}gradio_api/call/train_status", json={"data": []},
                               headers={"Origin": origin})
        assert response.status_code == 200, (origin, response.text)
        kind, _ = result(client, f"{app.url}gradio_api/call/train_status/{response.json()['event_id']}")
        assert kind == "complete"
