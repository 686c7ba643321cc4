"""Faults: training killed at random moments, a full disk during a save, a download cut half-way."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import bedgen
from bedgen.cli import main
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


def test_sigkill_at_ten_random_moments_then_resume(tmp_path):
    """Each kill may land in start-up, a step, or a checkpoint write; every checkpoint left
    behind must load, and the resumed run must end at exactly max_steps."""
    data = tmp_path / "rooms"
    write_rooms(data, 24, size=20)
    run = tmp_path / "run"
    steps, every = 400, 7
    rng = random.Random(1234)
    log = open(tmp_path / "train.log", "w")
    reached = []
    for kill in range(10):
        process = subprocess.Popen(_train_command(data, run, steps, every), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        time.sleep(rng.uniform(3.0, 9.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        for checkpoint in _visible_checkpoints(run):
            pipe = bedgen.load(str(checkpoint))  # loads, and samples
            assert len(pipe.generate(1, seed=0, steps=2)) == 1, checkpoint
        if (run / "bedgen-run.json").is_file():
            json.loads((run / "bedgen-run.json").read_text())  # never half-written
            reached.append(_steps_of(bedgen.load(str(run)).info.path))
    assert reached and reached == sorted(reached), reached  # resumes never go backwards
    finished = subprocess.run(_train_command(data, run, steps, every), stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert finished.returncode == 0, (tmp_path / "train.log").read_text()[-2000:]
    final = bedgen.load(str(run))
    assert _steps_of(final.info.path) == steps
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert max(r["step"] for r in records) == steps


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
