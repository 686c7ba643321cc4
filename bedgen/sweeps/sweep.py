"""Hyperparameter sweeps: one YAML file -> many ``bedgen train`` runs -> one table and plots.

Sweep folder::

    SWEEP/sweep.yaml       the YAML file as given (provenance)
    SWEEP/sweep.json       the plan: every run's folder, varied values, repeat and seed
    SWEEP/sweep.log        JSON lines: launch / done / skip events, so a re-run is auditable
    SWEEP/runs/NAME/       one ``bedgen train`` run folder per configuration x repeat,
                           plus sweep-run.json (exit code, error, wall time) and train.log
    SWEEP/results.csv      one row per run
    SWEEP/results.md       one row per configuration, best first
    SWEEP/*.png            loss / FID curves and final-metric plots

Every run is a separate process: a crash, a NaN or an out-of-memory error in one run
cannot end the sweep, and per-GPU placement is just ``CUDA_VISIBLE_DEVICES``. Run folder
names are derived from the configuration (readable values + a short hash of the whole
config), so re-running a sweep finds its runs again: finished and diverged runs are kept,
interrupted or failed ones are resumed from their latest checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Sequence

from ..storage.run_folder import RunFolder, metric_curve
from ..core.files import read_json_object, write_json
from ..config.overrides import all_fields, coerce, field_hint, override, suggest
from ..config.schema import PRESETS, BedgenConfig, preset
from ..core.checks import whole_number
from ..core.errors import BedgenError

Mode = Literal["grid", "one-at-a-time"]
MODES: tuple[str, ...] = typing.get_args(Mode)
Status = Literal["finished", "diverged", "failed", "incomplete", "pending"]
# Diverged runs would diverge again (same seed, same config), so only these are final.
FINAL_STATUSES = ("finished", "diverged")
DIVERGED_EXIT_CODE = 3  # what `bedgen train` returns on TrainingDiverged

SPEC_KEYS = ("name", "description", "base", "data", "mode", "grid", "vary", "repeats", "seeds",
             "steps", "epochs", "fid", "group_by")
SWEEP_JSON, SWEEP_LOG, RUN_META, TRAIN_LOG, RUN_CONFIG = (
    "sweep.json", "sweep.log", "sweep-run.json", "train.log", "sweep-config.json")
NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,79}$")
# Short folder-name keys for long field names (the full names are in sweep.json and the CSV).
ABBREVIATIONS = {"num_train_timesteps": "T", "batch_size": "bs", "optimizer": "opt",
                 "block_out_channels": "ch", "layers_per_block": "lpb", "max_steps": "steps"}

ProgressFn = Callable[[int, int], None]
LogFn = Callable[[str], None]


# --- the YAML file ----------------------------------------------------------------------


@dataclass
class SweepSpec:
    """A parsed, validated sweep file.

    ``groups`` are the varied fields: in grid mode one group whose fields are crossed; in
    one-at-a-time mode one group per varied field (or per set of fields varied together),
    each group varied alone while everything else keeps its base value.
    """

    name: str
    mode: Mode
    base_preset: str
    base: dict[str, Any]  # dotted config field -> value, applied to every run
    groups: list[dict[str, list[Any]]]
    seeds: tuple[int, ...]  # one per repeat
    group_by: str | None = None
    description: str = ""
    text: str = ""  # the YAML as written, copied into the sweep folder
    origin: str = "sweep file"  # where it came from, for error messages

    @property
    def repeats(self) -> int:
        return len(self.seeds)

    @property
    def fields(self) -> list[str]:
        """Every varied field, in the order the file names them."""
        return list(dict.fromkeys(name for group in self.groups for name in group))

    def data_source(self) -> str:
        return str(self.base.get("data.source", ""))


class _Lines:
    """Line numbers of the keys of a YAML document, so errors can point at them."""

    def __init__(self, node: Any):
        self.lines: dict[tuple, int] = {}
        self._walk(node, ())

    def _walk(self, node: Any, path: tuple) -> None:
        import yaml

        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                self.lines[path + (key.value,)] = key.start_mark.line + 1
                self._walk(value, path + (key.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self._walk(item, path + (i,))

    def at(self, *path: Any) -> str:
        line = self.lines.get(tuple(path))
        return f", line {line}" if line else ""


def load_sweep(path: str | Path, data: str | None = None) -> SweepSpec:
    """Read and validate a sweep file; ``data`` replaces its data source."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise BedgenError(f"sweep file '{path}' does not exist") from None
    return parse_sweep(text, default_name=path.stem, where=str(path), data=data)


def parse_sweep(text: str, default_name: str = "sweep", where: str = "sweep file",
                data: str | None = None) -> SweepSpec:
    import yaml

    try:
        lines = _Lines(yaml.compose(text, Loader=yaml.SafeLoader))
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise BedgenError(f"{where}: YAML syntax error{at}: {problem}") from None
    if not isinstance(raw, dict):
        raise BedgenError(f"{where}: a sweep file is a YAML mapping (name:, base:, grid: or vary:, repeats: ...)")
    return _Parser(raw, lines, where).spec(default_name, text, data)


class _Parser:
    """Turns the YAML mapping into a SweepSpec, with an error naming the key and line."""

    def __init__(self, raw: dict[str, Any], lines: _Lines, where: str):
        self.raw, self.lines, self.where = raw, lines, where

    def fail(self, message: str, *path: Any) -> typing.NoReturn:
        raise BedgenError(f"{self.where}{self.lines.at(*path)}: {message}")

    def spec(self, default_name: str, text: str, data: str | None) -> SweepSpec:
        unknown = [k for k in self.raw if k not in SPEC_KEYS]
        if unknown:
            self.fail(f"unknown key '{unknown[0]}'{suggest(str(unknown[0]), SPEC_KEYS)}; "
                      f"a sweep file has {', '.join(SPEC_KEYS)}", unknown[0])
        name = self._name(default_name)
        base_preset, base = self._base()
        base.update(self._data(data))
        base.update(self._length())
        base.update(self._fid())
        mode = self._mode()
        groups = self._grid() if mode == "grid" else self._vary()
        seeds = self._seeds(base_preset, base)
        spec = SweepSpec(name, mode, base_preset, base, groups, seeds, self._group_by(groups),
                         str(self.raw.get("description") or ""), text, self.where)
        _check_base(spec, self)
        return spec

    def _name(self, default: str) -> str:
        name = str(self.raw.get("name", default))
        if not NAME.match(name):
            self.fail(f"name '{name}': 1-80 letters, digits, '.', '_' or '-' (it names the sweep folder)", "name")
        return name

    def _base(self) -> tuple[str, dict[str, Any]]:
        raw = self.raw.get("base") or {}
        if not isinstance(raw, dict):
            self.fail("base: must be a mapping of config fields, e.g. 'train.lr: 1.0e-4'", "base")
        flat = _flatten(raw)
        name, _ = flat.pop("preset", ("tiny", ()))
        self._check_preset(name, "base", "preset")
        values = {}
        for dotted, (value, path) in flat.items():
            values[dotted] = self.value(dotted, value, "base", *path)
        return name, values

    def _check_preset(self, name: Any, *path: Any) -> None:
        if name not in PRESETS:
            choices = ", ".join(PRESETS)
            self.fail(f"unknown preset {name!r}{suggest(str(name), PRESETS)}; choose one of {choices}", *path)

    def _data(self, override_source: str | None) -> dict[str, Any]:
        raw = self.raw.get("data")
        values: dict[str, Any] = {}
        if isinstance(raw, dict):
            for key, (value, path) in _flatten(raw).items():
                values[f"data.{key}"] = self.value(f"data.{key}", value, "data", *path)
        elif raw is not None:
            values["data.source"] = self.value("data.source", raw, "data")
        if override_source is not None:
            values["data.source"] = override_source
        return values

    def _length(self) -> dict[str, Any]:
        if "steps" in self.raw and "epochs" in self.raw:
            self.fail("give either steps: or epochs: (the training length), not both", "epochs")
        if "steps" in self.raw:
            return {"train.max_steps": self._positive("steps"), "train.epochs": None}
        if "epochs" in self.raw:
            return {"train.epochs": self._positive("epochs"), "train.max_steps": None}
        return {}

    def _positive(self, key: str) -> int:
        try:
            return whole_number(f"{key}:", self.raw[key], 1)
        except BedgenError as e:
            self.fail(str(e), key)

    def _fid(self) -> dict[str, Any]:
        """``fid: {every, samples, ref, ...}`` -> the trainer's train.fid_* fields."""
        raw = self.raw.get("fid")
        if raw is None:
            return {}
        if not isinstance(raw, dict) or not raw:
            self.fail("fid: must be a mapping such as {every: 1000, samples: 1000, ref: stats.npz}", "fid")
        values = {}
        for key, value in raw.items():
            # every -> train.fid_every ...; a key that is already a train field (inception_weights) as is
            dotted = next((d for d in (f"train.fid_{key}", f"train.{key}") if field_hint(d) is not None), None)
            if dotted is None:
                self.fail(f"fid: {key}: the trainer has no field train.fid_{key} "
                          "(in-training FID takes every, samples, ref, batch_size, inception_weights)", "fid", key)
            values[dotted] = self.value(dotted, value, "fid", key)
        return values

    def _mode(self) -> Mode:
        mode = self.raw.get("mode")
        if mode is None:
            mode = "one-at-a-time" if "vary" in self.raw and "grid" not in self.raw else "grid"
        if mode not in MODES:
            self.fail(f"unknown mode {mode!r}; choose {' or '.join(MODES)}", "mode")
        other = "vary" if mode == "grid" else "grid"
        if other in self.raw:
            self.fail(f"mode {mode} takes {'grid' if mode == 'grid' else 'vary'}:, not {other}:", other)
        return mode

    def _grid(self) -> list[dict[str, list[Any]]]:
        raw = self.raw.get("grid")
        if not isinstance(raw, dict) or not raw:
            self.fail("grid: needs at least one field with a list of values, e.g. 'train.lr: [1.0e-3, 1.0e-4]'",
                      "grid")
        return [self._axis(raw, "grid")]

    def _vary(self) -> list[dict[str, list[Any]]]:
        raw = self.raw.get("vary")
        if isinstance(raw, dict) and raw:
            # mapping form: every field is varied alone
            return [self._axis({name: values}, "vary") for name, values in raw.items()]
        if isinstance(raw, list) and raw:
            # list form: the fields of one item are varied together (their product), items alone
            groups = []
            for i, item in enumerate(raw):
                if not isinstance(item, dict) or not item:
                    self.fail("every item of vary: is a mapping of field: [values]", "vary", i)
                groups.append(self._axis(item, "vary", i))
            return groups
        self.fail("vary: needs fields with lists of values, e.g. 'train.batch_size: [32, 64, 128]'", "vary")

    def _axis(self, raw: dict[str, Any], *path: Any) -> dict[str, list[Any]]:
        axis = {}
        for name, values in raw.items():
            at = (*path, name)
            if not isinstance(values, list):
                self.fail(f"'{name}' must list its values, e.g. [{values!r}]; "
                          "a single fixed value belongs in base:", *at)
            if not values:
                self.fail(f"'{name}' has no values", *at)
            if name == "preset":
                for i, value in enumerate(values):
                    self._check_preset(value, *at, i)
                axis[name] = list(values)
            else:
                axis[name] = [self.value(name, v, *at, i) for i, v in enumerate(values)]
            if len({json.dumps(v, sort_keys=True) for v in axis[name]}) != len(values):
                self.fail(f"'{name}' lists a value twice", *at)
        return axis

    def _seeds(self, base_preset: str, base: dict[str, Any]) -> tuple[int, ...]:
        repeats = self._positive("repeats") if self.raw.get("repeats") is not None else None
        seeds = self.raw.get("seeds")
        if seeds is None:
            first = base.get("train.seed", PRESETS[base_preset].train.seed)
            return tuple(first + r for r in range(repeats or 1))
        if not isinstance(seeds, list) or not seeds or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            self.fail("seeds: must be a list of whole numbers >= 0, one per repeat", "seeds")
        if len(set(seeds)) != len(seeds):
            self.fail("seeds: lists a seed twice; repeats need different seeds", "seeds")
        if repeats is not None and repeats != len(seeds):
            self.fail(f"repeats: {repeats} but {len(seeds)} seeds listed", "seeds")
        return tuple(seeds)

    def _group_by(self, groups: list[dict[str, list[Any]]]) -> str | None:
        group_by = self.raw.get("group_by")
        varied = [name for group in groups for name in group]
        if group_by is not None and group_by not in varied:
            self.fail(f"group_by: '{group_by}' is not a varied field; choose one of {', '.join(varied)}", "group_by")
        return group_by

    def value(self, dotted: str, value: Any, *path: Any) -> Any:
        """Check a value against the config field's type (and convert YAML's '1e-4' strings)."""
        if dotted == "preset":
            self._check_preset(value, *path)
            return value
        hint = field_hint(dotted)
        if hint is None:
            self.fail(f"unknown config field '{dotted}'{suggest(dotted, all_fields())}", *path)
        try:
            return coerce(value, hint)
        except TypeError as e:
            self.fail(f"'{dotted}' {e}", *path)


def _flatten(raw: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[str, tuple[Any, tuple]]:
    """{"train": {"lr": x}} and {"train.lr": x} both -> {"train.lr": (x, yaml path)}."""
    flat = {}
    for key, value in raw.items():
        path = prefix + (key,)
        if isinstance(value, dict):
            flat.update(_flatten(value, path))
        else:
            flat[".".join(str(p) for p in path)] = (value, path)
    return flat


def _check_base(spec: SweepSpec, parser: _Parser) -> None:
    """Build the base configuration once, so an invalid combination is reported up front
    (a grid over presets never trains the base preset itself; plan() checks each of its)."""
    if spec.mode == "grid" and "preset" in spec.fields:
        return
    try:
        _configure(spec, {}, spec.seeds[0])
    except BedgenError as e:
        parser.fail(str(e).removeprefix(f"{spec.origin}: "), "base")


# --- the plan ---------------------------------------------------------------------------


@dataclass
class RunSpec:
    """One training run of the plan: a configuration (its varied values) and a repeat."""

    name: str  # folder under SWEEP/runs/
    label: dict[str, Any]  # varied field -> value
    repeat: int
    seed: int
    config: BedgenConfig
    panels: tuple[str, ...] = ()  # one-at-a-time: the groups whose plots show this configuration

    @property
    def configuration(self) -> str:
        return describe_label(self.label)


def describe_label(label: dict[str, Any]) -> str:
    return ", ".join(f"{_short(name)}={format_value(v)}" for name, v in label.items())


def plan(spec: SweepSpec) -> list[RunSpec]:
    """Every run, repeat-major: all configurations once before any is repeated, so a sweep
    stopped halfway already covers the whole grid."""
    configurations = _configurations(spec)
    runs = []
    for repeat, seed in enumerate(spec.seeds):
        for label, panels in configurations:
            config = _configure(spec, label, seed)
            name = _run_name(label, repeat, run_hash(spec, label, seed))
            runs.append(RunSpec(name, _json_ready(label), repeat, seed, config, panels))
    return runs


def _configurations(spec: SweepSpec) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """(label, panels) of each distinct configuration, in the order of the file."""
    if spec.mode == "grid":
        (axis,) = spec.groups
        return [(dict(zip(axis, values)), ()) for values in itertools.product(*axis.values())]
    base_config = _configure(spec, {}, spec.seeds[0])
    base = {name: _get(base_config, name, spec.base_preset) for name in spec.fields}
    titles = [" + ".join(group) for group in spec.groups]
    found: dict[str, tuple[dict[str, Any], list[str]]] = {_key(base): (base, list(titles))}
    for title, group in zip(titles, spec.groups):
        for values in itertools.product(*group.values()):
            label = {**base, **dict(zip(group, values))}
            found.setdefault(_key(label), (label, []))[1].append(title)
    return [(label, tuple(dict.fromkeys(panels))) for label, panels in found.values()]


def _key(label: dict[str, Any]) -> str:
    return json.dumps(_json_ready(label), sort_keys=True)


def _get(config: BedgenConfig, dotted: str, preset_name: str) -> Any:
    if dotted == "preset":
        return config.preset or preset_name
    target: Any = config
    for part in dotted.split("."):
        target = getattr(target, part)
    return target


def _configure(spec: SweepSpec, label: dict[str, Any], seed: int) -> BedgenConfig:
    """preset (varied or base) + base fields + varied fields + the repeat's seed."""
    name, changes = _changes(spec, label, seed)
    try:
        config = override(preset(name), changes)
    except BedgenError as e:
        raise BedgenError(f"{spec.origin}: configuration {describe_label(label) or 'base'}: {e}") from None
    return config


def _changes(spec: SweepSpec, label: dict[str, Any], seed: int) -> tuple[str, dict[str, Any]]:
    name = label.get("preset", spec.base_preset)
    changes = _with_length_rule({**spec.base}, {k: v for k, v in label.items() if k != "preset"})
    changes["train.seed"] = seed
    return name, changes


def run_hash(spec: SweepSpec, label: dict[str, Any], seed: int) -> str:
    """Six hex digits of what the sweep asks for (preset, overrides, seed) without the data
    path: a moved dataset, or a new config field with a default, keeps the run's identity."""
    name, changes = _changes(spec, label, seed)
    changes.pop("data.source", None)
    text = json.dumps({"preset": name, "changes": _json_ready(changes)}, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:6]


def _with_length_rule(changes: dict[str, Any], varied: dict[str, Any]) -> dict[str, Any]:
    """Training length is steps XOR epochs: a varied one replaces the other (as the CLI does)."""
    changes.update(varied)
    if varied.get("train.epochs") is not None and "train.max_steps" not in varied:
        changes["train.max_steps"] = None
    if varied.get("train.max_steps") is not None and "train.epochs" not in varied:
        changes["train.epochs"] = None
    return changes


def _run_name(label: dict[str, Any], repeat: int, digest: str) -> str:
    readable = "-".join(f"{_short(k)}={format_value(v)}" for k, v in label.items())
    readable = re.sub(r"[^A-Za-z0-9._=+-]", "", readable)[:90].rstrip("-") or "base"
    return f"{readable}-r{repeat}-{digest}"


def _short(dotted: str) -> str:
    leaf = dotted.split(".")[-1]
    return ABBREVIATIONS.get(leaf, leaf)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    return value


def check_data(spec: SweepSpec) -> None:
    """Fail before any run starts when the data source does not exist, rather than once per run."""
    from ..core.hub import parse_hub_ref

    source = spec.data_source().strip()
    if not source:
        raise BedgenError(f"sweep '{spec.name}' has no data source: add 'data: FOLDER' to the file or pass --data")
    if Path(source).expanduser().exists():
        return
    missing = (f"data source '{source}' does not exist; give an image folder, an LSUN LMDB directory, "
               "prepared shards or a Hugging Face dataset id org/name (--data)")
    hub = parse_hub_ref(source)
    if hub is None or source.startswith((".", "/", "~")) or not _hub_dataset_may_exist(hub.repo_id):
        raise BedgenError(missing)


def _hub_dataset_may_exist(repo_id: str) -> bool:
    """'data/lsun-96' reads as a Hub id too: ask the Hub; offline or unreachable, let the runs try."""
    from ..core.hub import hub_endpoint, hub_offline

    if hub_offline():
        return True
    from huggingface_hub import HfApi
    from huggingface_hub.utils import RepositoryNotFoundError

    try:
        HfApi(endpoint=hub_endpoint()).dataset_info(repo_id, timeout=10)
    except RepositoryNotFoundError:
        return False
    except Exception:  # no network, proxy, rate limit: not a verdict on the id
        return True
    return True


# --- running ------------------------------------------------------------------------------


@dataclass
class SweepOutcome:
    """What one ``run_sweep`` call did."""

    launched: list[str] = field(default_factory=list)  # run names started (fresh or resumed)
    skipped: list[str] = field(default_factory=list)  # already finished or diverged
    statuses: dict[str, str] = field(default_factory=dict)  # run name -> status afterwards
    interrupted: bool = False


def default_out(spec: SweepSpec) -> Path:
    """``$BEDGEN_CHECKPOINTS/sweeps/NAME``: run folders are models, so they live with the checkpoints."""
    from ..storage.registry import checkpoints_dir

    return checkpoints_dir() / "sweeps" / spec.name


def run_sweep(spec: SweepSpec, out: str | Path, gpus: Sequence[str] | None = None, parallel: int = 1,
              progress: ProgressFn | None = None, log: LogFn | None = None,
              python: str = sys.executable) -> SweepOutcome:
    """Train every run of the plan that has not finished or diverged yet (``write_report(out)``
    then makes the table and plots).

    ``gpus``: one worker per entry, each with CUDA_VISIBLE_DEVICES set to it (repeat an id to
    put two runs on one GPU). Otherwise ``parallel`` workers share the machine. ``progress``
    gets (runs done, runs planned); ``log`` one line per finished run.
    """
    out = Path(out)
    runs = plan(spec)
    envs = _worker_envs(gpus, parallel)
    check_data(spec)
    write_plan(spec, runs, out)
    with _only_sweep_in(out):
        return _Launcher(out, python, envs, log or (lambda _: None)).run(runs, progress)


@contextlib.contextmanager
def _only_sweep_in(out: Path) -> Iterator[None]:
    """Two sweeps in one folder would train the same incomplete run twice at once."""
    import fcntl

    with open(out / ".sweep.lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BedgenError(f"another 'bedgen sweep' is running in '{out}'; wait for it or stop it first") from None
        yield


def _worker_envs(gpus: Sequence[str] | None, parallel: int) -> list[dict[str, str]]:
    if gpus:
        return [{"CUDA_VISIBLE_DEVICES": str(g).strip()} for g in gpus]
    if parallel < 1:
        raise BedgenError(f"--parallel must be at least 1, got {parallel}")
    if parallel == 1:
        return [{}]
    # Several CPU runs at once: split the cores, or the processes' thread pools fight.
    threads = str(max(1, (os.cpu_count() or 1) // parallel))
    return [{"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", threads)} for _ in range(parallel)]


def write_plan(spec: SweepSpec, runs: list[RunSpec], out: Path) -> None:
    try:
        (out / "runs").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BedgenError(f"cannot write to sweep folder '{out}': {e.strerror or e}") from e
    if spec.text:
        (out / "sweep.yaml").write_text(spec.text)
    write_json(out / SWEEP_JSON, {
        "name": spec.name, "description": spec.description, "mode": spec.mode, "fields": spec.fields,
        "groups": [" + ".join(g) for g in spec.groups], "group_by": spec.group_by,
        "base_preset": spec.base_preset, "base": _json_ready(spec.base), "seeds": list(spec.seeds),
        "runs": [{"name": r.name, "label": r.label, "repeat": r.repeat, "seed": r.seed, "panels": list(r.panels)}
                 for r in runs],
    })


class _Launcher:
    """Runs ``bedgen train`` subprocesses from a queue, one per worker slot."""

    def __init__(self, out: Path, python: str, envs: list[dict[str, str]], log: LogFn):
        self.out, self.python, self.log = out, python, log
        self.slots: queue.Queue[dict[str, str]] = queue.Queue()
        for env in envs:
            self.slots.put(env)
        self.workers = len(envs)
        self.stopping = threading.Event()
        self.live: set[subprocess.Popen] = set()
        self.lock = threading.Lock()

    def run(self, runs: list[RunSpec], progress: ProgressFn | None) -> SweepOutcome:
        from concurrent.futures import ThreadPoolExecutor, as_completed

        outcome = SweepOutcome()
        todo = []
        for run in runs:
            status = run_status(self.out / "runs" / run.name)
            if status in FINAL_STATUSES:
                outcome.skipped.append(run.name)
                outcome.statuses[run.name] = status
                self.event("skip", run, status=status)
            else:
                todo.append(run)
        done = len(outcome.skipped)
        if progress:
            progress(done, len(runs))
        with ThreadPoolExecutor(self.workers) as pool:
            futures = {pool.submit(self.train, run): run for run in todo}
            try:
                for _ in as_completed(futures):
                    done += 1
                    if progress:
                        progress(done, len(runs))
            except KeyboardInterrupt:
                outcome.interrupted = True
                self.stop()
        # after the pool has shut down every started run has ended (stopped runs checkpoint first)
        for future, run in futures.items():
            status = future.result() if future.done() and not future.cancelled() else None
            if status is not None:
                outcome.launched.append(run.name)
                outcome.statuses[run.name] = status
        return outcome

    def stop(self) -> None:
        """Start nothing new; ask running trainers to checkpoint and exit (they resume later)."""
        self.stopping.set()
        with self.lock:
            for process in self.live:
                if process.poll() is None:
                    process.send_signal(signal.SIGINT)

    def train(self, run: RunSpec) -> str | None:
        env = self.slots.get()
        try:
            if self.stopping.is_set():
                return None
            return self._train(run, env)
        finally:
            self.slots.put(env)

    def _train(self, run: RunSpec, env: dict[str, str]) -> str:
        run_dir = self.out / "runs" / run.name
        resume = _has_checkpoint(run_dir)
        if not resume:
            _clear_partial_run(run_dir)
        command = self._command(run, run_dir, resume)
        meta = _start_attempt(run_dir, run, command)
        self.event("launch", run, resume=resume, command=command, env=env)
        started = time.monotonic()
        with open(run_dir / TRAIN_LOG, "a") as output:
            process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
            with self.lock:
                self.live.add(process)
            code = process.wait()
            with self.lock:
                self.live.discard(process)
        _end_attempt(run_dir, meta, code, time.monotonic() - started)
        status = run_status(run_dir)
        result = read_run(run_dir, run.label, run.repeat, run.seed)
        self.event("done", run, status=status, exit_code=code, seconds=round(time.monotonic() - started, 2))
        self.log(_one_line_summary(run, result))
        return status

    def _command(self, run: RunSpec, run_dir: Path, resume: bool) -> list[str]:
        config = copy.deepcopy(run.config)
        source = Path(config.data.source).expanduser()
        if source.exists():  # absolute, so the run folder records where its data was
            config.data.source = str(source.resolve())
        write_json(run_dir / RUN_CONFIG, config.to_dict())
        command = [self.python, "-m", "bedgen", "train", "--config", str(run_dir / RUN_CONFIG), "--out", str(run_dir)]
        return command + (["--resume"] if resume else [])

    def event(self, kind: str, run: RunSpec, **details: Any) -> None:
        record = {"event": kind, "run": run.name, "time": time.time(), **details}
        with self.lock, open(self.out / SWEEP_LOG, "a") as handle:
            handle.write(json.dumps(record) + "\n")


def _has_checkpoint(run_dir: Path) -> bool:
    return RunFolder(run_dir).latest_checkpoint() is not None


def _clear_partial_run(run_dir: Path) -> None:
    """A run killed before its first checkpoint starts again; its old log lines would
    otherwise mix into the new curve."""
    run = RunFolder(run_dir)
    for file in (run.metrics_file, run.state_file):
        file.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def _start_attempt(run_dir: Path, run: RunSpec, command: list[str]) -> dict[str, Any]:
    meta = read_json_object(run_dir / RUN_META)
    meta.update(label=run.label, repeat=run.repeat, seed=run.seed, configuration=run.configuration,
                command=command, exit_code=None, error="", attempts=meta.get("attempts", 0) + 1)
    meta.setdefault("wall_seconds", 0.0)
    write_json(run_dir / RUN_META, meta)
    return meta


def _end_attempt(run_dir: Path, meta: dict[str, Any], code: int, seconds: float) -> None:
    meta["exit_code"] = code
    meta["wall_seconds"] = round(meta["wall_seconds"] + seconds, 3)
    meta["error"] = "" if code == 0 else _error_line(run_dir / TRAIN_LOG, code)
    write_json(run_dir / RUN_META, meta)


def _error_line(log: Path, code: int) -> str:
    """The line that says what went wrong: bedgen's own message or the exception's last line."""
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    text = log.read_text(errors="replace").replace("\r", "\n") if log.is_file() else ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("bedgen:") or re.match(r"^[\w.]+(Error|Exception|Interrupt)\b", line):
            return line
    return lines[-1] if lines else f"exit code {code}"


def _one_line_summary(run: RunSpec, result: "RunResult") -> str:
    parts = [f"{run.configuration or 'base'} r{run.repeat}: {result.status}"]
    if result.final_fid is not None:
        parts.append(f"FID {result.final_fid:.2f}")
    if result.final_loss is not None:
        parts.append(f"loss {result.final_loss:.4f}")
    if result.error and result.status != "finished":
        parts.append(result.error)
    return ", ".join(parts)


# --- reading results ------------------------------------------------------------------------


@dataclass
class RunResult:
    """One run as it stands on disk."""

    name: str
    path: Path
    label: dict[str, Any]
    repeat: int
    seed: int
    status: Status
    final_loss: float | None = None  # the last logged training loss (mean over log_every steps)
    final_fid: float | None = None  # the last FID record
    best_fid: float | None = None
    steps: int = 0
    max_steps: int | None = None
    wall_seconds: float | None = None
    error: str = ""
    loss_curve: list[tuple[int, float]] = field(default_factory=list)
    fid_curve: list[tuple[int, float]] = field(default_factory=list)
    panels: tuple[str, ...] = ()

    @property
    def configuration(self) -> str:
        return describe_label(self.label)


def run_status(run_dir: Path) -> Status:
    """finished / diverged from the trainer's bedgen-run.json; failed from the exit code the
    sweep recorded; incomplete when started but not done (running, stopped or killed)."""
    trainer = RunFolder(run_dir).state().get("status")
    if trainer in FINAL_STATUSES:
        return trainer
    meta = read_json_object(run_dir / RUN_META)
    code = meta.get("exit_code")
    if code == DIVERGED_EXIT_CODE:
        return "diverged"
    if code not in (None, 0):
        return "failed"
    return "incomplete" if meta.get("attempts") or trainer else "pending"


def read_run(run_dir: Path, label: dict[str, Any], repeat: int, seed: int,
             panels: Sequence[str] = ()) -> RunResult:
    run = RunFolder(run_dir)
    trainer = run.state()
    meta = read_json_object(run_dir / RUN_META)
    records = run.metrics()
    losses, fids = metric_curve(records, "loss"), metric_curve(records, "fid")
    status = run_status(run_dir)
    error = meta.get("error") or ""
    if status in ("diverged", "incomplete") and not error:
        error = trainer.get("message", "")
    return RunResult(
        name=run_dir.name, path=run_dir, label=label, repeat=repeat, seed=seed, status=status,
        final_loss=losses[-1][1] if losses else None,
        final_fid=fids[-1][1] if fids else None,
        best_fid=min(v for _, v in fids) if fids else None,
        steps=int(trainer.get("step", losses[-1][0] if losses else 0)),
        max_steps=trainer.get("max_steps"), wall_seconds=meta.get("wall_seconds"), error=error,
        loss_curve=losses, fid_curve=fids, panels=tuple(panels),
    )


def read_plan(out: str | Path) -> dict[str, Any]:
    """The sweep.json a sweep folder was last run (or reported) with."""
    out = Path(out)
    data = read_json_object(out / SWEEP_JSON)
    if not data.get("runs"):
        raise BedgenError(f"'{out}' is not a sweep folder (no {SWEEP_JSON}); run 'bedgen sweep --config FILE' first")
    return data


def collect(out: str | Path) -> list[RunResult]:
    """Every planned run of the sweep folder, in plan order, read from disk."""
    out = Path(out)
    return [read_run(out / "runs" / r["name"], r["label"], r["repeat"], r["seed"], r.get("panels", ()))
            for r in read_plan(out)["runs"]]


@dataclass
class Report:
    csv: Path
    markdown: Path
    plots: list[Path]


# --- finding sweeps (the app) -----------------------------------------------------------


@dataclass
class SweepInfo:
    path: Path
    name: str
    results_md: Path | None
    results_csv: Path | None
    plots: list[Path]


def find_sweeps(root: str | Path, depth: int = 3) -> list[SweepInfo]:
    """Sweep folders (holding sweep.json) under ``root``, newest first; run folders are not searched."""
    found: list[Path] = []

    def walk(folder: Path, level: int) -> None:
        if (folder / SWEEP_JSON).is_file():
            found.append(folder)
            return
        if level >= depth:
            return
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            return
        for child in children:
            walk(child, level + 1)

    root = Path(root)
    if root.is_dir():
        walk(root, 0)
    found.sort(key=lambda p: (p / SWEEP_JSON).stat().st_mtime, reverse=True)
    return [_sweep_info(p) for p in found]


def _sweep_info(folder: Path) -> SweepInfo:
    name = read_json_object(folder / SWEEP_JSON).get("name", folder.name)
    md, csv = folder / "results.md", folder / "results.csv"
    return SweepInfo(folder, name, md if md.is_file() else None, csv if csv.is_file() else None,
                     sorted(folder.glob("*.png")))
