"""A training run folder: the file names the trainer writes and the one way to read them.

Layout (written by bedgen.training.trainer)::

    RUN/bedgen-run.json          status, latest checkpoint, step, config (the Train tab polls it)
    RUN/metrics.jsonl            one JSON record a line: loss, lr, ... and FID records
    RUN/previews/step-XXXXXX.png preview grids with fixed seeds (latest.png = newest)
    RUN/checkpoints/step-XXXXXX/ checkpoints; bedgen-run.json's "latest" names the newest
    RUN/best-fid/                the EMA weights with the lowest FID so far
    RUN/finetune-report.json     bedgen finetune's before/after report

Readers run while the trainer writes: a metrics line being appended (or cut by a crash) is
skipped, and a missing or unreadable file reads as empty.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import ModelNotFoundError
from ..core.files import read_json_object, write_json
from ..core.hub import inside

RUN_JSON = "bedgen-run.json"
METRICS_JSONL = "metrics.jsonl"
CHECKPOINTS_DIR = "checkpoints"
PREVIEWS_DIR = "previews"
LATEST_PREVIEW = "latest.png"
BEST_FID_DIR = "best-fid"
FINETUNE_REPORT_JSON = "finetune-report.json"


class RunFolder:
    """The run folder at ``path`` (it need not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.state_file = self.path / RUN_JSON
        self.metrics_file = self.path / METRICS_JSONL
        self.checkpoints = self.path / CHECKPOINTS_DIR
        self.previews = self.path / PREVIEWS_DIR

    def is_run(self) -> bool:
        """Whether the trainer has started here (it writes bedgen-run.json first)."""
        return self.state_file.is_file()

    def state(self) -> dict[str, Any]:
        """bedgen-run.json, or {} when there is none (or it cannot be read)."""
        return read_json_object(self.state_file)

    def update_state(self, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into bedgen-run.json, written atomically: a reader never sees half a file."""
        state = {**self.state(), **changes}
        write_json(self.state_file, state)
        return state

    def metrics(self) -> list[dict[str, Any]]:
        """Every whole record of metrics.jsonl, in order; [] when there is none."""
        return read_jsonl(self.metrics_file)

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint bedgen-run.json names as latest, or None before the first one.

        Raises ModelNotFoundError when it names a folder outside the run: a run from the Hub
        must not point at a folder on this machine.
        """
        latest = self.state().get("latest")
        if not latest or not (self.path / latest).is_dir():
            return None
        if not inside(self.path / latest, self.path):
            raise ModelNotFoundError(f"training run '{self.path.name}' names a latest checkpoint outside its folder")
        return self.path / latest

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"step-{step:06d}"

    def preview_path(self, step: int) -> Path:
        return self.previews / f"step-{step:06d}.png"

    def latest_preview(self) -> Path | None:
        """The newest preview grid, once there is one."""
        path = self.previews / LATEST_PREVIEW
        return path if path.is_file() else None

    def finetune_report(self) -> dict[str, Any]:
        """finetune-report.json, or {} until the fine-tune run has written it."""
        return read_json_object(self.path / FINETUNE_REPORT_JSON)


def latest_in_run(path: Path) -> Path:
    """A training run folder stands for its latest checkpoint; anything else for itself."""
    run = RunFolder(path)
    if not run.is_run():
        return path
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        raise ModelNotFoundError(f"training run '{path}' has no checkpoint yet; wait for the first one")
    return checkpoint


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file. A line that does not parse (the one being appended
    right now, or one cut by a crash) and lines that are not objects are skipped."""
    try:
        text = path.read_text()
    except OSError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def metric_curve(records: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """The finite (step, value) points of ``key``, by step. A resumed run logs some steps
    twice; the later record (the one that continued) wins."""
    points: dict[int, float] = {}
    for record in records:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and "step" in record:
            points[int(record["step"])] = float(value)
    return sorted(points.items())


__all__ = [
    "BEST_FID_DIR", "CHECKPOINTS_DIR", "FINETUNE_REPORT_JSON", "LATEST_PREVIEW", "METRICS_JSONL", "PREVIEWS_DIR",
    "RUN_JSON", "RunFolder", "latest_in_run", "metric_curve", "read_jsonl",
]
