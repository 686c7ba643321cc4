"""bench/quality_speed.py, the quality-vs-speed table: its --quick mode runs every step (draw rooms,
train a teacher, distil a student, reference statistics, every row) on a tiny scale.

The three quick runs share one --out folder, as a user re-running the bench does: the first run
trains the teacher and the later ones reuse it (the bench's own "reusing the teacher" path)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "quality_speed.py"
TEACHER_ROWS = [("teacher", sampler, nfe) for sampler in ("ddim", "dpmsolver++", "unipc") for nfe in (1, 2, 20)]
STUDENT_SAMPLER = {"consistency": "consistency", "progressive": "ddim"}
LABEL = "FID on random-Inception features (real weights unavailable): comparable within this table only"


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("quick-bench")


def quick_run(script: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, str(script), "--quick", *extra, "--out", str(out)],
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    trained = run.stdout.count("making the teacher")
    assert trained + run.stdout.count(f"reusing the teacher in {out / 'teacher'}") == 1, run.stdout
    assert (out / "teacher" / "bedgen-run.json").exists()
    return run


def table(stdout: str) -> dict[tuple[str, str, int], list[str]]:
    """The markdown table's rows by (model, sampler, NFE) -> [FID, KID, pixel FD, s/image]."""
    lines = stdout.splitlines()
    start = lines.index("|---|---|---|---|---|---|---|") + 1
    rows = {}
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        model, sampler, nfe, *values = [cell.strip() for cell in line.strip("|").split("|")]
        rows[(model, sampler, int(nfe))] = values
    return rows


@pytest.mark.slow
@pytest.mark.parametrize("method", list(STUDENT_SAMPLER))
def test_quick_run_prints_every_row_with_a_finite_fid_and_a_positive_time(out, method):
    run = quick_run(SCRIPT, out, "--method", method)
    rows = table(run.stdout)
    student = [(f"{method} student", STUDENT_SAMPLER[method], nfe) for nfe in (1, 2, 4)]
    assert list(rows) == TEACHER_ROWS + student, run.stdout
    for key, (fid, kid, pixel_fd, seconds) in rows.items():
        assert math.isfinite(float(fid)) and float(pixel_fd) >= 0, (key, fid, pixel_fd)
        assert float(seconds) > 0, (key, seconds)
    assert f"**{LABEL}.**" in run.stdout.splitlines()
    assert "| model | sampler | NFE | FID (random Inception) | KID | pixel FD (8x8) | s/image |" in run.stdout
    assert "student FID at 2 NFE / teacher DPM-Solver++ FID at 20 NFE" in run.stdout


@pytest.mark.slow
def test_solver_clip_quick_run_compares_both_clips_on_one_teacher(out):
    run = quick_run(SCRIPT.with_name("solver_clip.py"), out)
    rows = table(run.stdout)
    samplers = ("ddim", "dpmsolver++", "dpmsolver++ thresholding", "unipc", "unipc thresholding")
    assert list(rows) == [("teacher", sampler, 4) for sampler in samplers], run.stdout
    for key, (fid, kid, pixel_fd, seconds) in rows.items():
        assert math.isfinite(float(fid)) and float(pixel_fd) >= 0 and float(seconds) > 0, (key, fid, pixel_fd)
    # a 2-step teacher's x̂0 leaves [-1, 1], so the two clips give different images
    assert rows[("teacher", "dpmsolver++", 4)][2] != rows[("teacher", "dpmsolver++ thresholding", 4)][2]
    assert f"**{LABEL}.**" in run.stdout.splitlines()
