"""Sweeps: YAML -> plan -> `bedgen train` subprocesses -> CSV, Markdown table and plots."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from bedgen.cli.main import main
from bedgen.core.errors import BedgenError
from bedgen.sweeps.report import write_report
from bedgen.sweeps.sweep import collect, find_sweeps, load_sweep, parse_sweep, plan, run_sweep

from synthetic import write_rooms

REPO = Path(__file__).resolve().parent.parent

# The conftest tiny UNet (8, 16 channels, 16 px), 6 steps of batch 4, a checkpoint at 3 and 6.
TINY_BASE = {
    "preset": "tiny",
    "resolution": 16,
    "unet": {"block_out_channels": [8, 16], "down_block_types": ["DownBlock2D", "AttnDownBlock2D"],
             "up_block_types": ["AttnUpBlock2D", "UpBlock2D"], "norm_num_groups": 4},
    "diffusion.num_train_timesteps": 100,
    "train.batch_size": 4, "train.warmup_steps": 0, "train.checkpoint_every": 3, "train.preview_every": 0,
    "train.preview_images": 0, "train.log_every": 1, "train.mixed_precision": "no",
}


def write_sweep(path: Path, data: Path, **spec) -> Path:
    document = {"name": path.stem, "base": {**TINY_BASE, **spec.pop("base", {})}, "data": str(data), "steps": 6}
    document.update(spec)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def last_loss(run: Path) -> float:
    by_step = {m["step"]: m["loss"] for m in metrics(run) if "loss" in m}
    return by_step[max(by_step)]


def launches(out: Path) -> list[dict]:
    events = [json.loads(line) for line in (out / "sweep.log").read_text().splitlines()]
    return [e for e in events if e["event"] == "launch"]


def table(markdown: str) -> list[dict[str, str]]:
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]


def assert_real_png(path: Path) -> None:
    image = Image.open(path)
    image.load()
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert image.size[0] >= 400 and image.size[1] >= 150, image.size
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # lines, text, colours


@pytest.fixture(scope="module")
def rooms(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("rooms")
    write_rooms(folder, 16, size=16)
    return folder


@pytest.fixture(scope="module")
def fid_settings(tmp_path_factory, rooms) -> dict:
    """In-training FID on 4 samples against the rooms' statistics, with random Inception
    weights written here (64-d features: cheap and full-rank enough for a tiny test)."""
    from bedgen.evaluation.metrics import compute_reference_stats

    from conftest import save_random_inception

    root = tmp_path_factory.mktemp("fid")
    weights = save_random_inception(root / "inception-random.pth")
    stats = compute_reference_stats(str(rooms), 16, inception_weights=weights, feature_layer="64", batch_size=8)
    return {"every": 3, "samples": 4, "batch_size": 4, "ref": str(stats.save(root / "rooms-64.npz")),
            "inception_weights": str(weights)}


@pytest.fixture(scope="module")
def grid(rooms, fid_settings, tmp_path_factory):
    """A 2 optimizers x 1 learning rate x 2 repeats sweep of tiny runs with FID at steps 3
    and 6, trained once (two runs at a time)."""
    root = tmp_path_factory.mktemp("sweeps")
    spec = load_sweep(write_sweep(root / "grid.yaml", rooms, base={"sampling.steps": 3}, fid=fid_settings,
                                  grid={"train.optimizer": ["adamw", "sgd"], "train.lr": [3e-3]}, repeats=2))
    out = root / "sweeps" / "grid"
    outcome = run_sweep(spec, out, parallel=2)
    return spec, out, outcome


def fids(run: Path) -> list[float]:
    return [m["fid"] for m in sorted((m for m in metrics(run) if "fid" in m), key=lambda m: m["step"])]


@pytest.mark.slow
def test_grid_sweep_writes_csv_table_and_plots(grid):
    spec, out, outcome = grid
    assert len(outcome.launched) == 4 and not outcome.skipped and len(launches(out)) == 4
    report = write_report(out)

    rows = list(csv.DictReader(report.csv.open()))
    assert len(rows) == 4
    assert {(r["train.optimizer"], r["train.lr"], r["seed"]) for r in rows} == {
        (o, "0.003", s) for o in ("adamw", "sgd") for s in ("0", "1")}
    for row in rows:
        run = Path(row["run"])
        assert row["status"] == "finished" and row["steps"] == "6" and row["error"] == ""
        assert float(row["final_loss"]) == last_loss(run)
        assert len(fids(run)) == 2  # steps 3 and 6
        assert float(row["final_fid"]) == fids(run)[-1] and float(row["best_fid"]) == min(fids(run))
        assert float(row["wall_seconds"]) > 0 and run.parent == out / "runs"

    configurations = table(report.markdown.read_text())
    assert len(configurations) == 2
    assert [float(c["FID mean"]) for c in configurations] == sorted(float(c["FID mean"]) for c in configurations)
    for c in configurations:
        runs = [Path(r["run"]) for r in rows if (r["train.optimizer"], r["train.lr"]) == (c["optimizer"], c["lr"])]
        assert len(runs) == 2 and c["finished"] == "2" and c["diverged"] == "0"
        finals_by_metric = {"FID": [fids(r)[-1] for r in runs], "loss": [last_loss(r) for r in runs]}
        for (metric, finals), digits in zip(finals_by_metric.items(), (2, 4)):
            expected = (statistics.fmean(finals), statistics.stdev(finals), min(finals), max(finals))
            assert [c[f"{metric} {k}"] for k in ("mean", "std", "min", "max")] == [f"{v:.{digits}f}" for v in expected]

    names = sorted(p.name for p in report.plots)
    assert names == ["fid_curves.png", "final_fid.png", "final_loss.png", "loss_curves.png"]
    for path in report.plots:
        assert_real_png(path)


@pytest.mark.slow
def test_rerun_skips_finished_runs(grid):
    spec, out, _ = grid
    before = {p.name: (p / "metrics.jsonl").stat().st_mtime_ns for p in (out / "runs").iterdir()}
    outcome = run_sweep(spec, out, parallel=2)
    assert outcome.launched == [] and len(outcome.skipped) == 4
    assert len(launches(out)) == 4  # nothing new was started
    assert {p.name: (p / "metrics.jsonl").stat().st_mtime_ns for p in (out / "runs").iterdir()} == before


@pytest.mark.slow
def test_interrupted_run_resumes_from_its_checkpoint(grid):
    """A run killed after its step-3 checkpoint continues from it and ends on the same curve."""
    spec, out, _ = grid
    victim = out / "runs" / plan(spec)[0].name
    curve = {m["step"]: m["loss"] for m in metrics(victim) if "loss" in m}
    status = json.loads((victim / "bedgen-run.json").read_text())
    status.update(status="running", step=3, latest="checkpoints/step-000003")
    (victim / "bedgen-run.json").write_text(json.dumps(status))
    (victim / "checkpoints" / "step-000006").rename(victim / "killed-step-6")
    meta = json.loads((victim / "sweep-run.json").read_text())
    (victim / "sweep-run.json").write_text(json.dumps({**meta, "exit_code": None}))

    outcome = run_sweep(spec, out)
    assert outcome.launched == [victim.name] and len(outcome.skipped) == 3
    assert "--resume" in launches(out)[-1]["command"]
    result = next(r for r in collect(out) if r.name == victim.name)
    assert result.status == "finished" and result.steps == 6
    assert dict(result.loss_curve) == pytest.approx(curve, abs=1e-5)  # exact resume; re-logged steps count once
    assert json.loads((victim / "sweep-run.json").read_text())["attempts"] == 2


@pytest.mark.slow
def test_cli_dry_run_report_only_and_find_sweeps(grid, capsys):
    spec, out, _ = grid
    config = out / "sweep.yaml"
    assert main(["sweep", "--config", str(config), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith("skip (finished)") for line in lines) == 4
    assert lines[-1].startswith("4 runs (2 configurations x 2 repeats)")

    for name in ("results.md", "results.csv", "loss_curves.png"):
        (out / name).unlink(missing_ok=True)
    assert main(["sweep", "--report-only", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| n | optimizer | lr | FID mean |" in printed and (out / "loss_curves.png").is_file()
    assert len(launches(out)) == 5  # the resume above; report-only trains nothing

    (found,) = find_sweeps(out.parent.parent)
    assert found.path == out and found.name == "grid" and found.results_md == out / "results.md"
    assert {p.name for p in found.plots} == {"fid_curves.png", "final_fid.png", "final_loss.png", "loss_curves.png"}


@pytest.mark.slow
def test_diverged_and_failed_runs_are_recorded_not_dropped(rooms, tmp_path, capsys):
    """One at a time around plain SGD: lr 1e12 without clipping really gives NaN; a negative
    num_workers makes the DataLoader raise inside the trainer (a crash, exit code 1)."""
    path = write_sweep(tmp_path / "unstable.yaml", rooms, base={
        "train.optimizer": "sgd", "train.momentum": 0.0, "train.grad_clip": 0.0, "train.nan_policy": "stop"},
        mode="one-at-a-time", vary=[{"train.lr": [1e12]}, {"train.num_workers": [-1]}])
    out = tmp_path / "out"
    assert main(["sweep", "--config", str(path), "--out", str(out), "--parallel", "2"]) == 0
    rows = {(float(r["train.lr"]), int(r["train.num_workers"])): r
            for r in csv.DictReader((out / "results.csv").open())}
    assert set(rows) == {(1e-3, 0), (1e12, 0), (1e-3, -1)}
    assert rows[(1e-3, 0)]["status"] == "finished"
    diverged, failed = rows[(1e12, 0)], rows[(1e-3, -1)]
    assert diverged["status"] == "diverged" and "non-finite" in diverged["error"]
    assert json.loads((Path(diverged["run"]) / "bedgen-run.json").read_text())["status"] == "diverged"
    assert failed["status"] == "failed" and failed["error"].startswith("ValueError: num_workers")

    configurations = table((out / "results.md").read_text())
    assert [(c["lr"], c["num_workers"]) for c in configurations][0] == ("0.001", "0")  # finished first
    by_values = {(c["lr"], c["num_workers"]): c for c in configurations}
    assert by_values[("1e+12", "0")]["diverged"] == "1" and by_values[("1e+12", "0")]["loss mean"] == "–"
    assert by_values[("0.001", "-1")]["failed"] == "1" and by_values[("0.001", "0")]["finished"] == "1"
    markdown = (out / "results.md").read_text()
    assert "**Diverged runs**" in markdown and "**Failed runs**" in markdown
    capsys.readouterr()

    # a re-run keeps finished and diverged runs, retries the failed one
    assert main(["sweep", "--config", str(path), "--out", str(out), "--dry-run"]) == 0
    actions = {line.split(maxsplit=1)[0] for line in capsys.readouterr().out.splitlines()[:-1]}
    assert actions == {"skip", "retry"}


def test_gpus_get_one_worker_each(rooms, tmp_path):
    """--gpus 0,1: two workers, each run sees only its worker's GPU. A stand-in interpreter
    records what it was given (and trains nothing, so its runs stay incomplete)."""
    placed = tmp_path / "placed"
    fake = tmp_path / "fake-python"
    fake.write_text(f'#!/bin/sh\necho "$CUDA_VISIBLE_DEVICES $*" >> {placed}\nsleep 0.3\n')
    fake.chmod(0o755)
    spec = load_sweep(write_sweep(tmp_path / "gpus.yaml", rooms, grid={"train.lr": [1e-3, 2e-3, 3e-3, 4e-3]}))
    outcome = run_sweep(spec, tmp_path / "out", gpus=["0", "1"], python=str(fake))
    lines = placed.read_text().splitlines()
    assert sorted(line.split()[0] for line in lines) == ["0", "0", "1", "1"]
    assert all(" -m bedgen train --config " in line and "--resume" not in line for line in lines)
    assert {e["env"]["CUDA_VISIBLE_DEVICES"] for e in launches(tmp_path / "out")} == {"0", "1"}
    assert set(outcome.statuses.values()) == {"incomplete"}  # exit code 0 is not "finished"


def test_one_at_a_time_plans_each_group_alone_around_the_base():
    spec = parse_sweep(yaml.safe_dump({
        "base": {"preset": "ddpm-3level", "train.batch_size": 32, "train.optimizer": "adam", "train.lr": 1e-4},
        "data": "somewhere", "mode": "one-at-a-time", "repeats": 2, "seeds": [7, 9],
        "vary": [{"train.batch_size": [32, 64]},
                 {"train.optimizer": ["adam", "sgd"], "train.lr": [1e-4, 1e-3]}],
    }, sort_keys=False))
    runs = plan(spec)
    labels = [(r.label["train.batch_size"], r.label["train.optimizer"], r.label["train.lr"]) for r in runs]
    expected = [(32, "adam", 1e-4), (64, "adam", 1e-4), (32, "adam", 1e-3), (32, "sgd", 1e-4), (32, "sgd", 1e-3)]
    assert labels == expected * 2  # the base once, repeat-major
    assert [r.seed for r in runs] == [7] * 5 + [9] * 5 and [r.repeat for r in runs] == [0] * 5 + [1] * 5
    for run, (batch, optimizer, lr) in zip(runs, labels):
        t = run.config.train
        assert (t.batch_size, t.optimizer, t.lr, t.seed) == (batch, optimizer, lr, run.seed)
        assert run.config.unet.block_out_channels == (64, 128, 256)
    assert runs[0].panels == ("train.batch_size", "train.optimizer + train.lr")
    assert len({r.name for r in runs}) == 10


def test_shipped_sweeps_parse_and_plan():
    from bedgen.config.schema import PRESETS

    grid = plan(load_sweep(REPO / "train" / "sweeps" / "ddpm-lr-opt-size.yaml"))
    assert len(grid) == 3 * 2 * 3 * 5
    assert {r.label["train.lr"] for r in grid} == {1e-3, 1e-4, 1e-5}
    assert {r.label["train.optimizer"] for r in grid} == {"adamw", "sgd"}
    assert {r.seed for r in grid} == {0, 1, 2, 3, 4}
    for run in grid:  # the preset of the grid, not the base's, decides the UNet
        name = run.label["preset"]
        assert run.config.preset == name and run.config.unet == PRESETS[name].unet
        assert run.config.resolution == 96 and run.config.train.batch_size == 16
        assert run.config.train.epochs == 35 and run.config.train.max_steps is None
        assert run.config.train.fid_every > 0 and run.config.train.fid_ref
    assert len({r.name for r in grid}) == 90

    oat = plan(load_sweep(REPO / "train" / "sweeps" / "ddpm-oat-64.yaml"))
    assert len(oat) == (1 + 2 + 8 + 3 + 2) * 5
    assert {r.config.resolution for r in oat} == {64}
    assert {r.config.diffusion.num_train_timesteps for r in oat} == {100, 200, 500, 1000}
    assert {(r.config.train.optimizer, r.config.train.lr) for r in oat} >= {("adadelta", 1e-2), ("sgd", 1e-4)}

    assert len(plan(load_sweep(REPO / "train" / "sweeps" / "tiny-cpu.yaml"))) == 8


@pytest.mark.parametrize(
    "text, message",
    [
        ("grid:\n  train.lrr: [1, 2]\n", "line 2: unknown config field 'train.lrr' (did you mean 'train.lr'?)"),
        ("grid:\n  train.batch_size: [32, big]\n", "line 2: 'train.batch_size' expects a whole number, got 'big'"),
        ("grid:\n  train.optimizer: [adamw, lion]\n", "must be one of adamw, adam, sgd, adadelta, got 'lion'"),
        ("base:\n  train.lr: fast\ngrid:\n  train.seed: [1]\n", "line 2: 'train.lr' expects a number, got 'fast'"),
        ("grid: {}\n", "grid: needs at least one field"),
        ("grid:\n  train.lr: []\n", "line 2: 'train.lr' has no values"),
        ("grid:\n  train.lr: 0.1\n", "'train.lr' must list its values"),
        ("repeats: 0\ngrid:\n  train.lr: [0.1]\n", "line 1: repeats: must be at least 1, got 0"),
        ("mode: random\ngrid:\n  train.lr: [0.1]\n", "unknown mode 'random'; choose grid or one-at-a-time"),
        ("grid:\n  train.lr: [0.1\nrepeats: 2\n", "YAML syntax error at line 3"),
        ("grid:\n  preset: [tiny, huge]\n", "unknown preset 'huge'"),
        ("seeds: [1, 2]\nrepeats: 3\ngrid:\n  train.lr: [0.1]\n", "repeats: 3 but 2 seeds listed"),
        ("grids:\n  train.lr: [0.1]\n", "unknown key 'grids' (did you mean 'grid'?)"),
        ("group_by: train.lr\ngrid:\n  train.batch_size: [8]\n", "group_by: 'train.lr' is not a varied field"),
    ],
)
def test_bad_sweep_files_are_refused_with_the_line(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(BedgenError) as error:
        load_sweep(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_missing_data_stops_before_any_run(tmp_path, capsys):
    path = write_sweep(tmp_path / "nodata.yaml", tmp_path / "no-such-folder", grid={"train.lr": [1e-3]})
    with pytest.raises(BedgenError, match="data source '.*no-such-folder' does not exist"):
        run_sweep(load_sweep(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["sweep", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_one_sweep_per_folder_at_a_time(rooms, tmp_path):
    import fcntl

    spec = load_sweep(write_sweep(tmp_path / "busy.yaml", rooms, grid={"train.lr": [1e-3]}))
    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".sweep.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BedgenError, match="another 'bedgen sweep' is running in"):
            run_sweep(spec, tmp_path / "out")
