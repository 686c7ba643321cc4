"""The Interpolate tab: two bedrooms -> noised states -> slerp at λ -> denoised frames."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
from gradio.utils import get_upload_folder
from PIL import Image

from ..core.checks import whole_number
from ..core.errors import BedgenError
from ..config.schema import INTERPOLATION_FRAMES, INTERPOLATION_METHOD, INTERPOLATION_METHODS, INTERPOLATION_STEPS, INTERPOLATION_T
from ..sampling.interpolate import InterpolationResult, interpolate
from ..sampling.pipeline import MAX_SEED
from ..storage.registry import students_of
from .cache import PipelineCache
from .components import Choice, ImageUpload, Options, RawNumber, RawSlider, gallery_image, on_gpu
from .display import display_gallery, display_image, display_note, enlarged, enlarged_items
from .errors import listen
from .generate import model_choices
from .settings import AppSettings

MAX_UI_FRAMES = 16
MAX_UI_STEPS = 200
GIF_KEEP = 64  # animated GIFs kept on disk for the browser; older ones are removed

T_HELP = (
    "How far both images are noised before mixing, as a fraction of the model's training steps. "
    "Small t keeps both pictures, so middle frames look like see-through blends; large t keeps almost "
    "nothing, so frames are unrelated rooms. 0.4–0.6 keeps the layout and repaints the details."
)
METHOD_HELP = (
    "noise: one shared noise draw (the seed picks it); ddim-inversion: deterministic, "
    "λ = 0 and 1 give back the inputs at small t"
)


@dataclass
class InterpolateOutput:
    frames: list[tuple[Image.Image, str]]
    middle: Image.Image | None
    gif: str | None
    strip: Image.Image | None
    status: str
    weights: list[float]


@dataclass(frozen=True)
class Frames:
    """One visitor's last interpolation (kept in a ``gr.State``): what dragging λ flips through."""

    weights: tuple[float, ...]
    native: tuple[Image.Image, ...]
    shown: tuple[Image.Image, ...]  # the display copies (bedgen.ui.display)


FORGOTTEN = "the inputs changed: Interpolate again to flip through frames"


def nearest_frame(frames: Frames | None, weight: Any) -> tuple[Any, Any, str]:
    """(native frame, display copy, note) of the precomputed frame nearest λ = ``weight``.

    What the λ slider shows while it is dragged: no model call, so it follows the pointer;
    releasing the slider computes λ exactly (:func:`run_weight`).
    """
    w = _weight(weight)
    if frames is None or not frames.weights:
        return gr.skip(), gr.skip(), f"Interpolate first to flip through its frames; release computes λ = {w:.2f}"
    i = _nearest(frames.weights, w)
    if abs(frames.weights[i] - w) < 0.005:  # the same λ at the slider's two decimals
        note = f"precomputed frame λ = {frames.weights[i]:.2f}"
    else:
        note = f"nearest precomputed frame λ = {frames.weights[i]:.2f}; release to compute λ = {w:.2f} exactly"
    return frames.native[i], frames.shown[i], note


def run_interpolate(
    cache: PipelineCache,
    model: str,
    image_a: Any,
    image_b: Any,
    t: Any,
    frames: Any,
    method: str,
    steps: Any,
    seed: Any,
    weight: Any = 0.5,
    progress: Callable[[int, int], None] | None = None,
) -> InterpolateOutput:
    """Typed core of the Run button; raises BedgenError on bad input."""
    frames = whole_number("frames", frames, 2, MAX_UI_FRAMES)
    steps = whole_number("steps", steps, 1, MAX_UI_STEPS)
    seed = whole_number("seed", seed, 0, MAX_SEED)
    pipe = _model(cache, model, image_a, image_b)
    result = interpolate(pipe, image_a, image_b, t=t, frames=frames, method=method, steps=steps,
                         seed=seed, progress=progress)
    gallery = [(frame, f"λ = {w:.2f}") for frame, w in zip(result.frames, result.weights)]
    nearest = _nearest(result.weights, _weight(weight))
    return InterpolateOutput(gallery, result.frames[nearest], _save_gif(result.frames), result.strip(),
                             _status(result, model), list(result.weights))


def run_weight(
    cache: PipelineCache, model: str, image_a: Any, image_b: Any, t: Any, weight: Any,
    method: str, steps: Any, seed: Any, progress: Callable[[int, int], None] | None = None,
    checkpoints: Path | None = None,
) -> tuple[Image.Image, str]:
    """The one frame at λ = ``weight`` (what the slider shows between A and B): by the model's
    newest consistency student under ``checkpoints`` in one evaluation when it has one."""
    steps = whole_number("steps", steps, 1, MAX_UI_STEPS)
    seed = whole_number("seed", seed, 0, MAX_SEED)
    pipe = _model(cache, model, image_a, image_b)
    result = interpolate(pipe, image_a, image_b, t=t, weights=[weight], method=method, steps=steps,
                         seed=seed, progress=progress, student=_student(cache, pipe, model, checkpoints))
    return result.frames[0], _status(result, model, f" at λ = {result.weights[0]:.2f}")


def _student(cache: PipelineCache, pipe: Any, model: str, checkpoints: Path | None):
    """The newest student ``bedgen distill`` made of ``model`` under ``checkpoints``, loaded; or None."""
    if checkpoints is None or getattr(pipe, "denoiser", None) is None or pipe.denoiser.kind != "vp":
        return None
    refs = students_of(model.strip(), checkpoints)
    return cache.get(refs[0]) if refs else None


def _model(cache: PipelineCache, model: str, image_a: Any, image_b: Any):
    if image_a is None or image_b is None:
        raise BedgenError("upload two images (A and B), or use a generated one")
    if not isinstance(model, str) or not model.strip():
        raise BedgenError("choose a model (a local checkpoint folder or a Hub id org/name)")
    return cache.get(model)


def _forget_frames() -> tuple[None, str]:
    return None, FORGOTTEN


def _weight(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.5


def _nearest(weights: "tuple[float, ...] | list[float]", weight: float) -> int:
    """The index of the weight nearest ``weight`` (the first of two as near)."""
    return min(range(len(weights)), key=lambda k: abs(weights[k] - weight))


def _status(result: InterpolationResult, model: str, where: str = "") -> str:
    return (
        f"**{model}** · {result.method}, t = {result.t:g} (step {result.timestep}), "
        f"{f'1 step of its student {result.student}' if result.student else f'{result.steps} DDIM steps'} · "
        f"{len(result.frames)} frame(s){where} · {result.placement} · {result.seconds:.1f} s"
        + "".join(f" · {note}" for note in result.notes)
    )


def _save_gif(frames: list[Image.Image]) -> str:
    """The frames as a looping (there and back) animated GIF."""
    # In gradio's own folder: served from there without a copy, and deleted by its cache cleanup
    # (BEDGEN_CACHE_MAX_AGE) like every other output; at most GIF_KEEP are kept meanwhile.
    folder = Path(get_upload_folder()) / "bedgen-interpolations"
    folder.mkdir(parents=True, exist_ok=True)
    dated = []
    for gif in folder.glob("*.gif"):
        with contextlib.suppress(FileNotFoundError):  # the cache cleanup may delete it meanwhile
            dated.append((gif.stat().st_mtime, gif))
    for _, stale in sorted(dated)[: max(0, len(dated) - GIF_KEEP)]:
        stale.unlink(missing_ok=True)
    path = folder / f"{int(time.time())}-{uuid.uuid4().hex[:8]}.gif"
    loop = frames + frames[-2:0:-1]
    loop[0].save(path, save_all=True, append_images=loop[1:], duration=250, loop=0)
    return str(path)


def build_interpolate_tab(settings: AppSettings, cache: PipelineCache, demo: gr.Blocks, generated: gr.Gallery,
                          selected: gr.State) -> None:
    with gr.Row():
        model = Choice(model_choices(settings), value=settings.default_model, label="Model",
                            allow_custom_value=True, info="pixel-space models; the first use loads it",
                            elem_id="interp-model", scale=4)
        refresh = gr.Button("↻ Refresh model list", size="sm", elem_id="interp-refresh", scale=1)
    with gr.Row(equal_height=True):
        with gr.Column():
            image_a = ImageUpload(type="filepath", label="Image A", elem_id="interp-a", height=256)
            use_a = gr.Button("Use last generated image", size="sm")
        with gr.Column():
            shown_middle = display_image(label="λ between A and B", elem_id="interp-middle", height=256, format="png")
            weight = RawSlider(0, 1, value=0.5, step=0.05, label="λ (0 = A, 1 = B)", elem_id="interp-weight")
            weight_note = display_note(elem_id="interp-weight-note")
        with gr.Column():
            image_b = ImageUpload(type="filepath", label="Image B", elem_id="interp-b", height=256)
            use_b = gr.Button("Use last generated image", size="sm")
    with gr.Row():
        t = RawSlider(0.05, 1, value=INTERPOLATION_T, step=0.05, label="Noise level t", info=T_HELP)
        frames = RawSlider(2, MAX_UI_FRAMES, value=INTERPOLATION_FRAMES, step=1, label="Frames")
    with gr.Row():
        method = Options(list(INTERPOLATION_METHODS), value=INTERPOLATION_METHOD, label="Method", info=METHOD_HELP)
        steps = RawSlider(1, MAX_UI_STEPS, value=INTERPOLATION_STEPS, step=1, label="DDIM steps from t")
        seed = RawNumber(0, label="Seed", precision=0, minimum=0)
    button = gr.Button("Interpolate", variant="primary", elem_id="interp-button")
    status = gr.Markdown(elem_id="interp-status")
    computed = gr.State(None)  # this visitor's last frames (Frames); never shared between visitors
    shown_frames = display_gallery(label="Frames", columns=8, elem_id="interp-frames")
    with gr.Row():
        shown_gif = display_image(label="Animation", type="filepath", format="gif", elem_id="interp-gif")
        shown_strip = display_image(label="Strip: A, frames, B", format="png", elem_id="interp-strip")
    with gr.Accordion("Frames at the model's own size (downloads)", open=False):
        gallery = gr.Gallery(label="Frames", columns=8, format="png", interactive=False)
        with gr.Row():
            middle = gr.Image(label="λ between A and B", interactive=False, format="png")
            gif = gr.Image(label="Animation", type="filepath", interactive=False, format="gif")
            strip = gr.Image(label="Strip: A, frames, B", interactive=False, format="png")

    def on_run(model_ref, a, b, t_value, n, method_name, steps_value, seed_value, w, progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        out = run_interpolate(cache, model_ref, a, b, t_value, n, method_name, steps_value, seed_value, w, report)
        large = enlarged_items(out.frames)
        shown_gif = out.gif if large[0][0] is out.frames[0][0] else _save_gif([frame for frame, _ in large])
        kept = Frames(tuple(out.weights), tuple(f for f, _ in out.frames), tuple(f for f, _ in large))
        middle_frame, shown_middle_frame, note = nearest_frame(kept, w)
        return (out.frames, middle_frame, out.gif, out.strip, out.status,
                large, shown_middle_frame, shown_gif, enlarged(out.strip), kept, note)

    def on_weight(model_ref, a, b, t_value, w, method_name, steps_value, seed_value, progress=gr.Progress()):
        def report(done: int, total: int) -> None:
            progress((done, total), desc="denoising", unit="steps")

        frame, text = run_weight(cache, model_ref, a, b, t_value, w, method_name, steps_value, seed_value, report,
                                 settings.checkpoints)
        return frame, text, enlarged(frame), f"λ = {_weight(w):.2f}, computed exactly"

    listen(
        button.click, on_gpu(on_run),
        [model, image_a, image_b, t, frames, method, steps, seed, weight],
        [gallery, middle, gif, strip, status, shown_frames, shown_middle, shown_gif, shown_strip, computed,
         weight_note],
        what="interpolation", status=status,
        api_name="interpolate", concurrency_limit=settings.concurrency, concurrency_id="gpu",
    )
    # Frames belong to the inputs that made them: changing any of those forgets them, so dragging
    # never shows frames of other images, another noise level or another model.
    gr.on([image_a.change, image_b.change, model.change, t.change, method.change, steps.change, seed.change],
          _forget_frames, None, [computed, weight_note], api_visibility="private", queue=False,
          show_progress="hidden")
    # Dragging λ flips through the computed frames (no model call: instant, never waits for the GPU);
    # releasing it computes that λ exactly.
    listen(
        weight.input, nearest_frame, [computed, weight], [middle, shown_middle, weight_note],
        what="showing a frame", status=status, api_visibility="private", concurrency_limit=None,
        show_progress="hidden", trigger_mode="always_last",
    )
    listen(
        weight.release, on_gpu(on_weight),
        [model, image_a, image_b, t, weight, method, steps, seed],
        [middle, status, shown_middle, weight_note], what="interpolation", status=status,
        api_name="interpolate_weight", concurrency_limit=settings.concurrency, concurrency_id="gpu",
    )
    listen(use_a.click, gallery_image, [generated, selected], image_a, what="taking the generated image",
           status=status, api_name="use_generated_a", queue=False)
    listen(use_b.click, gallery_image, [generated, selected], image_b, what="taking the generated image",
           status=status, api_name="use_generated_b", queue=False)
    gr.on([refresh.click, demo.load], lambda: gr.Dropdown(choices=model_choices(settings)), None, model,
          api_name="refresh_interpolate_models", queue=False, show_progress="hidden")
