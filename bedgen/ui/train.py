"""The Train tab: start, watch and stop one training run in a subprocess.

The run is a ``bedgen train`` process (it survives page reloads and keeps the
request threads free); the tab reads what the trainer writes to its run folder:
``bedgen-run.json`` (status, latest checkpoint), ``metrics.jsonl`` (loss curve)
and ``previews/latest.png``. Runs are created under the checkpoints folder, so
every checkpoint shows up in the Generate tab's model list; once a run has stopped,
its "Push to the Hub" section (:mod:`bedgen.ui.push`) publishes it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from ..config.schema import PRESETS
from ..core.checks import real_number, whole_number
from ..core.errors import BedgenError
from ..core.hub import parse_hub_ref
from ..storage.run_folder import RunFolder
from ..training.distill import DEFAULT_LR as DISTILL_LR, DEFAULT_STEPS as DISTILL_STEPS
from .components import Choice, Options, RawNumber, RawSlider
from .errors import listen
from .security import inside, local_folder
from .settings import AppSettings

if TYPE_CHECKING:
    import pandas as pd

RUN_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")
OPTIMIZERS = ["adamw", "adam", "sgd", "adadelta"]


@dataclass
class TrainRequest:
    data: str
    preset: str
    resolution: int
    max_steps: int
    batch_size: int
    lr: float
    optimizer: str
    run_name: str
    autoencoder: str | None = None  # ldm presets: the first stage's REF

    def command(self, run_dir: Path, settings: AppSettings) -> list[str]:
        command = [
            "train", "--data", self.data, "--preset", self.preset, "--resolution", str(self.resolution),
            "--out", str(run_dir), "--max-steps", str(self.max_steps), "--batch-size", str(self.batch_size),
            "--lr", repr(self.lr), "--optimizer", self.optimizer,
            "--checkpoint-every", str(max(1, min(500, self.max_steps // 4))),
            "--preview-every", str(max(1, min(500, self.max_steps // 4))),
        ]
        if self.autoencoder:
            command += ["--set", f"latent.autoencoder={json.dumps(self.autoencoder)}"]
        return command


@dataclass
class FinetuneJob:
    """The Train tab's fine-tune mode: ``bedgen finetune`` with prior preservation."""

    model: str
    instance_data: str
    prior_weight: float
    num_class_images: int
    max_steps: int
    batch_size: int
    lr: float
    run_name: str

    def command(self, run_dir: Path, settings: AppSettings) -> list[str]:
        command = [
            "finetune", "--model", self.model, "--instance-data", self.instance_data, "--out", str(run_dir),
            "--prior-weight", repr(self.prior_weight), "--num-class-images", str(self.num_class_images),
            "--steps", str(self.max_steps), "--batch-size", str(self.batch_size), "--lr", repr(self.lr),
        ]
        if settings.lpips_weights is not None:
            command += ["--lpips-weights", str(settings.lpips_weights)]
        return command


@dataclass
class DistillJob:
    """The Train tab's distil mode: ``bedgen distill``, a 1-4-step student of a teacher, by consistency
    or progressive distillation."""

    teacher: str
    data: str
    max_steps: int
    batch_size: int
    lr: float
    run_name: str
    method: str = "consistency"

    def command(self, run_dir: Path, settings: AppSettings) -> list[str]:
        every = str(max(1, min(500, self.max_steps // 4)))
        return [
            "distill", "--method", self.method, "--teacher", self.teacher, "--data", self.data, "--out", str(run_dir),
            "--max-steps", str(self.max_steps), "--batch-size", str(self.batch_size), "--lr", repr(self.lr),
            "--checkpoint-every", every, "--preview-every", every,
        ]


Job = TrainRequest | FinetuneJob | DistillJob


class TrainingJobs:
    """At most one training subprocess per app."""

    def __init__(self, settings: AppSettings):
        self.settings = settings
        self.process: subprocess.Popen | None = None
        self.run_dir: Path | None = None
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, request: Job) -> Path:
        with self._lock:
            run_dir = self.settings.checkpoints / request.run_name
            if run_dir.exists():
                raise BedgenError(f"a model named '{request.run_name}' already exists; choose another run name")
            if self.running():
                raise BedgenError(f"a run is already training ({self.run_dir.name}); stop it first")
            command = [sys.executable, "-m", "bedgen", *request.command(run_dir, self.settings)]
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            log = open(run_dir.parent / f".{request.run_name}.log", "w")
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            self.run_dir = run_dir
            return run_dir

    def stop(self) -> str:
        with self._lock:
            if not self.running():
                return "no run is training"
            # SIGTERM: the trainer finishes its step, writes a checkpoint and exits.
            self.process.send_signal(signal.SIGTERM)
            return f"stopping {self.run_dir.name}: finishing the current step and writing a checkpoint"

    def finished_run(self) -> Path:
        """The run the tab may push: its last one, once that has stopped (finished, stopped or failed)."""
        with self._lock:
            if self.run_dir is None:
                raise BedgenError("no run to push: train or fine-tune one in this tab first")
            if self.running():
                raise BedgenError(f"'{self.run_dir.name}' is still training; push it once it has finished or been stopped")
            return self.run_dir

    def log_tail(self, lines: int = 5) -> str:
        if self.run_dir is None:
            return ""
        log = self.run_dir.parent / f".{self.run_dir.name}.log"
        if not log.is_file():
            return ""
        text = log.read_text(errors="replace").replace("\r", "\n")
        return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


def check_request(settings: AppSettings, data: Any, preset: Any, resolution: Any, max_steps: Any,
                  batch_size: Any, lr: Any, optimizer: Any, run_name: Any, autoencoder: Any = "") -> TrainRequest:
    """Validate the form; paths must stay inside the configured data roots."""
    if preset not in PRESETS:
        raise BedgenError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if optimizer not in OPTIMIZERS:
        raise BedgenError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    shared = _shared_fields(run_name, lr, max_steps, batch_size)
    return TrainRequest(
        data=_check_data_source(settings, data),
        preset=preset,
        resolution=whole_number("resolution", resolution, 8, 1024),
        optimizer=optimizer,
        autoencoder=_check_autoencoder(settings, preset, autoencoder),
        **shared,
    )


def _shared_fields(run_name: Any, lr: Any, max_steps: Any, batch_size: Any) -> dict[str, Any]:
    """The fields both modes have (run name, learning rate, steps, batch size), checked the same way."""
    if not isinstance(run_name, str) or not RUN_NAME.match(run_name.strip()):
        raise BedgenError("run name: 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return dict(
        run_name=run_name.strip(),
        lr=real_number("learning rate", lr, 0.0, 1.0, low_open=True, high_open=True),
        max_steps=whole_number("steps", max_steps, 1, 10_000_000),
        batch_size=whole_number("batch size", batch_size, 1, 4096),
    )


def check_finetune_request(settings: AppSettings, model: Any, instance_data: Any, prior_weight: Any,
                           num_class_images: Any, max_steps: Any, batch_size: Any, lr: Any,
                           run_name: Any) -> FinetuneJob:
    """Validate the fine-tune form: the model under the checkpoints folder (or a Hub id), the
    instance images under the data roots."""
    shared = _shared_fields(run_name, lr, max_steps, batch_size)
    weight = real_number("prior weight", prior_weight, 0.0, 100.0)
    return FinetuneJob(
        model=_check_model_ref(settings, model, "the model to fine-tune"),
        instance_data=_check_data_source(settings, instance_data),
        prior_weight=weight,
        num_class_images=whole_number("class images", num_class_images, 0, 10_000),
        **shared,
    )


def check_distill_request(settings: AppSettings, teacher: Any, data: Any, max_steps: Any, batch_size: Any,
                          lr: Any, run_name: Any, method: str = "consistency") -> DistillJob:
    """Validate the distil form: the teacher under the checkpoints folder (or a Hub id), the images
    under the data roots. ``method`` comes from the start button (one per method), not the form."""
    return DistillJob(
        teacher=_check_model_ref(settings, teacher, "the teacher to distil"),
        data=_check_data_source(settings, data),
        **_shared_fields(run_name, lr, max_steps, batch_size),
        method=method,
    )


def _check_model_ref(settings: AppSettings, ref: Any, what: str) -> str:
    """A checkpoint inside the checkpoints folder (no traversal, no symlink escape) or a Hub id.

    Resolved once, here: the training subprocess gets the checked folder itself, never a name it
    would look up again from the app's working folder (where ``checkpoints/NAME`` may be a link).
    """
    text = ref.strip() if isinstance(ref, str) else ""
    if not text:
        raise BedgenError(f"give {what}: a checkpoint under the checkpoints folder or a Hub id")
    root = settings.checkpoints.resolve()
    local = local_folder(text, root)
    if local is not None:
        if not inside(local, root):
            raise BedgenError(f"{what} must be inside the checkpoints folder {root}")
        return str(local)
    if parse_hub_ref(text) is None:
        raise BedgenError(f"{what} '{text}' is neither a checkpoint under {root} nor a Hub id org/name")
    return text


def _check_autoencoder(settings: AppSettings, preset: str, autoencoder: Any) -> str | None:
    """ldm presets need a first stage: a checkpoint under the checkpoints folder or a Hub id."""
    text = autoencoder.strip() if isinstance(autoencoder, str) else ""
    if PRESETS[preset].family != "ldm":
        if text:
            raise BedgenError(f"an autoencoder applies to the ldm presets only, not to '{preset}'; clear the field")
        return None
    if not text:
        raise BedgenError(
            f"the {preset} preset trains on autoencoder latents: give the autoencoder (a run of the "
            "autoencoder-kl / autoencoder-vq presets under the checkpoints folder, or a Hub id)"
        )
    return _check_model_ref(settings, text, "the autoencoder")


def _check_data_source(settings: AppSettings, data: Any) -> str:
    if not isinstance(data, str) or not data.strip():
        raise BedgenError("give a data source: a folder under the data roots or a Hub dataset id")
    data = data.strip()
    neither = f"'{data}' is neither a folder under the data roots nor a Hub dataset id org/name"
    try:
        candidate = Path(data).expanduser()
        local = candidate.is_absolute() or candidate.exists()
        resolved = candidate.resolve() if local else None  # follows symlinks, so a link cannot escape the roots
        found = resolved is not None and resolved.exists()
    except (OSError, ValueError, RuntimeError):  # a name too long, a NUL byte, a link loop, an unknown ~user
        raise BedgenError(neither) from None
    if resolved is not None:
        roots = [root.resolve() for root in settings.data_roots]
        if not any(inside(resolved, root) for root in roots):
            allowed = ", ".join(str(r) for r in roots) or "(none configured)"
            raise BedgenError(f"data folder must be inside the data roots: {allowed} (BEDGEN_DATA_ROOTS)")
        if not found:
            raise BedgenError(f"data folder '{data}' does not exist")
        return str(resolved)
    if parse_hub_ref(data) is None:
        raise BedgenError(neither)
    return data


def _local_refs(settings: AppSettings) -> list[str]:
    from ..storage.registry import local_models

    return [entry.ref for entry in local_models(settings.checkpoints)]


def finetune_summary(run: Path) -> str | None:
    """The fine-tune report as one line, once the run has written it."""
    report = RunFolder(run).finetune_report()
    try:
        before, after = report["source"], report["finetuned"]
    except KeyError:
        return None
    return (f"LPIPS to the nearest instance: {before['lpips_to_nearest_instance']:.3f} → "
            f"{after['lpips_to_nearest_instance']:.3f} (lower = closer) · mean pairwise LPIPS: "
            f"{before['mean_pairwise_lpips']:.3f} → {after['mean_pairwise_lpips']:.3f} (higher = more diverse), "
            f"{report['samples']} samples per model")


def read_status(jobs: TrainingJobs) -> tuple[str, list[dict[str, Any]], str | None]:
    """(status markdown, metric records, path of the latest preview grid)."""
    run = jobs.run_dir
    if run is None:
        return "No run started yet.", [], None
    folder = RunFolder(run)
    state = folder.state()
    losses = [r for r in folder.metrics() if "loss" in r]
    alive = jobs.running()
    status = state.get("status", "starting") if alive or state else "starting"
    if alive and status in ("stopped", "finished"):
        status = "finishing"  # checkpoint written, process still writing its preview / exiting
    if not alive and status in ("running", "starting"):
        status = "exited" if jobs.process is not None and jobs.process.returncode else "finished"
    parts = [f"**{run.name}**: {status}"]
    if losses:
        last = losses[-1]
        done, total = last["step"], last.get("max_steps") or 0
        rate = last.get("img_per_s", 0.0)
        eta = (total - done) * (last.get("images_seen", 0) / max(done, 1)) / max(rate, 1e-9) if total else 0
        parts.append(f"step {done}/{total} · loss {last['loss']:.4f} · {rate:.1f} img/s · ETA {eta / 60:.1f} min")
    if state.get("precision"):
        parts.append(f"precision: {state['precision']}")  # the CPU kind explains the img/s
    if state.get("latest"):
        parts.append(f"latest checkpoint: `{state['latest']}`")
    if state.get("message"):
        parts.append(state["message"])
    summary = finetune_summary(run)
    if summary:
        parts.append(summary)
    if status in ("exited", "diverged") or (not alive and not state):
        parts.append(f"```\n{jobs.log_tail()}\n```")
    preview = folder.latest_preview()
    return "\n\n".join(parts), losses, str(preview) if preview is not None else None


def loss_frame(losses: list[dict[str, Any]]) -> "pd.DataFrame":
    """The loss curve for gr.LinePlot, its columns numeric even when empty.

    The plot fixes each axis's kind (numeric or categorical) from the first value it shows;
    an empty frame of untyped columns would make both axes categorical for the whole run.
    """
    import pandas as pd

    return pd.DataFrame({
        "step": pd.Series([r["step"] for r in losses], dtype="int64"),
        "loss": pd.Series([r["loss"] for r in losses], dtype="float64"),
    })


def build_train_tab(settings: AppSettings, model_dropdown: gr.Dropdown) -> None:
    from .generate import model_choices
    from .push import build_push_section

    jobs = TrainingJobs(settings)
    roots = ", ".join(f"`{r}`" for r in settings.data_roots) or "none"
    gr.Markdown(
        f"Train a model on a folder of images (under {roots}), an LSUN LMDB, a folder made by "
        "`bedgen prepare`, or a Hugging Face dataset id — fine-tune a trained model on a few instance "
        "images while samples of the original model keep its diversity — or distil a diffusion model into a "
        "student that samples in 1-4 steps. Checkpoints appear in the Generate tab."
    )
    with gr.Row():
        with gr.Column(scale=1):
            mode = Options([("Train from a preset", "train"), ("Fine-tune a model", "finetune"),
                            ("Distil a model into a 1-4-step student", "distill")], value="train",
                           label="Mode", elem_id="train-mode")
            run_name = gr.Textbox("my-run", label="Run name (folder under the checkpoints folder)")
            with gr.Group(visible=True) as train_fields:
                data = gr.Textbox(label="Data source", placeholder="data/bedrooms or org/dataset")
                preset = Choice(sorted(PRESETS), value="tiny", label="Preset")
                resolution = RawNumber(32, label="Resolution (px)", precision=0)
                optimizer = Choice(OPTIMIZERS, value="adamw", label="Optimizer")
                autoencoder = gr.Textbox(
                    "", label="Autoencoder (ldm presets only)",
                    placeholder="a run of autoencoder-kl / -vq under the checkpoints folder, or a Hub id",
                )
            with gr.Group(visible=False) as finetune_fields:
                source = Choice(_local_refs(settings), value=None, allow_custom_value=True,
                                     label="Model to fine-tune (under the checkpoints folder, or a Hub id)")
                instances = gr.Textbox(label="Instance images (a folder under the data roots)",
                                       placeholder="data/my-bedroom-style")
                prior_weight = RawNumber(1.0, label="Prior-preservation weight λ (0 = off)")
                class_images = RawNumber(100, label="Class images sampled from the model", precision=0)
            with gr.Group(visible=False) as distill_fields:
                teacher = Choice(_local_refs(settings), value=None, allow_custom_value=True, elem_id="distill-teacher",
                                 label="Teacher: a ddpm, iddpm or ldm model (under the checkpoints folder, or a Hub id)")
                distill_data = gr.Textbox(label="Images (the teacher's training data, a folder under the data roots)",
                                          placeholder="data/bedrooms", elem_id="distill-data")
                distill_method = Options([("Consistency distillation", "consistency"),
                                          ("Progressive distillation", "progressive")], value="consistency",
                                         label="Method", elem_id="distill-method")
                gr.Markdown("Consistency distillation: the student samples in 1-4 steps (Generate: sampler "
                            "*consistency*, steps 1-4). Progressive distillation: 64 → 1 DDIM steps in six "
                            "stages that share the steps (Generate: sampler *ddim*, 1 step). Quality per step "
                            "count: bench/RESULTS.md.")
            max_steps = RawNumber(2500, label="Steps", precision=0)
            batch_size = RawSlider(1, 256, value=32, step=1, label="Batch size")
            lr = RawNumber(1e-3, label="Learning rate")
            with gr.Row():
                start = gr.Button("Start", variant="primary", elem_id="train-start")
                start_finetune = gr.Button("Start fine-tuning", variant="primary", elem_id="finetune-start",
                                           visible=False)
                start_distill = gr.Button("Start distillation", variant="primary", elem_id="distill-start",
                                          visible=False)
                # Its own button and event, so /distill_start keeps its inputs and checks unchanged.
                start_progressive = gr.Button("Start progressive distillation", variant="primary",
                                              elem_id="distill-progressive-start", visible=False)
                stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            message = gr.Markdown(elem_id="train-message")  # why a start or stop was refused
        with gr.Column(scale=2):
            status = gr.Markdown("No run started yet.", elem_id="train-status")
            curve = gr.LinePlot(loss_frame([]), x="step", y="loss", title="Training loss", height=260,
                                elem_id="train-loss")
            preview = gr.Image(label="Latest preview (EMA weights, fixed seeds)", type="filepath", height=320)
            push_section = build_push_section(settings, jobs.finished_run, model_dropdown)

    # Each mode: its fields, its start button and its defaults (steps, batch size, learning rate):
    # fine-tuning takes few steps, small batches and a gentle rate; distillation the rate of
    # bedgen.training.distill (consistency training wants a small one, Song et al. 2023, App. C).
    modes = {
        "train": (train_fields, start, (2500, 32, 1e-3)),
        "finetune": (finetune_fields, start_finetune, (400, 4, 1e-4)),
        "distill": (distill_fields, start_distill, (DISTILL_STEPS, 16, DISTILL_LR)),
    }

    def on_mode(chosen: str):
        steps, batch, rate = modes.get(chosen, modes["train"])[2]
        groups = [gr.Group(visible=name == chosen) for name in modes]
        buttons = [gr.Button(visible=name == chosen) for name in modes]
        refs = gr.Dropdown(choices=_local_refs(settings))
        return (*groups, *buttons, steps, batch, rate, refs, refs, gr.Button(visible=False), "consistency")

    mode.change(on_mode, mode, [*(m[0] for m in modes.values()), *(m[1] for m in modes.values()), max_steps,
                                batch_size, lr, source, teacher, start_progressive, distill_method],
                api_visibility="private")

    def on_method(chosen: str):
        return gr.Button(visible=chosen != "progressive"), gr.Button(visible=chosen == "progressive")

    distill_method.input(on_method, distill_method, [start_distill, start_progressive], api_visibility="private")

    def on_start(*values):
        run_dir = jobs.start(check_request(settings, *values))
        return f"**{run_dir.name}**: starting…"

    def on_start_finetune(*values):
        run_dir = jobs.start(check_finetune_request(settings, *values))
        return f"**{run_dir.name}**: sampling class images, then fine-tuning…"

    def on_start_distill(*values):
        run_dir = jobs.start(check_distill_request(settings, *values))
        return f"**{run_dir.name}**: loading the teacher, then distilling…"

    def on_start_progressive(*values):
        run_dir = jobs.start(check_distill_request(settings, *values, method="progressive"))
        return f"**{run_dir.name}**: loading the teacher, then distilling progressively…"

    def on_status():
        text, losses, image = read_status(jobs)
        stopped = jobs.run_dir is not None and not jobs.running()
        return (text, loss_frame(losses), image, gr.Dropdown(choices=model_choices(settings)),
                gr.Accordion(visible=stopped))

    # The status area is rewritten every poll: refusals are kept in the message area instead.
    kept = {"what": "training", "status": message, "clear_on_success": True, "concurrency_limit": None}
    listen(start.click, on_start,
           [data, preset, resolution, max_steps, batch_size, lr, optimizer, run_name, autoencoder], status,
           api_name="train_start", **kept)
    listen(start_finetune.click, on_start_finetune,
           [source, instances, prior_weight, class_images, max_steps, batch_size, lr, run_name], status,
           api_name="finetune_start", **kept)
    listen(start_distill.click, on_start_distill, [teacher, distill_data, max_steps, batch_size, lr, run_name],
           status, api_name="distill_start", **kept)
    listen(start_progressive.click, on_start_progressive,
           [teacher, distill_data, max_steps, batch_size, lr, run_name], status,
           api_name="distill_progressive_start", **kept)
    listen(stop.click, lambda: jobs.stop(), None, status, api_name="train_stop", **kept)
    watched = [status, curve, preview, model_dropdown, push_section]
    poll = gr.Button("Refresh status", size="sm", elem_id="train-refresh")
    listen(poll.click, on_status, None, watched, what="reading the run", status=message, api_name="train_status",
           concurrency_limit=None)
    timer = gr.Timer(2.0)
    listen(timer.tick, on_status, None, watched, what="reading the run", status=message,
           api_visibility="private", concurrency_limit=None, show_progress="hidden")
