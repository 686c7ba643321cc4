"""The Evaluate tab: FID/KID/IS/precision-recall of a model, and the sweeps found on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from PIL import Image

from ..core.checks import whole_number
from ..core.errors import BedgenError
from ..evaluation.metrics import METRICS, evaluate, parse_metrics, record_result
from ..sampling.schedulers import ALL_SAMPLERS
from ..sweeps.sweep import find_sweeps
from .cache import PipelineCache
from .components import Checkboxes, Choice, RawNumber, RawSlider, on_gpu
from .errors import listen
from .generate import AUTO, model_choices
from .security import without_server_paths
from .settings import AppSettings

METRIC_LABELS = {"fid": "FID", "kid": "KID", "is": "Inception Score", "pr": "precision / recall"}


# --- references: .npz files confined to one folder ---------------------------------------


def reference_choices(root: Path) -> list[tuple[str, str]]:
    """The .npz statistics under ``root`` (bedgen ref-stats or ADM batches), as paths relative to it.

    Relative names keep server paths out of the page and out of API clients, which
    would otherwise take a string naming an existing file for a file to transfer.
    """
    if not root.is_dir():
        return []
    files = sorted(p for p in root.rglob("*.npz") if p.is_file())
    return [(name, name) for name in (str(p.relative_to(root)) for p in files)]


def resolve_reference(root: Path, choice: Any) -> Path:
    """The chosen .npz, refused unless it lies under ``root`` (symlinks resolved)."""
    if not isinstance(choice, str) or not choice.strip():
        raise BedgenError(f"choose a reference: a .npz made by 'bedgen ref-stats --out {root}/NAME.npz' "
                          "or an ADM reference batch placed there")
    base = root.resolve()
    path = Path(choice.strip())
    path = (path if path.is_absolute() else base / path).resolve()
    if base not in path.parents:
        raise BedgenError(f"reference '{choice}' is outside the references folder {root}")
    if path.suffix.lower() != ".npz":
        raise BedgenError(f"reference '{choice}' is not a .npz file of statistics")
    if not path.is_file():
        raise BedgenError(f"reference '{choice}' does not exist; refresh the list")
    return path


# --- evaluation --------------------------------------------------------------------------


@dataclass
class EvaluateOutput:
    summary: str
    result: dict[str, Any]


def run_evaluate(
    cache: PipelineCache,
    settings: AppSettings,
    model: Any,
    reference: Any,
    num_samples: Any,
    steps: Any,
    sampler: Any,
    metrics: Any,
    seed: Any,
    progress: Callable[[int, int, str], None] | None = None,
) -> EvaluateOutput:
    """Typed core of the Evaluate event; raises BedgenError on bad input. Neither its result nor
    its errors name a server path."""
    try:
        return _run_evaluate(cache, settings, model, reference, num_samples, steps, sampler, metrics, seed, progress)
    except BedgenError as e:
        raise BedgenError(without_server_paths(str(e), _folders(settings))) from e


def _run_evaluate(cache: PipelineCache, settings: AppSettings, model: Any, reference: Any, num_samples: Any,
                  steps: Any, sampler: Any, metrics: Any, seed: Any,
                  progress: Callable[[int, int, str], None] | None) -> EvaluateOutput:
    n = whole_number("number of samples", num_samples, 2, settings.max_eval_samples)
    steps = whole_number("steps", steps, 1, settings.max_steps)
    seed = whole_number("seed", seed, 0, 2**31 - 1)
    wanted = parse_metrics(metrics if isinstance(metrics, (list, tuple, str)) else [])
    path = resolve_reference(settings.references, reference)
    if not isinstance(model, str) or not model.strip():
        raise BedgenError("choose a model (a local checkpoint folder or a Hub id org/name)")
    pipe = cache.get(model)
    result = evaluate(
        pipe, path, num_samples=n, metrics=wanted, steps=steps,
        scheduler=None if sampler in (None, "", AUTO) else sampler, seed=seed,
        inception_weights=settings.inception_weights, progress=progress,
    )
    # A public app's visitors are anonymous: their results are shown, not written into checkpoints.
    stored = None if settings.public else record_result(pipe, result)
    shown = without_server_paths([_summary(result, model, stored, settings.public), result], _folders(settings))
    return EvaluateOutput(*shown)


def _folders(settings: AppSettings) -> list[Path]:
    """Where the paths of a result may lie; a client sees them relative to these."""
    return [settings.checkpoints, settings.references, settings.sweeps, settings.indexes, *settings.data_roots]


def _summary(result: dict[str, Any], model: str, stored: Path | None, public: bool) -> str:
    values = []
    if "fid" in result:
        values.append(f"**FID {result['fid']:.3f}**")
    if "kid" in result:
        values.append(f"KID {result['kid']:.4f} ± {result['kid_std']:.4f}")
    if "is" in result:
        values.append(f"IS {result['is']:.3f} ± {result['is_std']:.3f}")
    if "precision" in result:
        values.append(f"precision {result['precision']:.3f}, recall {result['recall']:.3f}")
    lines = [
        " · ".join(values),
        f"{result['num_samples']} samples of **{model}** at {result['resolution']} px · {result['sampler']}, "
        f"{result['steps']} steps · {result['seconds']['total']:.1f} s",
        "stored in the checkpoint's bedgen.json" if stored else
        "not stored (a public app keeps no results)" if public else "not stored (not a local bedgen checkpoint)",
    ]
    lines += [f"⚠️ {w}" for w in result.get("warnings", [])]
    return "\n\n".join(lines)


# --- sweeps ------------------------------------------------------------------------------


def sweep_choices(root: Path) -> list[tuple[str, str]]:
    """(label, folder relative to ``root``) of the sweeps found there, newest first."""
    if not root.is_dir():
        return []
    found = [(s.name, str(s.path.relative_to(root))) for s in find_sweeps(root) if s.path.is_relative_to(root)]
    return [(f"{name}  ({folder})", folder) for name, folder in found]


def show_sweep(root: Path, choice: Any) -> tuple[str, list[tuple[Image.Image, str]]]:
    """The sweep's Markdown table and its plots; only sweeps under ``root``."""
    if not isinstance(choice, str) or not choice.strip():
        raise BedgenError(f"choose a sweep (run 'bedgen sweep' with --out under {root})")
    wanted = (root / choice.strip()).resolve()
    for sweep in find_sweeps(root):
        if sweep.path.resolve() == wanted:
            table = sweep.results_md.read_text() if sweep.results_md else (
                "_no results table yet: the sweep is running or was interrupted; "
                "`bedgen sweep --report-only --out DIR` writes one_")
            return table, [(_read_png(p), p.stem.replace("_", " ")) for p in sweep.plots]
    raise BedgenError(f"'{choice}' is not a sweep folder under {root}; refresh the list")


def _read_png(path: Path) -> Image.Image:
    # Decoded here, so the plots need not lie in a folder Gradio is allowed to serve.
    with Image.open(path) as image:
        return image.convert("RGB")


# --- layout ------------------------------------------------------------------------------


def build_evaluate_tab(settings: AppSettings, cache: PipelineCache, demo: gr.Blocks) -> None:
    gr.Markdown(
        "FID (and KID, Inception Score, precision/recall) of a model's samples against reference "
        f"statistics under `{settings.references}` (`bedgen ref-stats --data SRC --resolution R --out "
        f"{settings.references}/NAME.npz`). A few hundred samples show trends; numbers to put next to "
        "published ones need 50 000 (`bedgen eval`, see the README)."
    )
    with gr.Row():
        with gr.Column(scale=1):
            model = Choice(model_choices(settings), value=settings.default_model, label="Model",
                                allow_custom_value=True, elem_id="eval-model")
            references = reference_choices(settings.references)
            reference = Choice(references, value=references[0][1] if references else None, label="Reference",
                                    allow_custom_value=True, elem_id="eval-reference")
            refresh = gr.Button("↻ Refresh models and references", size="sm", elem_id="eval-refresh")
            num_samples = RawSlider(2, settings.max_eval_samples, value=min(100, settings.max_eval_samples), step=1,
                                    label="Samples")
            steps = RawSlider(1, min(settings.max_steps, 1000), value=20, step=1, label="Steps")
            sampler = Choice([AUTO, *ALL_SAMPLERS], value=AUTO, label="Sampler")
            metrics = Checkboxes([(METRIC_LABELS[m], m) for m in METRICS], value=["fid"], label="Metrics",
                                       info="KID and precision/recall need references with features (bedgen ref-stats)")
            seed = RawNumber(0, label="First seed", precision=0, minimum=0)
            button = gr.Button("Evaluate", variant="primary", elem_id="eval-button")
        with gr.Column(scale=2):
            summary = gr.Markdown(elem_id="eval-status")
            # Text, not gr.JSON: Gradio would take the result's {"path": ...} entries for files.
            result = gr.Code(label="Result", language="json", interactive=False)

    def on_evaluate(model_ref, reference_path, n, steps_value, sampler_name, chosen, seed_value,
                    progress=gr.Progress()):
        def report(done: int, total: int, stage: str) -> None:
            progress((done, total), desc=stage, unit="images")

        out = run_evaluate(cache, settings, model_ref, reference_path, n, steps_value, sampler_name, chosen,
                           seed_value, report)
        return out.summary, json.dumps(out.result, indent=2)

    listen(button.click, on_gpu(on_evaluate), [model, reference, num_samples, steps, sampler, metrics, seed],
           [summary, result], what="evaluation", status=summary,
           api_name="evaluate", concurrency_limit=settings.concurrency, concurrency_id="gpu")
    refresh.click(
        lambda: (gr.Dropdown(choices=model_choices(settings)),
                 gr.Dropdown(choices=reference_choices(settings.references))),
        None, [model, reference], api_name="refresh_references", queue=False,
    )

    def on_page_load():  # models and references made while the app runs are listed
        found = reference_choices(settings.references)
        return (gr.Dropdown(choices=model_choices(settings)),
                gr.Dropdown(choices=found, value=found[0][1] if found else None))

    demo.load(on_page_load, None, [model, reference], queue=False, show_progress="hidden",
              api_visibility="private")
    _build_sweeps_section(settings)


def _build_sweeps_section(settings: AppSettings) -> None:
    root = settings.sweeps
    gr.Markdown(f"### Sweeps\nSweep folders under `{root}` (`bedgen sweep --config FILE`): the table sorted by "
                "mean final FID, and the loss / FID curves.")
    choices = sweep_choices(root)
    with gr.Row():
        sweep = Choice(choices, value=choices[0][1] if choices else None, label="Sweep", elem_id="sweep-choice",
                            scale=3)
        refresh = gr.Button("↻ Refresh sweeps", size="sm", scale=1)
        show = gr.Button("Show", size="sm", scale=1, elem_id="sweep-show")
    table = gr.Markdown(elem_id="sweep-table")
    plots = gr.Gallery(label="Plots", columns=2, elem_id="sweep-plots", format="png", interactive=False)

    listen(show.click, lambda choice: show_sweep(root, choice), sweep, [table, plots], what="showing the sweep",
           status=table, api_name="sweep_report", queue=False)
    refresh.click(lambda: gr.Dropdown(choices=sweep_choices(root)), None, sweep, api_name="refresh_sweeps",
                  queue=False)
