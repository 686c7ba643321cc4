"""bench/quality_speed.py, the quality-vs-speed table: its --quick mode runs every step (draw rooms,
train a teacher, distil a student, reference statistics, every row) on a tiny scale."""

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
def test_quick_run_prints_every_row_with_a_finite_fid_and_a_positive_time(tmp_path, method):
    run = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--method", method, "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
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
def test_solver_clip_quick_run_compares_both_clips_on_one_teacher(tmp_path):
    script = SCRIPT.with_name("solver_clip.py")
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    rows = table(run.stdout)
    samplers = ("ddim", "dpmsolver++", "dpmsolver++ thresholding", "unipc", "unipc thresholding")
    assert list(rows) == [("teacher", sampler, 4) for sampler in samplers], run.stdout
    for key, (fid, kid, pixel_fd, seconds) in rows.items():
        assert math.isfinite(float(fid)) and float(pixel_fd) >= 0 and float(seconds) > 0, (key, fid, pixel_fd)
    # a 2-step teacher's x̂0 leaves [-1, 1], so the two clips give different images
    assert rows[("teacher", "dpmsolver++", 4)][2] != rows[("teacher", "dpmsolver++ thresholding", 4)][2]
    assert f"**{LABEL}.**" in run.stdout.splitlines()
