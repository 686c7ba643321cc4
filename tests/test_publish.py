"""bedgen push / pull against the local test Hub, through huggingface_hub's real client.

The CLI runs in a subprocess with HF_ENDPOINT and HF_TOKEN set, as a user runs it; the
uploaded repo is then read back with bedgen.load, diffusers' DiffusionPipeline and
huggingface_hub's ModelCard from the same server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import bedgen
from bedgen.storage.checkpoint import BEDGEN_JSON
from bedgen.cli.main import main

from conftest import make_tiny_checkpoint, make_tiny_ldm_checkpoint, make_tiny_score_checkpoint, make_tiny_vae_checkpoint
from hubserver import FakeHub, isolate_hf_hub, set_hf_endpoint
from synthetic import write_rooms

TOKEN = "hf_PushTestWriteToken0123456789abcd"
READ_TOKEN = "hf_PushTestReadToken0123456789abcde"
SECRET = "s3cret-Value-From-The-Environment-42"  # a secret-looking env var's value, planted in bedgen.json too
PRIVATE_DIR = "/home/alice/private-data"  # an absolute local path, planted in the config and the metrics
FID_RECORD = {
    "model": f"{PRIVATE_DIR}/checkpoints/tiny", "checkpoint_step": 6, "num_samples": 2000, "fid": 48.25,
    "kid": 0.0312, "kid_std": 0.0011, "is": 2.5, "is_std": 0.1, "precision": 0.61, "recall": 0.42,
    "resolution": 16, "sampler": "dpmsolver++", "steps": 20, "seed": 0, "placement": "cpu/fp32",
    "reference": {"path": f"{PRIVATE_DIR}/stats/rooms-16.npz", "source": f"{PRIVATE_DIR}/rooms", "kind": "folder",
                  "count": 1234, "resolution": 16, "square": "crop", "feature_layer": "2048"},
    "settings": {"note": f"measured with token {SECRET}"},
}


@pytest.fixture
def hub(tmp_path, monkeypatch):
    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    monkeypatch.setenv("BEDGEN_PUSH_TEST_TOKEN", SECRET)
    with FakeHub() as server:
        server.add_token(TOKEN, "alice", orgs={"acme": "write", "readers": "read"})
        server.add_token(READ_TOKEN, "alice", role="read", name="read-only")
        monkeypatch.setenv("HF_ENDPOINT", server.endpoint)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield server


# bedgen train flags for a few seconds of CPU: 4 steps of the two-level UNet of conftest.tiny_config, no previews.
TINY_TRAINING = [
    "--max-steps", "4", "--batch-size", "4", "--checkpoint-every", "2", "--log-every", "1", "--preview-every", "0",
    "--preview-images", "0", "--warmup-steps", "0", "--mixed-precision", "no",
    "--set", "unet.block_out_channels=[8, 16]", "--set", 'unet.down_block_types=["DownBlock2D", "AttnDownBlock2D"]',
    "--set", 'unet.up_block_types=["AttnUpBlock2D", "UpBlock2D"]', "--set", "unet.norm_num_groups=4",
    "--set", "diffusion.num_train_timesteps=100", "--set", "sampling.steps=5",
]


def planted_checkpoint(path: Path) -> Path:
    """A tiny checkpoint whose bedgen.json holds a local path, a secret and an FID record."""
    make_tiny_checkpoint(path)
    description = json.loads((path / BEDGEN_JSON).read_text())
    description["config"]["data"]["source"] = f"{PRIVATE_DIR}/rooms"
    description["data"] = {"kind": "folder", "source": f"{PRIVATE_DIR}/rooms", "images": 1234, "square": "crop"}
    description["training"] = {"step": 6, "images_seen": 48}
    description["metrics"] = [FID_RECORD]
    (path / BEDGEN_JSON).write_text(json.dumps(description, indent=2))
    return path


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bedgen", *args], env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=300)


DIFFUSERS_CHECK = """
import json, sys, torch
from diffusers import DiffusionPipeline
out = {}
for repo, local in json.loads(sys.argv[1]):
    pipes = [DiffusionPipeline.from_pretrained(repo), DiffusionPipeline.from_pretrained(local)]
    images = []
    for p in pipes:
        torch.manual_seed(0)  # LDMPipeline does not pass its generator on to the scheduler's step
        images.append(p(batch_size=1, num_inference_steps=2, generator=torch.Generator().manual_seed(1),
                        output_type="np").images)
    out[repo] = [type(pipes[0]).__name__, bool((images[0] == images[1]).all())]
print(json.dumps(out))
"""


def plain_diffusers(hub: FakeHub, home: Path, pairs: list[tuple[str, Path]]) -> dict[str, list]:
    """DiffusionPipeline.from_pretrained of each Hub repo and of its local folder, in a fresh process whose
    HF_ENDPOINT points at the test Hub (read at import, as for any user) and whose cache starts empty:
    {repo: [pipeline class, same images for the same generator]}."""
    env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", DIFFUSERS_CHECK, json.dumps([[r, str(p)] for r, p in pairs])],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for repo, _ in pairs:  # really fetched from the server
        assert ("GET", f"/{repo}/resolve/{hub.repo(repo).refs['main']}/model_index.json") in hub.requests
    return json.loads(done.stdout.strip().splitlines()[-1])


def fp32_images(ref: str) -> list:
    pipe = bedgen.load(ref)
    return [torch.tensor(list(im.getdata())) for im in pipe.generate(2, seed=3, steps=4, device="cpu", dtype="fp32")]


def commits(hub: FakeHub, repo_id: str, revision: str = "main") -> list[str]:
    from huggingface_hub import HfApi

    return [c.commit_id for c in HfApi(endpoint=hub.endpoint, token=TOKEN).list_repo_commits(repo_id, revision=revision)]


def assert_nothing_private_uploaded(hub: FakeHub) -> None:
    for name, data in hub.stored_blobs():
        for needle in (SECRET, PRIVATE_DIR, "/home/alice", TOKEN):
            assert needle.encode() not in data, f"{needle!r} was uploaded in {name}"


def test_push_round_trip_through_the_cli(hub, tmp_path, monkeypatch, capsys):
    local = planted_checkpoint(tmp_path / "models" / "tiny")
    pushed = run_cli("push", "--model", str(local), "--repo", "alice/tiny", "--samples", "2")
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip() == f"{hub.endpoint}/alice/tiny"
    assert TOKEN not in pushed.stdout + pushed.stderr and SECRET not in pushed.stdout + pushed.stderr
    files = hub.files("alice/tiny")
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", BEDGEN_JSON, "README.md", "samples.png"} <= set(files)
    assert not any(p.startswith("training_state/") for p in files)
    assert files["unet/diffusion_pytorch_model.safetensors"] == (local / "unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert_nothing_private_uploaded(hub)
    published = json.loads(files[BEDGEN_JSON])
    assert published["config"]["data"]["source"] == "<local>/rooms"  # which data, not where
    assert published["metrics"][0]["reference"]["path"] == "<local>/rooms-16.npz"

    # bedgen loads it from the server: the same fp32 images as from the local folder. (Plain diffusers
    # loads pushed repos of every layout in test_every_pipeline_layout_loads_from_the_hub_in_plain_diffusers.)
    assert all(torch.equal(a, b) for a, b in zip(fp32_images("alice/tiny"), fp32_images(str(local))))

    # The card parses with huggingface_hub and carries the metadata and the results.
    from huggingface_hub import ModelCard

    set_hf_endpoint(monkeypatch, hub.endpoint)  # ModelCard.load has no endpoint argument
    card = ModelCard.load("alice/tiny")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "unconditional-image-generation"
    assert {"bedgen", "ddpm"} <= set(card.data.tags) and card.data.license == "apache-2.0"
    assert [(r.metric_type, r.metric_value) for r in card.data.eval_results] == [("fid", 48.25), ("kid", 0.0312)]
    assert "| 48.25 | 31.20 ± 1.10 |" in card.text and "2000" in card.text and "`<local>/rooms`" in card.text
    assert "dpmsolver++" in card.text and "1,234 images" in card.text
    assert 'DiffusionPipeline.from_pretrained("alice/tiny")' in card.text and 'bedgen.load("alice/tiny")' in card.text
    assert "center-cropped" in card.text

    # Pushing the same checkpoint again changes nothing; a new evaluation is exactly one new commit.
    # (in this process from here on: the subprocess above was the user's view, this saves its start-up)
    before = commits(hub, "alice/tiny")
    assert main(["push", "--model", str(local), "--repo", "alice/tiny", "--samples", "2"]) == 0
    assert "no new commit" in capsys.readouterr().err and commits(hub, "alice/tiny") == before
    description = json.loads((local / BEDGEN_JSON).read_text())
    description["metrics"].append({**FID_RECORD, "fid": 40.5, "num_samples": 5000})
    (local / BEDGEN_JSON).write_text(json.dumps(description))
    assert main(["push", "--model", str(local), "--repo", "alice/tiny", "--samples", "2", "--message", "FID on 5k"]) == 0
    after = commits(hub, "alice/tiny")
    assert len(after) == len(before) + 1 and after[1:] == before
    assert "| 40.50 |" in hub.files("alice/tiny")["README.md"].decode()
    assert_nothing_private_uploaded(hub)


def _consistency(path: Path) -> Path:
    from test_checkpoint import write_consistency_layout

    write_consistency_layout(path)
    return path


def test_every_pipeline_layout_loads_from_the_hub_in_plain_diffusers(hub, tmp_path):
    from bedgen.sharing.publish import push_model

    layouts = {"DDPMPipeline": planted_checkpoint, "ScoreSdeVePipeline": make_tiny_score_checkpoint,
               "LDMPipeline": make_tiny_ldm_checkpoint, "ConsistencyModelPipeline": _consistency}
    pairs = []
    for name, make in layouts.items():
        local = make(tmp_path / name)
        result = push_model(local, f"alice/{name.lower()}", samples=1)
        assert "samples.png" in result.files
        card = hub.files(result.repo_id)["README.md"].decode()
        assert f"# {name}" in card and ("Not evaluated" in card) == (name != "DDPMPipeline")
        pairs.append((result.repo_id, local))
    loaded = plain_diffusers(hub, tmp_path / "diffusers-home", pairs)
    assert loaded == {f"alice/{name.lower()}": [name, True] for name in layouts}
    for repo, local in pairs:
        assert all(torch.equal(a, b) for a, b in zip(fp32_images(repo), fp32_images(str(local))))
    assert_nothing_private_uploaded(hub)


def test_vae_pushes_as_an_autoencoder_folder(hub, tmp_path):
    from huggingface_hub import snapshot_download
    from diffusers import AutoencoderKL
    from bedgen.sharing.publish import push_model

    local = make_tiny_vae_checkpoint(tmp_path / "vae")
    push_model(local, "alice/vae", samples=2)
    remote = AutoencoderKL.from_pretrained(snapshot_download("alice/vae", endpoint=hub.endpoint), subfolder="vae")
    disk = AutoencoderKL.from_pretrained(local / "vae")
    assert all(torch.equal(a, b) for a, b in zip(remote.state_dict().values(), disk.state_dict().values()))
    assert 'AutoencoderKL.from_pretrained("alice/vae", subfolder="vae")' in hub.files("alice/vae")["README.md"].decode()
    assert bedgen.load("alice/vae").info.family == "vae"


def test_pushed_models_are_listed(hub, tmp_path, capsys):
    from bedgen.sharing.publish import push_model
    from bedgen.storage.registry import pushed_models

    local = make_tiny_checkpoint(tmp_path / "tiny")
    result = push_model(local, "acme/listed", samples=0, revision="v2", private=True)
    assert result.ref == "acme/listed@v2" and result.private
    assert result.url == f"{hub.endpoint}/acme/listed/tree/v2"
    assert [(e.ref, e.source) for e in pushed_models()] == [("acme/listed@v2", "hub")]
    assert "private" in pushed_models()[0].description
    assert pushed_models(endpoint="https://huggingface.co") == []  # per Hub
    assert main(["models", "--json"]) == 0
    refs = [json.loads(line)["ref"] for line in capsys.readouterr().out.splitlines()]
    assert refs.index("acme/listed@v2") < refs.index("google/ddpm-ema-bedroom-256")


def test_revision_branch_and_pull(hub, tmp_path):
    from bedgen.sharing.publish import push_model

    main_model = make_tiny_checkpoint(tmp_path / "a", seed=0)
    v2_model = make_tiny_checkpoint(tmp_path / "b", seed=1)
    push_model(main_model, "alice/revs", samples=0)
    result = push_model(v2_model, "alice/revs", revision="v2", samples=0)
    assert result.revision == "v2" and result.changed
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert hub.files("alice/revs", "v2")[weights] == (v2_model / weights).read_bytes()
    assert hub.files("alice/revs", "main")[weights] == (main_model / weights).read_bytes()
    # The card of a branch tells how to load that branch.
    assert 'revision="v2"' in hub.files("alice/revs", "v2")["README.md"].decode()

    assert main(["pull", "--model", "alice/revs@v2", "--out", str(tmp_path / "pulled")]) == 0
    assert (tmp_path / "pulled" / weights).read_bytes() == (v2_model / weights).read_bytes()
    assert all(torch.equal(a, b) for a, b in zip(fp32_images("alice/revs@v2"), fp32_images(str(v2_model))))
    assert all(torch.equal(a, b) for a, b in zip(fp32_images(str(tmp_path / "pulled")), fp32_images(str(v2_model))))
    assert main(["pull", "--model", "alice/revs@" + result.commit]) == 0  # a commit sha works as a revision


def test_run_folder_pushes_latest_ema_checkpoint_with_loss_curve_and_resumes(hub, tmp_path, capsys):
    rooms = tmp_path / "rooms"
    write_rooms(rooms, 16, size=20)
    run = tmp_path / "run"
    assert main(["train", "--data", str(rooms), "--resolution", "16", "--out", str(run), *TINY_TRAINING]) == 0
    latest = json.loads((run / "bedgen-run.json").read_text())["latest"]
    assert latest == "checkpoints/step-000004"
    assert main(["push", "--model", str(run), "--repo", "alice/run", "--samples", "1", "--include-training-state"]) == 0
    files = hub.files("alice/run")
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert files[weights] == (run / latest / weights).read_bytes()  # the EMA weights of the latest checkpoint
    assert files["loss.png"].startswith(b"\x89PNG") and "![training loss](loss.png)" in files["README.md"].decode()
    assert "training_state/raw_unet.safetensors" in files and "## Resuming training" in files["README.md"].decode()
    assert json.loads(files[BEDGEN_JSON])["training"]["step"] == 4
    assert_nothing_private_uploaded(hub)  # tmp paths of this test count as private too
    for _, data in hub.stored_blobs():
        assert str(tmp_path).encode() not in data

    # Resumable from the Hub: pull as a run folder and continue to step 6 -- exactly as the local run continues.
    resumed = tmp_path / "resumed"
    assert main(["pull", "--model", "alice/run", "--out", str(resumed), "--include-training-state"]) == 0
    for folder in (resumed, run):
        assert main(["train", "--resume", "--out", str(folder), "--data", str(rooms), "--max-steps", "6"]) == 0
    from safetensors.torch import load_file

    step6 = [load_file(str(folder / "checkpoints/step-000006" / weights)) for folder in (resumed, run)]
    assert step6[0].keys() == step6[1].keys() and all(torch.equal(step6[0][k], step6[1][k]) for k in step6[0])

    # Pushing step 6 without the state is one commit that also removes training_state/.
    before = commits(hub, "alice/run")
    assert main(["push", "--model", str(run), "--repo", "alice/run", "--samples", "1"]) == 0
    assert len(commits(hub, "alice/run")) == len(before) + 1
    files = hub.files("alice/run")
    assert not any(p.startswith("training_state/") for p in files)
    assert files[weights] == (run / "checkpoints/step-000006" / weights).read_bytes()


# --- bad input: one line, exit 2, nothing half-published ---------------------------------------


def write_requests(hub: FakeHub) -> list[tuple[str, str]]:
    return [(m, p) for m, p in hub.requests if m in ("POST", "PUT", "DELETE")]


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("bedgen: error:")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.mark.parametrize("repo", ["alice/has space", "alice/x--y", "a/b/c", "alice/", "../etc", "alice/ünï", "x" * 97])
def test_odd_repo_ids_are_refused_before_any_request(hub, tmp_path, capsys, repo):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    assert main(["push", "--model", str(local), "--repo", repo]) == 2
    assert "is not a Hub repo id" in one_error_line(capsys)
    assert hub.requests == []


def test_missing_and_read_only_tokens_fail_before_any_upload(hub, tmp_path, capsys, monkeypatch):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.delenv("HF_TOKEN")
    assert main(["push", "--model", str(local), "--repo", "alice/t"]) == 2
    assert "no Hugging Face token: set HF_TOKEN" in one_error_line(capsys)
    assert hub.requests == []

    monkeypatch.setenv("HF_TOKEN", READ_TOKEN)
    assert main(["push", "--model", str(local), "--repo", "alice/t"]) == 2
    line = one_error_line(capsys)
    assert "the token 'read-only' is read-only" in line and READ_TOKEN not in line
    assert write_requests(hub) == []

    monkeypatch.setenv("HF_TOKEN", "hf_NotAKnownTokenAtAll000000000000")
    assert main(["push", "--model", str(local), "--repo", "alice/t"]) == 2
    assert "did not accept the Hugging Face token" in one_error_line(capsys)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    for repo, message in (("readers/t", "may only read in 'readers'"), ("bob/t", "'alice' is not a member of 'bob'")):
        assert main(["push", "--model", str(local), "--repo", repo]) == 2
        assert message in one_error_line(capsys)
    assert write_requests(hub) == []
    assert main(["push", "--model", str(local), "--repo", "t", "--samples", "0"]) == 0  # NAME alone: the user's own
    assert "alice/t" in capsys.readouterr().out


def test_folders_that_are_not_checkpoints(hub, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(b"\x89PNG")
    run = tmp_path / "run"
    run.mkdir()
    (run / "bedgen-run.json").write_text('{"status": "running"}')
    pickled = make_tiny_checkpoint(tmp_path / "pickled")
    (pickled / "unet" / "extra.bin").write_bytes(b"pickle")
    cases = [(tmp_path / "empty", "is not a checkpoint"), (tmp_path / "pics", "is not a checkpoint"),
             (tmp_path / "missing", "is not a local folder"), (run, "has no checkpoint yet"),
             (pickled, "holds pickled weights"), (make_tiny_checkpoint(tmp_path / "plain"), "has no training_state/")]
    for folder, message in cases:
        extra = ["--include-training-state"] if folder.name == "plain" else []
        assert main(["push", "--model", str(folder), "--repo", "alice/nope", *extra]) == 2, folder
        assert message in one_error_line(capsys), folder
    assert hub.requests == []


def test_connection_cut_mid_upload_then_the_next_push_succeeds(hub, tmp_path, capsys):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    hub.cut_uploads(1, only="commit")  # the server reads half the commit, then drops the connection
    assert main(["push", "--model", str(local), "--repo", "alice/cut", "--samples", "0"]) == 2
    line = one_error_line(capsys)
    assert "the connection to the Hub was lost" in line and "run the same command again" in line
    assert set(hub.files("alice/cut")) == {".gitattributes"}  # the repo exists, nothing of the push is in it
    with pytest.raises(bedgen.BedgenError):
        bedgen.load("alice/cut")

    hub.cut_uploads(1, only="lfs")  # a dropped LFS upload is retried by huggingface_hub itself
    assert main(["push", "--model", str(local), "--repo", "alice/cut", "--samples", "0"]) == 0
    assert all(torch.equal(a, b) for a, b in zip(fp32_images("alice/cut"), fp32_images(str(local))))


def test_unreachable_hub_is_one_line(hub, tmp_path, capsys, monkeypatch):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["push", "--model", str(local), "--repo", "alice/down"]) == 2
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in one_error_line(capsys)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub.stop()
    assert main(["push", "--model", str(local), "--repo", "alice/down"]) == 2
    assert "checking the token failed: the connection to the Hub was lost" in one_error_line(capsys)


def test_bad_revisions_and_pull_errors(hub, tmp_path, capsys):
    local = make_tiny_checkpoint(tmp_path / "tiny")
    for revision in ("a" * 40, "refs/pr/1", "v..1", "bad name"):
        assert main(["push", "--model", str(local), "--repo", "alice/r", "--revision", revision]) == 2
        assert "is not a branch name" in one_error_line(capsys)
    assert hub.requests == []
    assert main(["pull", "--model", "alice/never"]) == 2
    assert "was not found on the Hub" in one_error_line(capsys)
    assert main(["pull", "--model", "not a ref"]) == 2
    assert "is not a Hub id" in one_error_line(capsys)
    assert main(["push", "--model", str(local), "--repo", "alice/r", "--samples", "0"]) == 0
    assert main(["pull", "--model", "alice/r", "--out", str(tmp_path / "x"), "--include-training-state"]) == 2
    assert "pushed without training state" in one_error_line(capsys)


def test_redact_paths_and_secrets_anywhere():
    from bedgen.core.redact import redact, redact_file

    secrets = ["Sup3r-Secret-Value"]
    value = {
        "source": "/home/alice/data/rooms", "windows": "C:\\Users\\alice\\rooms", "home": "~/rooms",
        "relative": "data/rooms", "hub": "pcuenq/lsun-bedrooms", "url": "https://huggingface.co/datasets/a/b",
        "note": "stats /tmp/x/ref.npz differ from /srv/y", "rate": "10 it/s", "nested": [{"api_key": "abc"}],
        "auth_token": "", "mentions": "token hf_abcdefghijklmnopqrstuvwxyz012345 and Sup3r-Secret-Value",
        "max_tokens": 7,
    }
    assert redact(value, secrets) == {
        "source": "<local>/rooms", "windows": "<local>/rooms", "home": "<local>/rooms", "relative": "data/rooms",
        "hub": "pcuenq/lsun-bedrooms", "url": "https://huggingface.co/datasets/a/b",
        "note": "stats <local>/ref.npz differ from <local>/y", "rate": "10 it/s", "nested": [{"api_key": "<redacted>"}],
        "auth_token": "", "mentions": "token <redacted> and <redacted>", "max_tokens": 7,
    }
    unchanged = b'{\n  "_class_name": "UNet2DModel",\n  "sample_size": 16\n}'
    assert redact_file("unet/config.json", unchanged, secrets) is unchanged  # diffusers' files stay byte-identical
    assert redact_file("w.safetensors", b"\x00/home/alice\xff", secrets) == b"\x00/home/alice\xff"  # binaries as they are


def test_a_distilled_student_names_its_teacher_in_the_card_and_uploads_no_local_path(hub, tmp_path):
    from bedgen.sharing.publish import push_model

    teacher = make_tiny_checkpoint(tmp_path / "teacher")
    write_rooms(tmp_path / "rooms", 8, size=16)
    assert main(["distill", "--teacher", str(teacher), "--data", str(tmp_path / "rooms"), "--out",
                 str(tmp_path / "student"), "--max-steps", "2", "--batch-size", "2", "--preview-every", "0"]) == 0
    push_model(tmp_path / "student", "alice/student", samples=1)
    card = hub.files("alice/student")["README.md"].decode()
    assert "distilled from the diffusion model `<local>/teacher`" in card and "consistency model" in card
    assert json.loads(hub.files("alice/student")["model_index.json"])["_class_name"] == "ConsistencyModelPipeline"
    for name, data in hub.stored_blobs():
        assert str(tmp_path).encode() not in data, f"a local path was uploaded in {name}"
