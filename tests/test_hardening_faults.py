"""Faults: training killed at random moments, a full disk during a save, a download cut half-way."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import bedgen
from bedgen.storage.checkpoint import latest_in_run
from bedgen.cli.main import main
from bedgen.core.errors import ModelNotFoundError
from conftest import make_tiny_checkpoint
from hubserver import FakeHub, isolate_hf_hub
from synthetic import write_rooms

TINY = ["--set", "unet.block_out_channels=[8, 16]", "--set", 'unet.down_block_types=["DownBlock2D", "AttnDownBlock2D"]',
        "--set", 'unet.up_block_types=["AttnUpBlock2D", "UpBlock2D"]', "--set", "unet.norm_num_groups=4",
        "--set", "diffusion.num_train_timesteps=100", "--resolution", "16", "--batch-size", "4",
        "--preview-images", "0", "--log-every", "1"]


def _train_command(data: Path, out: Path, steps: int, every: int) -> list[str]:
    return [sys.executable, "-m", "bedgen", "train", "--data", str(data), "--preset", "tiny", "--out", str(out),
            "--resume", "--max-steps", str(steps), "--checkpoint-every", str(every), *TINY]


def _visible_checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").glob("step-*") if p.is_dir())


def _steps_of(checkpoint: Path) -> int:
    return json.loads((checkpoint / "bedgen.json").read_text())["training"]["step"]


def _new_records(run: Path, offset: int) -> list[dict]:
    """The loss records a process appended to metrics.jsonl after byte ``offset`` (whole lines only)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return []
    with open(path, "rb") as handle:
        handle.seek(offset)
        lines = handle.read().decode().split("\n")[:-1]  # a line still being written is not read
    return [json.loads(line) for line in lines if '"loss"' in line]


def _kill_at(process: subprocess.Popen, moment: str, run: Path, offset: int, every: int, rng: random.Random) -> None:
    """SIGKILL the training process at a moment of one kind, found by watching its progress
    (not the clock, so that a slow machine moves the moment, not its kind):
    ``start-up`` (imports, data, model, the run folder), ``step`` (between checkpoints) or
    ``save`` (right after a checkpoint step is logged, while that checkpoint is written)."""
    deadline = time.monotonic() + 300  # only bounds the wait: a kill at any moment is legitimate

    def seen(done) -> bool:
        while process.poll() is None and time.monotonic() < deadline:
            if done(_new_records(run, offset)):
                return True
            time.sleep(0.005)
        return False

    if moment == "start-up":
        try:
            process.wait(rng.uniform(0.0, 3.0))
        except subprocess.TimeoutExpired:
            pass
    elif moment == "step":
        seen(lambda records: len(records) >= rng.randint(1, every - 1))
    elif seen(lambda records: any(r["step"] % every == 0 for r in records)):
        time.sleep(rng.uniform(0.0, 0.05))
    process.send_signal(signal.SIGKILL)
    process.wait()


class Killed(BaseException):
    """Stands for SIGKILL inside one process: nothing catches it, no clean-up code runs after it."""


def _latest_step(run: Path) -> int:
    """The step of the checkpoint the run points at (bedgen-run.json's "latest"); 0 when none."""
    try:
        return _steps_of(latest_in_run(run))
    except (FileNotFoundError, ModelNotFoundError):  # no run folder yet, or no checkpoint yet
        return 0


# Ten kills in all (3 in start-up, 3 in a step, 4 in a save), over two runs. Each start of
# `bedgen train` costs seconds of imports on one core, while the test mostly waits on it: the
# two runs go side by side, so their starts share the machine's cores instead of queueing.
KILL_SERIES = {"a": (1234, ["start-up", "step", "save", "save"]), "b": (5678, ["start-up", "start-up", "save", "save"])}


def _kill_and_resume(root: Path, seed: int, moments: list[str], checking: threading.Lock) -> list[tuple]:
    """One run killed at each of ``moments`` (in an order drawn from ``seed``), then let finish;
    checked after every start (see the test). Returns (moment, step before, step after) per start."""
    root.mkdir(parents=True, exist_ok=True)
    data = root / "rooms"
    write_rooms(data, 24, size=20)
    run = root / "run"
    steps, every = 100, 7
    rng = random.Random(seed)
    moments = list(moments)
    rng.shuffle(moments)
    moments = ["step", *moments]  # the first kill most likely finds the run folder but no checkpoint
    log = open(root / "train.log", "w")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    seen = []  # (moment, the step the run pointed at before, the step it points at after)
    for moment in [*moments, "finish"]:
        latest = _latest_step(run)
        offset = (run / "metrics.jsonl").stat().st_size if (run / "metrics.jsonl").is_file() else 0
        process = subprocess.Popen(_train_command(data, run, steps, every), stdout=log, stderr=subprocess.STDOUT, env=env)
        if moment == "finish":
            assert process.wait() == 0, (root / "train.log").read_text()[-2000:]
        else:
            _kill_at(process, moment, run, offset, every, rng)
        records = _new_records(run, offset)
        if records:  # it got as far as a step: it started where the run pointed, or from scratch
            assert records[0]["step"] == latest + 1, (moment, latest, records[0])
        # One loader at a time: a model being built may patch torch.nn globally (empty weights).
        with checking:
            visible = _visible_checkpoints(run) if run.is_dir() else []
            for checkpoint in visible:
                pipe = bedgen.load(str(checkpoint))  # loads, and samples
                assert len(pipe.generate(1, seed=0, steps=2)) == 1, checkpoint
        if (run / "bedgen-run.json").is_file():
            json.loads((run / "bedgen-run.json").read_text())  # never half-written
        now = _latest_step(run)
        assert now >= latest, (moment, latest, now)  # never moves back
        if now:
            assert latest_in_run(run) in visible  # the run points at a checkpoint that loads
        seen.append((moment, latest, now))
    with checking:
        assert _steps_of(bedgen.load(str(run)).info.path) == steps
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert max(r["step"] for r in records) == steps
    return seen


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Kills land in start-up, in a step (also after bedgen-run.json is written but before the
    first checkpoint) and in checkpoint writes. After each: every visible checkpoint loads and
    samples, the run points at one of them and never moves back, and the next start resumes
    from exactly the step it points at (from scratch when there is none). The last start
    finishes at exactly max_steps. Each series of KILL_SERIES is its own run."""
    checking = threading.Lock()
    with ThreadPoolExecutor(len(KILL_SERIES)) as pool:
        futures = {name: pool.submit(_kill_and_resume, tmp_path / name, seed, moments, checking)
                   for name, (seed, moments) in sorted(KILL_SERIES.items())}
        for name, future in futures.items():
            print(name, future.result())  # re-raises a series' failed assertion


def test_a_kill_while_pruning_never_leaves_a_broken_checkpoint(tmp_path, monkeypatch):
    """Old checkpoints are removed after a new one is in place; a kill half-way through that
    deletion must not leave a visible checkpoint with files missing."""
    import shutil

    data = tmp_path / "rooms"
    write_rooms(data, 8, size=20)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--checkpoint-every", "1",
            "--keep-checkpoints", "1", *TINY]
    assert main([*args, "--max-steps", "1"]) == 0

    rmtree = shutil.rmtree

    def killed_half_way(path, *args, **kwargs):  # deleting a checkpoint: the weights go, then the process "dies"
        if not ("step-" in Path(path).name and Path(path).is_dir()):
            return rmtree(path, *args, **kwargs)
        for weights in Path(path).rglob("*.safetensors"):
            weights.unlink()
        raise Killed("killed while deleting an old checkpoint")

    monkeypatch.setattr(shutil, "rmtree", killed_half_way)
    with pytest.raises(Killed):
        main([*args, "--max-steps", "2", "--resume"])
    monkeypatch.undo()
    for checkpoint in _visible_checkpoints(run):
        assert len(bedgen.load(str(checkpoint)).generate(1, seed=0, steps=2)) == 1, checkpoint
    assert main([*args, "--max-steps", "3", "--resume"]) == 0  # the next run tidies up
    assert [c.name for c in _visible_checkpoints(run)] == ["step-000003"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000003"]


def test_a_kill_before_the_first_checkpoint_resumes_from_scratch(tmp_path, monkeypatch):
    """Killed after bedgen-run.json is written but before any checkpoint: --resume starts over."""
    from bedgen.training.trainer import Trainer

    data = tmp_path / "rooms"
    write_rooms(data, 8, size=20)
    run = tmp_path / "run"
    args = ["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--checkpoint-every", "2",
            "--max-steps", "2", "--resume", *TINY]

    def killed(*_, **__):
        raise Killed("killed while writing the first checkpoint")

    monkeypatch.setattr(Trainer, "save", killed)
    with pytest.raises(Killed):
        main(args)
    monkeypatch.undo()
    assert (run / "bedgen-run.json").is_file() and not _visible_checkpoints(run)
    assert main(args) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert [r["step"] for r in records] == [1, 2, 1, 2]  # the second start began at step 1
    assert _steps_of(latest_in_run(run)) == 2


@pytest.fixture
def tiny_disk(tmp_path):
    """A 3 MB tmpfs: a real filesystem that really fills up."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root with CAP_SYS_ADMIN: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(disk: Path, leave: int) -> Path:
    """Fill the disk, then give back ``leave`` bytes: room for the run's status and log
    lines, not for a checkpoint."""
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(b"\0" * 4096)
        except OSError:
            pass
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(tiny_disk, tmp_path, capsys):
    data = tmp_path / "rooms"
    write_rooms(data, 16, size=20)
    run = tiny_disk / "run"
    args = ["train", "--data", str(data), "--preset", "tiny", "--out", str(run), "--checkpoint-every", "2", *TINY]
    assert main([*args, "--max-steps", "2"]) == 0
    first = bedgen.load(str(run))
    assert _steps_of(first.info.path) == 2
    filler = _fill(tiny_disk, leave=48 * 1024)
    capsys.readouterr()
    assert main([*args, "--max-steps", "4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "could not write checkpoint step-000004" in err and "disk is full" in err
    assert "checkpoints/step-000002 is kept and loadable" in err and "--resume" in err
    kept = bedgen.load(str(run))  # the run still stands for its last good checkpoint
    assert _steps_of(kept.info.path) == 2 and len(kept.generate(1, seed=0, steps=2)) == 1
    assert not list((run / "checkpoints").glob(".step-*"))  # no half-written copy left behind
    filler.unlink()
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    assert _steps_of(bedgen.load(str(run)).info.path) == 4


def test_download_cut_half_way_never_leaves_a_broken_cache(tmp_path, monkeypatch):
    isolate_hf_hub(monkeypatch, tmp_path / "hf-home")
    checkpoint = make_tiny_checkpoint(tmp_path / "tiny")
    local = bedgen.load(str(checkpoint)).generate(1, seed=3, steps=3, dtype="fp32")[0].tobytes()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        hub.add_repo("bedgen-test/tiny", checkpoint)
        hub.cut_downloads(1)
        try:
            first = bedgen.load("bedgen-test/tiny")  # retried (resumed) by the download
        except bedgen.BedgenError as e:
            assert "bedgen-test/tiny" in str(e)  # or reported, naming the model
            first = None
        cuts = [r for r in hub.requests if r[0] == "GET" and "/resolve/" in r[1]]
        assert cuts, "the model was downloaded"
        second = bedgen.load("bedgen-test/tiny")  # the next start finds a sound cache
        for pipe in [p for p in (first, second) if p is not None]:
            assert pipe.generate(1, seed=3, steps=3, dtype="fp32")[0].tobytes() == local
