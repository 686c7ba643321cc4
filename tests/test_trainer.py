"""The trainer: learning, exact resume after SIGKILL, accelerate, NaN guard, bad input."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import bedgen
from bedgen.cli.main import train_config_from_args
from bedgen.core.errors import BedgenError
from bedgen.training.trainer import Trainer, TrainingDiverged

from conftest import tiny_config
from synthetic import write_rooms

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rooms")
    write_rooms(folder, 48, size=24)
    return folder


def quick_config(data: Path, **changes):
    base = {
        "data.source": str(data), "train.batch_size": 8, "train.max_steps": 6, "train.lr": 1e-3,
        "train.warmup_steps": 0, "train.checkpoint_every": 3, "train.preview_every": 0,
        "train.preview_images": 2, "train.log_every": 1, "train.mixed_precision": "no",
    }
    base.update(changes)
    return tiny_config(**base)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_loss_falls_on_a_tiny_synthetic_set(rooms, tmp_path):
    config = quick_config(rooms, **{"train.max_steps": 60, "train.checkpoint_every": 60})
    Trainer(config, tmp_path / "run", progress=False).train()
    losses = [m["loss"] for m in read_metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 60
    assert sum(losses[-10:]) / 10 < 0.6 * sum(losses[:10]) / 10


def test_run_folder_is_a_model_ref_with_ema_weights(rooms, tmp_path):
    config = quick_config(rooms, **{"train.preview_every": 3})
    last = Trainer(config, tmp_path / "run", progress=False).train()
    assert last.name == "step-000006"
    status = json.loads((tmp_path / "run" / "bedgen-run.json").read_text())
    assert status["status"] == "finished" and status["latest"] == "checkpoints/step-000006"
    pipe = bedgen.load(str(tmp_path / "run"))
    ema = load_file(str(last / "unet" / "diffusion_pytorch_model.safetensors"))
    raw = load_file(str(last / "training_state" / "raw_unet.safetensors"))
    assert torch.equal(pipe.unet.conv_in.weight, ema["conv_in.weight"])
    assert not torch.equal(ema["conv_in.weight"], raw["conv_in.weight"])  # EMA differs from raw
    assert len(pipe.generate(2, seed=0, steps=3)) == 2
    description = json.loads((last / "bedgen.json").read_text())
    assert description["training"]["step"] == 6 and description["data"]["images"] == 48
    assert (tmp_path / "run" / "previews" / "step-000003.png").is_file()
    assert (tmp_path / "run" / "previews" / "latest.png").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-000003", "step-000006"]


def test_improved_ddpm_trains_with_hybrid_loss_and_importance_sampling(rooms, tmp_path):
    config = quick_config(rooms, **{
        "family": "iddpm", "diffusion.variance_type": "learned_range", "diffusion.loss_type": "hybrid",
        "diffusion.beta_schedule": "squaredcos_cap_v2", "diffusion.timestep_sampling": "importance",
        "train.max_steps": 4, "train.checkpoint_every": 2,
    })
    Trainer(config, tmp_path / "run", progress=False).train()
    # resume continues the importance sampler's history
    config.train.max_steps = 6
    trainer = Trainer(config, tmp_path / "run", resume=True, progress=False)
    assert trainer.state.step == 4
    assert int(trainer.family.importance.state_dict()["loss_counts"].sum()) == 4 * 8
    trainer.train()
    pipe = bedgen.load(str(tmp_path / "run"))
    assert pipe.info.family == "iddpm" and pipe.unet.config.out_channels == 6
    assert len(pipe.generate(1, seed=0, steps=5, scheduler="ddpm")) == 1


def _train_cli(run: Path, data: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "bedgen", "train", "--data", str(data), "--preset", "tiny",
            "--resolution", "32", "--out", str(run), "--max-steps", "8", "--checkpoint-every", "4",
            "--batch-size", "16", "--mixed-precision", "no", "--preview-every", "0", "--preview-images", "0",
            "--log-every", "1", "--warmup-steps", "2", *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _latest(run: Path) -> str | None:
    try:
        return json.loads((run / "bedgen-run.json").read_text()).get("latest")
    except (OSError, ValueError):
        return None


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_same_weights(rooms, tmp_path):
    # The uninterrupted run and the victim are independent processes: both start at once.
    straight = _train_cli(tmp_path / "a", rooms)
    victim = _train_cli(tmp_path / "b", rooms)
    deadline = time.monotonic() + 300
    while _latest(tmp_path / "b") != "checkpoints/step-000004":
        assert victim.poll() is None and time.monotonic() < deadline, "no checkpoint at step 4"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert _latest(tmp_path / "b") == "checkpoints/step-000004"  # killed before step 8
    assert straight.wait(timeout=300) == 0, straight.stdout.read()

    resumed = _train_cli(tmp_path / "b", rooms, "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    for name in ("training_state/raw_unet.safetensors", "unet/diffusion_pytorch_model.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step-000008" / name))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step-000008" / name))
        assert a.keys() == b.keys()
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name
    curve_a = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "a") if "loss" in m}
    curve_b = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "b") if "loss" in m}
    assert all(abs(curve_a[s] - curve_b[s]) < 1e-6 for s in range(5, 9))


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["--cpu", "--multi_gpu"])
def test_accelerate_launch_with_two_cpu_processes(rooms, tmp_path, mode):
    """``--cpu`` is the documented form; in accelerate 1.x it starts ONE process unless
    MPI is set up, while ``--multi_gpu`` on a machine without GPUs starts two processes
    through torchrun, and bedgen's Accelerator(cpu=True) makes them a gloo group."""
    run = tmp_path / "ddp"
    args = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
            mode, "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bedgen", "train",
            "--data", str(rooms), "--preset", "tiny", "--resolution", "16", "--set", "unet.block_out_channels=[8,16]",
            "--set", 'unet.down_block_types=["DownBlock2D","AttnDownBlock2D"]',
            "--set", 'unet.up_block_types=["AttnUpBlock2D","UpBlock2D"]', "--set", "unet.norm_num_groups=4",
            "--out", str(run), "--max-steps", "3", "--checkpoint-every", "3", "--batch-size", "4",
            "--preview-every", "0", "--preview-images", "0", "--mixed-precision", "no"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000003"]
    description = json.loads((run / "checkpoints" / "step-000003" / "bedgen.json").read_text())
    processes = 2 if mode == "--multi_gpu" else 1
    assert description["training"]["images_seen"] == 3 * 4 * processes
    assert bedgen.load(str(run)).generate(1, seed=0, steps=2)


def test_absurd_learning_rate_trips_the_nan_guard(rooms, tmp_path):
    config = quick_config(rooms, **{
        "train.optimizer": "sgd", "train.lr": 1e12, "train.grad_clip": 0.0, "train.momentum": 0.0,
        "train.checkpoint_every": 1, "train.max_steps": 20,
    })
    trainer = Trainer(config, tmp_path / "run", progress=False)
    with pytest.raises(TrainingDiverged, match="non-finite .* the last good checkpoint .* is kept"):
        trainer.train()
    status = json.loads((tmp_path / "run" / "bedgen-run.json").read_text())
    assert status["status"] == "diverged" and "non-finite" in status["message"]
    pipe = bedgen.load(str(tmp_path / "run"))  # the last good checkpoint still loads
    assert all(torch.isfinite(p).all() for p in pipe.unet.parameters())


def test_rollback_policy_lowers_the_learning_rate_and_continues(rooms, tmp_path):
    config = quick_config(rooms, **{"train.checkpoint_every": 2, "train.max_steps": 4, "train.nan_policy": "rollback"})
    trainer = Trainer(config, tmp_path / "run", progress=False)
    original = trainer.family.loss
    calls = {"n": 0}

    def poisoned(model, x0, generator):  # one NaN loss at the 3rd step
        calls["n"] += 1
        losses, t, raw = original(model, x0, generator)
        return (losses * float("nan"), t, raw) if calls["n"] == 3 else (losses, t, raw)

    trainer.family.loss = poisoned
    trainer.train()
    assert trainer.state.step == 4 and trainer.state.rollbacks == 1
    assert trainer.state.lr_scale == 0.5 and trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(5e-4)


def test_unreadable_images_are_skipped_and_counted(rooms, tmp_path):
    folder = tmp_path / "mixed"
    write_rooms(folder, 12, size=24)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / "notes.png").write_text("not an image")
    config = quick_config(folder, **{"train.max_steps": 4, "train.checkpoint_every": 4})
    last = Trainer(config, tmp_path / "run", progress=False).train()
    description = json.loads((last / "bedgen.json").read_text())
    assert description["training"]["skipped_images"] == 2
    status = json.loads((tmp_path / "run" / "bedgen-run.json").read_text())
    assert "skipped 2 unreadable image(s)" in status["message"] and "broken.jpg" in status["message"]


class _Args:
    def __init__(self, **kw):
        defaults = dict(data=None, preset="tiny", config=None, resolution=None, out=Path("/tmp/x"), resume=False, set=[])
        defaults.update(kw)
        self.__dict__.update(defaults)


@pytest.mark.parametrize(
    "args, message",
    [
        (dict(data="/no/such/folder"), "does not exist"),
        (dict(resolution=30), "not a multiple of the model's downsampling factor 4"),
        (dict(**{"train.batch_size": 0}), "batch size must be at least 1"),
        (dict(data=None), "--data is required"),
    ],
)
def test_bad_training_input_is_refused_before_training(rooms, tmp_path, args, message):
    args.setdefault("data", str(rooms))
    if args["data"] is None:
        args["data"] = None
    namespace = _Args(out=tmp_path / "run", **args)
    with pytest.raises(BedgenError, match=message):
        config = train_config_from_args(namespace)
        Trainer(config, namespace.out, progress=False)
    assert not (tmp_path / "run").exists()


def test_empty_folder_and_unwritable_out(rooms, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BedgenError, match="no images"):
        Trainer(quick_config(tmp_path / "empty"), tmp_path / "run", progress=False)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BedgenError, match="cannot write to run folder"):
        Trainer(quick_config(rooms), blocker / "run", progress=False)


def test_existing_run_needs_resume(rooms, tmp_path):
    Trainer(quick_config(rooms, **{"train.max_steps": 3}), tmp_path / "run", progress=False).train()
    with pytest.raises(BedgenError, match="already holds a training run; pass --resume"):
        Trainer(quick_config(rooms), tmp_path / "run", progress=False)


def test_cli_exit_codes(rooms, tmp_path):
    from bedgen.cli.main import main

    assert main(["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")]) == 2
    lmdb_dir = tmp_path / "not-lsun"
    import lmdb

    with lmdb.open(str(lmdb_dir), map_size=1 << 20) as env, env.begin(write=True) as txn:
        txn.put(b"a", b"hello")
    assert main(["train", "--data", str(lmdb_dir), "--out", str(tmp_path / "r2")]) == 2


def test_preset_files_in_train_match_the_presets():
    from bedgen.config.schema import PRESETS

    folder = Path(__file__).resolve().parent.parent / "train" / "presets"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(PRESETS)
    for name, config in PRESETS.items():
        assert json.loads((folder / f"{name}.json").read_text()) == json.loads(json.dumps(config.to_dict())), name


def test_prepare_then_train_from_the_shards_cli(rooms, tmp_path, capsys):
    from bedgen.cli.main import main

    assert main(["prepare", "--src", str(rooms), "--out", str(tmp_path / "shards"), "--resolution", "16"]) == 0
    assert "wrote 48 images at 16 px" in capsys.readouterr().out
    meta = json.loads((tmp_path / "shards" / "meta.json").read_text())
    assert meta["count"] == 48 and meta["resolution"] == 16
    code = main(["train", "--data", str(tmp_path / "shards"), "--preset", "tiny", "--resolution", "16",
                 "--out", str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "4",
                 "--preview-every", "0", "--checkpoint-every", "2"])
    assert code == 0
    assert bedgen.load(str(tmp_path / "run")).info.metadata["data"]["kind"] == "shards"
