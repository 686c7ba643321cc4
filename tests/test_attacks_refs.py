"""Model refs as an attacker sends them: raw HTTP to the running app, no gradio_client.

- A Hub revision that climbs out of the cache (``org/name@../../..``) or a cached ref that
  points outside it must never make the app load a folder outside the Hub cache or the
  checkpoints folder.
- The Train tab's fine-tune model and ldm autoencoder are resolved once, checked, and the
  training subprocess gets that resolved folder (never a name it would resolve from the
  app's working folder).
- Failing refs leave nothing behind in the model cache.
- An anonymous Evaluate in public mode writes nothing, and no response names a server path.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import AppProcess, make_tiny_checkpoint, save_random_backbone, save_random_inception
from synthetic import write_rooms

pytestmark = pytest.mark.slow  # the app processes this module starts take most of its time

ALLOWED = "google/ddpm-ema-bedroom-256"
SHA = "0123456789abcdef0123456789abcdef01234567"


# --- raw HTTP ----------------------------------------------------------------------------------


def call(app: AppProcess, api: str, data: list[Any], timeout: float = 300) -> tuple[str, Any]:
    """POST /gradio_api/call/<api>, then read its event stream: ("complete" | "error", data)."""
    with httpx.Client(base_url=app.url, timeout=timeout) as http:
        posted = http.post(f"gradio_api/call/{api}", json={"data": data})
        posted.raise_for_status()
        stream = http.get(f"gradio_api/call/{api}/{posted.json()['event_id']}").text
    events = re.findall(r"^event: (\w+)\ndata: (.*)$", stream, flags=re.M)
    final = [(event, payload) for event, payload in events if event in ("complete", "error")]
    assert final, f"no result in the event stream:\n{stream[:2000]}"
    event, payload = final[-1]
    return event, json.loads(payload)


def upload(app: AppProcess, name: str, content: bytes) -> Path:
    """What any visitor can do: store a file through gradio's upload route; returns its server path."""
    with httpx.Client(base_url=app.url, timeout=60) as http:
        response = http.post("gradio_api/upload", files={"files": (name, content, "text/plain")})
    response.raise_for_status()
    return Path(response.json()[0])


def generate(app: AppProcess, model: str) -> tuple[str, Any]:
    return call(app, "generate", [model, 0, 2, "auto", 1, False, 0])


def expect_error(outcome: tuple[str, Any], *fragments: str) -> str:
    event, payload = outcome
    assert event == "error", f"the request was served: {str(payload)[:500]}"
    message = str(payload)
    for fragment in fragments:
        assert fragment in message, message
    return message


def expect_images(outcome: tuple[str, Any]) -> None:
    event, payload = outcome
    assert event == "complete", payload
    assert len(payload[0]) == 1  # one image in the gallery


def cache_repo(cache: Path, repo_id: str, ref_target: str = SHA, with_model: bool = True) -> Path:
    """A repo in huggingface_hub's cache layout, as a download once left it: refs/main names a
    commit whose snapshot folder holds the files. Returns the repo's storage folder."""
    storage = cache / ("models--" + repo_id.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(ref_target)
    (storage / "snapshots").mkdir()
    if with_model:
        make_tiny_checkpoint(storage / "snapshots" / ref_target, seed=2)
    return storage


# --- a public app with a cached Hub model -------------------------------------------------------


@pytest.fixture(scope="module")
def public_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("public-refs")
    make_tiny_checkpoint(root / "checkpoints" / "tiny")
    make_tiny_checkpoint(root / "secret" / "model", seed=1)  # outside every folder the app serves
    cache = root / "hf" / "hub"
    google = cache_repo(cache, ALLOWED)
    # A cache entry whose ref points out of the cache (a poisoned or hand-edited cache).
    poisoned = cache_repo(cache, "bedgen-org/poisoned", with_model=False,
                          ref_target=os.path.relpath(root / "secret" / "model", cache / "x" / "snapshots"))
    # A cached run whose bedgen-run.json (a *.json file, so part of every download) names a
    # "latest" checkpoint on this machine.
    run = cache_repo(cache, "bedgen-org/run-escape", with_model=False) / "snapshots" / SHA
    run.mkdir()
    (run / "bedgen-run.json").write_text(json.dumps({"latest": os.path.relpath(root / "secret" / "model", run)}))
    write_rooms(root / "rooms", 12, size=24)
    inception = save_random_inception(root / "inception-random.pth")
    from bedgen.evaluation.metrics import compute_reference_stats

    compute_reference_stats(str(root / "rooms"), 16, inception_weights=inception, feature_layer="64",
                            batch_size=12).save(root / "references" / "rooms-16.npz")
    with AppProcess(
        {
            "BEDGEN_PUBLIC": "1",
            "BEDGEN_CHECKPOINTS": str(root / "checkpoints"),
            "BEDGEN_DEFAULT_MODEL": str(root / "checkpoints" / "tiny"),
            "BEDGEN_HUB_MODELS": f"{ALLOWED},{ALLOWED}@{SHA},bedgen-org/*",  # a commit is allowed by name
            "BEDGEN_REFERENCES": str(root / "references"),
            "BEDGEN_INCEPTION_WEIGHTS": str(inception),
            "BEDGEN_DATA_ROOTS": str(root / "rooms"),
            "HF_HOME": str(root / "hf"),
            "HF_HUB_CACHE": str(cache),
            "HF_HUB_OFFLINE": "1",
            "GRADIO_TEMP_DIR": str(root / "gradio-tmp"),
        },
        cwd=root,
    ) as app:
        yield app, root, google, poisoned


def test_a_revision_that_climbs_out_of_the_hub_cache_is_refused(public_app):
    """Finding 2: offline, huggingface_hub reads refs/<revision> as a file and joins its content to
    snapshots/; a revision of ``..`` parts reaching an uploaded text file that names an outside
    folder would make that folder the model."""
    app, root, google, _ = public_app
    pointer = upload(app, "pointer.txt", os.path.relpath(root / "secret" / "model", google / "snapshots").encode())
    revision = os.path.relpath(pointer, google / "refs")
    assert revision.startswith("..") and (google / "refs" / revision).resolve() == pointer.resolve()
    for ref in [f"{ALLOWED}@{revision}", f"{ALLOWED}@/{pointer}", f"{ALLOWED}@refs/../../../x"]:
        expect_error(generate(app, ref), "Hub id")
        expect_images(generate(app, ALLOWED))  # the cached allowed model still loads, by branch...
    expect_images(generate(app, f"{ALLOWED}@main"))
    expect_images(generate(app, f"{ALLOWED}@{SHA}"))  # ...and by commit hash


def test_a_cached_ref_that_points_out_of_the_hub_cache_is_refused(public_app):
    """Finding 2, checked after resolution: whatever a well-formed ref resolves to must lie in the
    repo's snapshots inside the Hub cache."""
    app, root, _, poisoned = public_app
    assert (poisoned / "snapshots" / (poisoned / "refs" / "main").read_text()).resolve() == \
        (root / "secret" / "model").resolve()
    expect_error(generate(app, "bedgen-org/poisoned"), "outside the Hub cache")
    expect_images(generate(app, str(root / "checkpoints" / "tiny")))
    expect_error(generate(app, "bedgen-org/run-escape"), "outside its folder")
    expect_images(generate(app, ALLOWED))


def test_failing_refs_leave_the_app_serving(public_app):
    """Finding 5 through the app: distinct allowed refs that fail to load, then a valid request."""
    app, root, _, _ = public_app
    for i in range(12):
        expect_error(generate(app, f"bedgen-org/missing-{i}"), "not in the local cache")
    expect_images(generate(app, ALLOWED))


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.items() for s in _strings(list(item))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


def test_anonymous_evaluate_stores_nothing_and_names_no_server_path(public_app):
    """Finding 7: the result is shown, bedgen.json is untouched, and no returned string holds an
    absolute path (reference, its data source, the Inception weights, the model folder)."""
    app, root, _, _ = public_app
    description = root / "checkpoints" / "tiny" / "bedgen.json"
    before = (description.read_bytes(), description.stat().st_mtime_ns)
    model = str(root / "checkpoints" / "tiny")  # as the public model list offers it
    event, (summary, result_text) = call(app, "evaluate", [model, "rooms-16.npz", 4, 2, "auto", ["fid"], 0])
    assert event == "complete"
    result = json.loads(result_text)
    assert result["fid"] > 0 and result["num_samples"] == 4
    assert (description.read_bytes(), description.stat().st_mtime_ns) == before
    assert "not stored" in summary
    returned = [summary, *_strings(result)]
    leaks = [s for s in returned if str(root) in s or str(root.resolve()) in s or os.path.isabs(s)]
    assert not leaks, leaks
    # what the paths became: names relative to the app's folders
    assert result["reference"]["path"] == "references/rooms-16.npz"
    assert result["inception"]["weights"] == "inception-random.pth"
    assert result["model"] == "checkpoints/tiny" and "checkpoints/tiny" in summary
    # nor do its errors (this one used to name the references folder's full path)
    message = expect_error(call(app, "evaluate", [model, "../inception-random.pth", 4, 2, "auto", ["fid"], 0]),
                           "outside the references folder")
    assert str(root) not in message and str(root.resolve()) not in message


# --- local mode (training on) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("train-refs")
    make_tiny_checkpoint(root / "checkpoints" / "ft-source", resolution=32)
    # Outside the checkpoints folder, but reachable by hub-shaped names from the app's working folder.
    make_tiny_checkpoint(root / "outside" / "model", resolution=32, seed=1)
    (root / "checkpoints" / "link-out").symlink_to(root / "outside" / "model")
    write_rooms(root / "data" / "rooms", 8, size=24)
    write_rooms(root / "data" / "my-style", 3, size=40, seed=5)
    with AppProcess(
        {"BEDGEN_CHECKPOINTS": str(root / "checkpoints"), "BEDGEN_DATA_ROOTS": str(root / "data"),
         "BEDGEN_DEFAULT_MODEL": str(root / "checkpoints" / "ft-source"), "HF_HUB_OFFLINE": "1",
         "BEDGEN_LPIPS_WEIGHTS": str(save_random_backbone(root / "alexnet-random.safetensors"))},
        cwd=root,
    ) as app:
        yield app, root


@pytest.mark.parametrize("escape", ["ROOT/outside/model", "outside/model", "checkpoints/link-out", "link-out",
                                    "checkpoints/../outside/model"])
def test_local_mode_serves_local_models_from_the_checkpoints_folder_only(train_app, escape):
    """Finding 11: the README says paths stay inside their folder in every mode; a local app used to
    load any folder it was given."""
    app, root = train_app
    expect_error(generate(app, escape.replace("ROOT", str(root))), "checkpoints folder only")
    expect_images(generate(app, "ft-source"))  # a run name, looked up in the checkpoints folder
    expect_images(generate(app, "checkpoints/ft-source"))  # as the model list shows it


def _nothing_started(root: Path, run: str) -> None:
    assert not (root / "checkpoints" / run).exists() and not (root / "checkpoints" / f".{run}.log").exists()


def _status(app: AppProcess) -> str:
    event, payload = call(app, "train_status", [])
    assert event == "complete", payload
    return payload[0]


# Hub-shaped names: "checkpoints/link-out" is, from the app's working folder, a link out of the
# checkpoints folder; "outside/model" a folder beside it. Neither exists under the checkpoints folder.
ESCAPES = ["checkpoints/link-out", "outside/model", "link-out"]


@pytest.mark.parametrize("escape", ESCAPES)
def test_finetune_model_outside_the_checkpoints_is_refused(train_app, escape):
    """Finding 3: the fine-tune model is checked where the training subprocess would find it."""
    app, root = train_app
    run = "ft-" + escape.replace("/", "-")
    data = str(root / "data" / "my-style")
    expect_error(call(app, "finetune_start", [escape, data, 0.0, 0, 2, 2, 1e-4, run]), "checkpoints folder")
    _nothing_started(root, run)
    assert "No run" in _status(app) or "stopped" in _status(app)


@pytest.mark.parametrize("endpoint", ["distill_start", "distill_progressive_start"])
@pytest.mark.parametrize("escape", ESCAPES)
def test_distill_teacher_outside_the_checkpoints_is_refused(train_app, escape, endpoint):
    """Finding 3 for the distil mode (both methods): its teacher is checked like the fine-tune model."""
    app, root = train_app
    run = {"distill_start": "cd-", "distill_progressive_start": "pd-"}[endpoint] + escape.replace("/", "-")
    data = str(root / "data" / "my-style")
    expect_error(call(app, endpoint, [escape, data, 2, 2, 1e-4, run]), "checkpoints folder")
    _nothing_started(root, run)
    assert "No run" in _status(app) or "stopped" in _status(app)


@pytest.mark.parametrize("escape", ESCAPES)
def test_ldm_autoencoder_outside_the_checkpoints_is_refused(train_app, escape):
    app, root = train_app
    run = "ldm-" + escape.replace("/", "-")
    data = str(root / "data" / "rooms")
    expect_error(call(app, "train_start", [data, "ldm-tiny", 16, 2, 2, 1e-3, "adamw", run, escape]),
                 "checkpoints folder")
    _nothing_started(root, run)
    assert "No run" in _status(app) or "stopped" in _status(app)


def _child_commands(pid: int) -> list[list[str]]:
    """The command lines of the processes ``pid`` started (from /proc)."""
    proc = Path("/proc")
    if not (proc / str(pid)).is_dir():
        pytest.skip("reading the training process's command line needs /proc (Linux)")
    commands = []
    for stat in proc.glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if parent == pid:
                commands.append((stat.parent / "cmdline").read_bytes().decode().split("\0"))
        except (OSError, IndexError, ValueError):
            continue  # a process that ended while we looked
    return commands


def test_finetune_subprocess_gets_the_resolved_checkpoint(train_app):
    """The valid request after the refused ones: the training process is given the checked folder
    itself, not the name to look up again."""
    app, root = train_app
    # "checkpoints/ft-source" as the model list shows it (the old check took it for a Hub id, and the
    # process looked it up again from the app's working folder); endless steps keep the process
    # there to be looked at until it is stopped below.
    event, payload = call(app, "finetune_start", ["checkpoints/ft-source", str(root / "data" / "my-style"), 0.0, 0,
                                                  10_000_000, 2, 1e-4, "ft-ok"])
    assert event == "complete", payload
    try:
        [command] = [c for c in _child_commands(app.process.pid) if "finetune" in c]
        assert command[command.index("--model") + 1] == str((root / "checkpoints" / "ft-source").resolve())
    finally:
        call(app, "train_stop", [])
        deadline = time.monotonic() + 240
        while not re.search(r"stopped|finished|exited", _status(app)) and time.monotonic() < deadline:
            time.sleep(1)


# --- the model cache, without a server ---------------------------------------------------------


def test_failing_loads_leave_no_lock_behind(tmp_path, monkeypatch):
    """Finding 5: every distinct ref that fails to load used to keep its loading lock forever."""
    from hubserver import isolate_hf_hub

    from bedgen.core.errors import BedgenError
    from bedgen.ui.cache import PipelineCache
    from bedgen.ui.security import ModelPolicy

    isolate_hf_hub(monkeypatch, tmp_path / "hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    checkpoints = tmp_path / "checkpoints"
    for i in range(20):
        (checkpoints / f"not-a-model-{i}").mkdir(parents=True)
    make_tiny_checkpoint(checkpoints / "tiny")
    cache = PipelineCache(2, ModelPolicy(checkpoints, public=True, hub_allow=("bedgen-org/*",)))
    refs = [str(checkpoints / f"not-a-model-{i}") for i in range(20)] + [f"bedgen-org/m{i}" for i in range(20)]
    for ref in refs:
        with pytest.raises(BedgenError):
            cache.get(ref)
    assert cache._loading == {}  # nothing kept per failed ref
    assert len(cache) == 0
    cache.get(str(checkpoints / "tiny"))
    assert len(cache) == 1 and cache._loading == {}


# --- Hub ids and resolved folders, without a server -------------------------------------------


@pytest.mark.parametrize("ref, revision", [
    ("org/name", None), ("org/name@main", "main"), ("org/name@v1.2", "v1.2"), ("org/name@refs/pr/1", "refs/pr/1"),
    (f"org/name@{SHA}", SHA),
])
def test_plain_revisions_are_hub_ids(ref, revision):
    from bedgen.core.hub import parse_hub_ref

    assert parse_hub_ref(ref).revision == revision


@pytest.mark.parametrize("ref", ["org/name@../x", "org/name@/etc", "org/name@refs/../../x", "org/name@.git",
                                 "org/name@a//b", "org/name@a/", "org/name@a..b", "org/..@main", "org/.hidden"])
def test_revisions_that_are_paths_are_not_hub_ids(ref, tmp_path, monkeypatch):
    """CLI, library and app share the parser: a path-like revision is refused before any lookup."""
    from bedgen.core.errors import ModelNotFoundError
    from bedgen.core.hub import parse_hub_ref, resolve_ref

    monkeypatch.chdir(tmp_path)
    assert parse_hub_ref(ref) is None
    with pytest.raises(ModelNotFoundError, match="neither a local directory nor a Hub id"):
        resolve_ref(ref)


def test_a_loaded_folder_outside_the_checkpoints_and_the_hub_cache_is_refused(tmp_path, monkeypatch):
    from hubserver import isolate_hf_hub

    from bedgen.core.errors import BedgenError
    from bedgen.ui.security import ModelPolicy

    cache = isolate_hf_hub(monkeypatch, tmp_path / "hf")
    policy = ModelPolicy(tmp_path / "checkpoints")
    policy.check_loaded("a", tmp_path / "checkpoints" / "run" / "checkpoint-1")
    policy.check_loaded("org/name", cache / "models--org--name" / "snapshots" / SHA)
    for folder in [tmp_path / "elsewhere", tmp_path / "checkpoints" / ".." / "elsewhere"]:
        with pytest.raises(BedgenError, match="outside the checkpoints folder and the Hub cache"):
            policy.check_loaded("org/name", folder)
