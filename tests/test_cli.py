"""The bedgen command line, run as a user would (separate processes)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import run_together


def bedgen(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "bedgen", *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def bedgen_together(*arg_lists, env=None):
    """Several ``bedgen`` processes started at once (each its own interpreter, as two users' runs)."""
    return run_together(*([sys.executable, "-m", "bedgen", *args] for args in arg_lists),
                        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


def bedgen_in_process(capsys, *args):
    """Run the CLI in this process (fast); returns (exit code, stdout, stderr)."""
    from bedgen.cli.main import main

    try:
        code = main(list(args))
    except SystemExit as e:  # argparse exits on its own errors
        code = e.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_sample_writes_images_grid_and_summary(tiny_checkpoint, tmp_path):
    out = tmp_path / "s"
    run = bedgen("sample", "--model", str(tiny_checkpoint), "--num-images", "3", "--steps", "3",
                 "--scheduler", "ddim", "--seed", "5", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png", "000002.png", "grid.png", "samples.json"]
    assert Image.open(out / "000000.png").size == (16, 16)
    assert Image.open(out / "grid.png").size == (2 * 18 + 2, 2 * 18 + 2)
    summary = json.loads((out / "samples.json").read_text())
    assert summary["seeds"] == [5, 7] and summary["sampler"] == "ddim" and summary["steps"] == 3
    assert "wrote 3 images" in run.stdout


def test_two_fp32_runs_give_identical_png_bytes(tiny_checkpoint, tmp_path):
    args = ["sample", "--model", str(tiny_checkpoint), "-n", "3", "--steps", "4", "--scheduler", "ddpm",
            "--seed", "11", "--dtype", "fp32"]
    runs = bedgen_together([*args, "--out", str(tmp_path / "a")], [*args, "--out", str(tmp_path / "b")])
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    for name in ("000000.png", "000001.png", "000002.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_batch_size_1_and_4_agree_within_one_level(tiny_checkpoint, tmp_path):
    args = ["sample", "--model", str(tiny_checkpoint), "-n", "4", "--steps", "4", "--seed", "2", "--dtype", "fp32"]
    runs = bedgen_together([*args, "--batch-size", "1", "--out", str(tmp_path / "b1")],
                           [*args, "--batch-size", "4", "--out", str(tmp_path / "b4")])
    assert [run.returncode for run in runs] == [0, 0], [run.stderr for run in runs]
    for i in range(4):
        a = np.asarray(Image.open(tmp_path / "b1" / f"{i:06d}.png"), dtype=np.int16)
        b = np.asarray(Image.open(tmp_path / "b4" / f"{i:06d}.png"), dtype=np.int16)
        assert np.abs(a - b).max() <= 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--steps", "0"], "--steps: must be at least 1"),
        (["--steps", "-4"], "--steps: must be at least 1"),
        (["--steps", "101"], "steps must be between 1 and 100 (the model's training steps)"),
        (["--scheduler", "plms"], "unknown scheduler 'plms'"),
        (["--num-images", "-1"], "--num-images/-n: must be at least 1"),
        (["--num-images", "0"], "--num-images/-n: must be at least 1"),
        (["--num-images", "1000000000"], "--num-images must be at most 100000"),
        (["--seed", "abc"], "--seed: must be a whole number"),
        (["--dtype", "fp8"], "invalid choice: 'fp8'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(capsys, tiny_checkpoint, tmp_path, extra, message):
    code, _, err = bedgen_in_process(capsys, "sample", "--model", str(tiny_checkpoint), "--out", str(tmp_path / "x"), *extra)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], err


@pytest.mark.parametrize(
    "model, message",
    [
        ("not a model", "neither a local directory nor a Hub id"),
        ("org/unreachable-model", "'org/unreachable-model' is not in the local cache and offline mode is on"),
        ("org/unreachable-model", "to work offline, train one in the Train tab or put a checkpoint folder in "
                                  "checkpoints/ (bedgen train --data DIR"),
    ],
)
def test_unknown_or_unreachable_model_exit_2(capsys, monkeypatch, tmp_path, model, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, _, err = bedgen_in_process(capsys, "sample", "--model", model, "--out", str(tmp_path / "x"))
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("bedgen: error: ")
    assert message in err


def test_unwritable_output_folder(capsys, tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    code, _, err = bedgen_in_process(capsys, "sample", "--model", str(tiny_checkpoint), "--out", str(blocker / "sub"))
    assert code == 2 and "cannot write to output folder" in err


def test_models_lists_local_checkpoints_then_curated_hub_models(capsys, tiny_checkpoint):
    code, out, err = bedgen_in_process(capsys, "models", "--root", str(tiny_checkpoint.parent), "--json")
    assert code == 0, err
    entries = [json.loads(line) for line in out.splitlines()]
    assert entries[0] == {"ref": str(tiny_checkpoint), "source": "local", "description": "ddpm · preset tiny · 16 px"}
    hub = [e["ref"] for e in entries if e["source"] == "hub"]
    assert hub[0] == "google/ddpm-ema-bedroom-256"
    assert "openai/diffusers-cd_bedroom256_lpips" in hub


def test_console_script_is_installed():
    import shutil

    if shutil.which("bedgen") is None:
        pytest.skip("the package is not pip-installed in this environment (tests/run.sh installs it)")
    run = subprocess.run(["bedgen", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("bedgen ")


def test_a_failed_index_removes_the_folder_it_created_and_keeps_one_that_existed(capsys, tmp_path):
    from synthetic import write_rooms

    (tmp_path / "no-images").mkdir()
    write_rooms(tmp_path / "rooms", 2, size=24)
    cases = [  # fails reading the data; fails loading the LPIPS backbone, after the data opened
        ["--data", str(tmp_path / "no-images")],
        ["--data", str(tmp_path / "rooms"), "--lpips-weights", str(tmp_path / "missing.safetensors")],
    ]
    for i, args in enumerate(cases):
        created = tmp_path / f"new-{i}" / "index"
        code, _, err = bedgen_in_process(capsys, "index", *args, "--out", str(created), "--resolution", "16")
        assert code == 2 and "error" in err, err
        assert not created.parent.exists()  # nor the parent it made for it
        existing = tmp_path / f"kept-{i}"
        existing.mkdir()
        code, _, err = bedgen_in_process(capsys, "index", *args, "--out", str(existing), "--resolution", "16")
        assert code == 2 and existing.is_dir(), err


def test_folders_the_tools_write_into_are_ignored_by_git():
    from pathlib import Path

    ignored = (Path(__file__).resolve().parent.parent / ".gitignore").read_text().split()
    for folder in ("/data/", "/references/", "/indexes/", "/runs/", "/samples/"):
        assert folder in ignored, folder


@pytest.mark.parametrize("assignment, message", [
    ("train.lr=abc", "'train.lr' expects a number, got 'abc'"),
    ("train.batch_size=2.5", "'train.batch_size' expects a whole number, got 2.5"),
    ("train.batch_sise=4", "unknown config field 'train.batch_sise' (did you mean 'train.batch_size'?)"),
    ("train.lr", "--set expects FIELD=VALUE, got 'train.lr'"),
])
def test_set_values_are_checked_against_the_field_type(capsys, tmp_path, assignment, message):
    """--set, sweep files and the app share one typed override: a wrong type is one clear line, no traceback."""
    folder = tmp_path / "images"
    folder.mkdir()
    code, _, err = bedgen_in_process(capsys, "train", "--data", str(folder), "--out", str(tmp_path / "run"),
                                     "--set", assignment)
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_set_converts_json_values_to_the_field_type():
    from bedgen.config.overrides import override, parse_assignment
    from bedgen.config.schema import preset

    changes = dict(parse_assignment(a) for a in ["train.lr=1e-4", "train.batch_size=8", "unet.block_out_channels=[32, 64, 96]"])
    config = override(preset("tiny"), changes)
    assert config.train.lr == 1e-4 and isinstance(config.train.lr, float)
    assert config.train.batch_size == 8
    assert config.unet.block_out_channels == (32, 64, 96)


def test_help_of_every_command_loads_no_sampler_or_app_libraries():
    """``bedgen X --help`` and argument errors answer in about a second: building the parser
    reads defaults and choices from light modules, never from torch, the sampler (diffusers) or
    the app (gradio)."""
    probe = (
        "import sys, contextlib, io\n"
        "from bedgen.cli.main import build_parser, main\n"
        "commands = sorted(build_parser()._subparsers._group_actions[0].choices)\n"
        "for name in ['', *commands]:\n"
        "    with contextlib.redirect_stdout(io.StringIO()):\n"
        "        try:\n"
        "            main([name, '--help'] if name else ['--help'])\n"
        "        except SystemExit:\n"
        "            pass\n"
        "heavy = sorted(m for m in ('torch', 'diffusers', 'gradio', 'transformers') if m in sys.modules)\n"
        "print(len(commands), heavy)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    count, heavy = run.stdout.split(" ", 1)
    assert int(count) >= 15  # every subcommand was asked for its help
    assert heavy.strip() == "[]", f"--help imported {heavy.strip()}"


def test_interpolate_flags_default_to_the_library_defaults():
    """``bedgen interpolate`` without flags does what ``bedgen.interpolate()`` does without
    arguments: both read their defaults from config/, written once."""
    import inspect

    from bedgen.cli.main import build_parser
    from bedgen.sampling.interpolate import interpolate

    args = build_parser().parse_args(["interpolate", "--model", "m", "--image-a", "a.png", "--image-b", "b.png", "--out", "o"])
    library = inspect.signature(interpolate).parameters
    for name in ("t", "frames", "method", "steps"):
        assert getattr(args, name) == library[name].default, name
