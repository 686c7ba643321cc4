"""bench/cuda_check.py, the GPU check run whenever a CUDA machine is lent: its smoke mode
runs every section's code path on the CPU, so the script cannot rot between such runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "cuda_check.py"
SECTIONS = ("train-16", "train-32", "sample-eager", "sample-compiled", "fid", "neighbours-build",
            "neighbours-search", "distill")
FIGURE = re.compile(r"^\[(?P<section>[\w-]+)\] .+: (?P<value>[0-9.e+-]+) (?P<unit>images/s|s/eval|ms/query) "
                    r"\((?P<dtype>[\w/]+)\) on (?P<device>.+)$")


def run_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_smoke_run_prints_a_positive_figure_for_every_section():
    run = run_script("--device", "cpu", "--smoke")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    figures = {}
    for line in run.stdout.splitlines():
        match = FIGURE.match(line.split("; ")[0])
        if match:
            figures[match["section"]] = match
    assert set(figures) == set(SECTIONS), run.stdout
    for match in figures.values():
        assert float(match["value"]) > 0, match.string
        assert match["device"].startswith("CPU"), match["device"]
    assert figures["train-16"]["dtype"] == figures["distill"]["dtype"] == "bf16"  # accelerate's, as on the GPU
    lines = run.stdout.splitlines()
    table = lines[lines.index("| section | what | figure | dtype | note |"):]
    assert [row.split(" | ")[0].lstrip("| ") for row in table[2:]] == list(SECTIONS)


def test_without_a_cuda_device_it_says_how_to_check_the_script():
    run = run_script(env={"CUDA_VISIBLE_DEVICES": ""})
    assert run.returncode == 2, run.stderr
    assert run.stdout == "no CUDA device: run with --device cpu --smoke to check the script\n"
