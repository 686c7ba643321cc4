"""Reading a training run folder (bedgen.storage.run_folder) while the trainer writes it."""

from __future__ import annotations

import json
import math

import pytest

from bedgen.core.errors import ModelNotFoundError
from bedgen.storage.run_folder import RunFolder, latest_in_run, metric_curve


def _lines(*records: object) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_an_empty_folder_reads_as_a_run_not_started(tmp_path):
    run = RunFolder(tmp_path / "not-yet")
    assert not run.is_run()
    assert run.state() == {} and run.metrics() == [] and run.finetune_report() == {}
    assert run.latest_checkpoint() is None and run.latest_preview() is None
    assert latest_in_run(run.path) == run.path  # not a run: the folder stands for itself


def test_a_torn_last_metrics_line_is_skipped(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics_file.write_text(_lines({"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}) + '{"step": 3, "lo')
    assert run.metrics() == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.4}]


def test_lines_that_are_not_records_are_skipped(tmp_path):
    run = RunFolder(tmp_path)
    run.metrics_file.write_text(_lines([1, 2], "text", {"step": 1, "loss": 0.5}) + "\n")
    assert run.metrics() == [{"step": 1, "loss": 0.5}]


def test_an_unreadable_state_file_reads_as_empty(tmp_path):
    run = RunFolder(tmp_path)
    run.state_file.write_text("{not json")
    assert run.is_run() and run.state() == {}
    run.state_file.write_text("[1, 2]")
    assert run.state() == {}


def test_the_latest_checkpoint_is_the_one_the_state_names(tmp_path):
    run = RunFolder(tmp_path)
    run.update_state(status="running", step=0)
    assert run.latest_checkpoint() is None
    with pytest.raises(ModelNotFoundError, match="has no checkpoint yet"):
        latest_in_run(run.path)
    checkpoint = run.checkpoint_path(20)
    run.update_state(latest="checkpoints/step-000020")  # named before the folder exists: not yet
    assert run.latest_checkpoint() is None
    checkpoint.mkdir(parents=True)
    assert run.latest_checkpoint() == checkpoint == latest_in_run(run.path)
    assert checkpoint.name == "step-000020"
    assert run.state() == {"status": "running", "step": 0, "latest": "checkpoints/step-000020"}


def test_a_latest_checkpoint_outside_the_run_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    run.update_state(latest="../elsewhere")
    with pytest.raises(ModelNotFoundError, match="outside its folder"):
        run.latest_checkpoint()


def test_the_latest_preview_once_written(tmp_path):
    run = RunFolder(tmp_path)
    run.previews.mkdir()
    run.preview_path(5).write_bytes(b"png")
    assert run.latest_preview() is None
    (run.previews / "latest.png").write_bytes(b"png")
    assert run.latest_preview() == run.previews / "latest.png"


def test_metric_curves_keep_finite_points_and_the_later_of_a_repeated_step():
    records = [{"step": 1, "loss": 0.9}, {"step": 2, "loss": math.nan}, {"step": 2, "loss": 0.8},
               {"step": 1, "loss": 0.7}, {"loss": 0.1}, {"step": 3, "fid": 40.0}, {"step": 4, "loss": True}]
    assert metric_curve(records, "loss") == [(1, 0.7), (2, 0.8)]
    assert metric_curve(records, "fid") == [(3, 40.0)]
