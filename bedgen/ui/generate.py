"""The Generate tab: model, seed, steps, sampler -> a gallery of bedrooms."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gradio as gr
import torch
from PIL import Image

from ..core.checks import optional_positive_number, whole_number
from ..core.device import cpu_has_bf16, cpu_kind, resolve
from ..core.errors import BedgenError
from ..core.hub import parse_hub_ref
from ..sampling.backends import EXPORTED, LABELS, choose_backend
from ..sampling.pipeline import MAX_SEED
from ..sampling.schedulers import ALL_SAMPLERS, CONSISTENCY_STEPS
from ..storage.registry import CPU_DEFAULT_MODEL, CURATED_HUB_MODELS, all_models, local_models
from .cache import PipelineCache
from .components import Choice, RawNumber, RawSlider, on_gpu
from .display import display_gallery, enlarged_items
from .errors import clip, listen
from .settings import AppSettings
from .stream import Channel, Done, streamed

AUTO = "auto"
DIFFUSION_STEPS = 20  # DPM-Solver++'s regime of good quality (Lu et al. 2022: 15-20 steps)
# Trajectory frames per image, and so previews per run: x̂₀ is decoded every ceil(steps / 8) steps only.
TRAJECTORY_FRAMES = 8


@dataclass
class GenerateOutput:
    gallery: list[tuple[Image.Image, str]]
    trajectory: list[tuple[Image.Image, str]]
    status: str


def model_choices(settings: AppSettings) -> list[tuple[str, str]]:
    """(label, ref) pairs: local checkpoints, the models pushed from this machine, then the Hub
    models of the settings; only those the app serves (its ModelPolicy: in public mode the
    allow-list), so no listed model is refused, and no allow-list pattern (``org/*``) is listed."""
    policy = settings.model_policy
    return [(f"{e.ref}  ({e.source})", e.ref) for e in all_models(settings.checkpoints, settings.hub_models)
            if policy.allows(e.ref)]


def describe_model(ref: str, settings: AppSettings) -> str:
    for entry in all_models(settings.checkpoints, settings.hub_models):
        if entry.ref == ref:
            return f"**{entry.ref}** ({entry.source}): {entry.description}"
    return f"**{clip(str(ref))}**: loaded on first use (local folder or Hub id)"


def default_steps_for(ref: str, settings: AppSettings) -> int:
    """The step count the tab proposes for a model, known before it loads (from its family)."""
    entry = next((e for e in all_models(settings.checkpoints, settings.hub_models) if e.ref == ref), None)
    if entry is not None and entry.steps:
        return entry.steps
    return CONSISTENCY_STEPS if entry is not None and entry.family == "consistency" else DIFFUSION_STEPS


def machine_note(settings: AppSettings) -> str:
    """What the defaults are on this machine and why (empty with a GPU, where any model is quick)."""
    if torch.cuda.is_available():
        return ""
    bf16 = "native bf16" if cpu_has_bf16() else "no native bf16, so fp32"
    engine = choose_backend(None, resolve("auto", "auto"))[0]  # what a large network runs on here
    export = ""
    if engine != "eager":
        bf16 += f" on {LABELS[engine]}"
    if engine in EXPORTED:  # the one slow click a visitor would otherwise have to guess about
        export = f" A large model's first click takes longer: it is exported for {LABELS[engine]} once, then cached."
    head = f"No GPU here ({cpu_kind()} CPU, {bf16}): every step is one network evaluation, so "
    if settings.default_model == CPU_DEFAULT_MODEL:
        return head + (f"the tab opens on a consistency model at {CONSISTENCY_STEPS} steps: published FID 5.22 on "
                       "LSUN Bedroom 256, against 6.36 for the 1000-step DDPM, in about a third of the time of a "
                       "20-step DDPM click. Diffusion models need 10-50 steps; `bedgen distill` makes a 1-4-step "
                       "student of one." + export)
    return head + ("consistency models (e.g. openai/diffusers-cd_bedroom256_lpips, or a student made by "
                   "`bedgen distill`) sample in 1-2 steps where diffusion models need 10-50." + export)


def offline_hint(settings: AppSettings) -> str:
    """Before the first click: with no local model, the default comes from the Hub, which an
    offline machine cannot reach; say what works without it. Empty otherwise, and on a public
    app, whose visitors can add no checkpoint."""
    default_is_hub = parse_hub_ref(settings.default_model) is not None and not Path(settings.default_model).exists()
    if settings.public or not default_is_hub or local_models(settings.checkpoints):
        return ""
    train = "train one in the Train tab or " if settings.training_enabled else ""
    return (f"No local models yet: the default model is downloaded from the Hub on first use. "
            f"Offline, {train}put a checkpoint folder in `{settings.checkpoints}/` "
            f"(`bedgen train --data DIR --preset tiny --out {settings.checkpoints}/NAME`).")


def run_generate(
    cache: PipelineCache,
    settings: AppSettings,
    model: str,
    seed: Any,
    steps: Any,
    sampler: str,
    num_images: Any,
    show_trajectory: bool,
    progress: Callable[[int, int], None] | None = None,
    step_size: Any = None,
    on_preview: Callable[[GenerateOutput], None] | None = None,
) -> GenerateOutput:
    """Typed core of the Generate event; raises BedgenError on bad input.

    ``on_preview`` gets the gallery while it forms: the predicted clean images x̂₀ of the batch
    being sampled (after the finished ones), every ``ceil(steps / TRAJECTORY_FRAMES)`` steps.
    """
    n = whole_number("number of images", num_images, 1, settings.max_images)
    step_size = optional_positive_number("step size", step_size)
    steps = whole_number("steps", steps, 1, settings.max_steps)
    seed = whole_number("seed", seed, 0, MAX_SEED - n)
    if not isinstance(model, str) or not model.strip():
        raise BedgenError("choose a model (a local checkpoint folder or a Hub id org/name)")
    sampler = None if sampler in (None, "", AUTO) else sampler
    pipe = cache.get(model)
    every = math.ceil(steps / TRAJECTORY_FRAMES) if show_trajectory or on_preview else 0

    def preview(done: int, total: int, images: list[Image.Image]) -> None:
        if on_preview is not None:
            forming = [(im, f"seed {seed + i}") for i, im in enumerate(images)]
            text = f"denoising… step {done} of {total}: predicted clean images x̂₀"
            on_preview(GenerateOutput(forming, [], text))

    result = pipe.sample(n, seed, steps, sampler, progress=progress, trajectory_every=every, step_size=step_size,
                         on_preview=preview)
    gallery = [(im, f"seed {s}") for im, s in zip(result.images, result.seeds)]
    trajectory = []
    if show_trajectory and result.trajectory:
        frames = result.trajectory[0]
        trajectory = [(im, f"step {min(i * every + 1, steps)}") for i, im in enumerate(frames)]
    status = (
        f"{n} image(s) from **{model}** · {result.sampler}, {result.steps} steps · "
        f"{result.placement} · {result.seconds:.1f} s"
    )
    return GenerateOutput(gallery, trajectory, status)


def build_generate_tab(settings: AppSettings, cache: PipelineCache, demo: gr.Blocks) -> dict[str, Any]:
    """Lay out the tab and wire its events; returns components other tabs may use."""
    with gr.Row():
        with gr.Column(scale=1):
            model = Choice(
                model_choices(settings), value=settings.default_model, label="Model", allow_custom_value=True,
                info="a local checkpoint or any Hub id org/name[@revision]", elem_id="generate-model",
            )
            refresh = gr.Button("↻ Refresh model list", size="sm", elem_id="generate-refresh")
            model_info = gr.Markdown(describe_model(settings.default_model, settings), elem_id="generate-model-info")
            note = machine_note(settings)
            gr.Markdown(note, visible=bool(note), elem_id="generate-machine-note")
            hint = offline_hint(settings)
            gr.Markdown(hint, visible=bool(hint), elem_id="generate-offline-hint")
            with gr.Row():
                seed = RawNumber(0, label="Seed", precision=0, minimum=0)
                randomize = gr.Button("🎲 Random", size="sm", scale=0)
            steps = RawSlider(1, min(settings.max_steps, 1000), value=default_steps_for(settings.default_model, settings),
                              step=1, label="Steps", elem_id="generate-steps",
                              info="set to the model's default when the model changes")
            sampler = Choice(
                [AUTO, *ALL_SAMPLERS], value=AUTO, label="Sampler",
                info="auto = the model's default (DPM-Solver++ for DDPMs, Langevin for score models)",
            )
            num_images = RawSlider(
                1, settings.max_images, value=min(settings.default_images, settings.max_images),
                step=1, label="Images",
            )
            show_trajectory = gr.Checkbox(False, label="Show the denoising trajectory (first image)")
            with gr.Accordion("Score models (smld)", open=False):
                step_size = RawNumber(
                    0, label="Step size", elem_id="generate-step-size", minimum=0,
                    info="Langevin ε (α_i = ε σ_i²/σ_L²) or the predictor-corrector's snr; "
                         "0 = the model's default. Steps = noise levels.",
                )
            button = gr.Button("Generate", variant="primary", elem_id="generate-button")
        with gr.Column(scale=2):
            shown = display_gallery(label="Samples", columns=4, elem_id="generate-gallery")
            find_neighbours = gr.Button("🔎 Find nearest training images", size="sm", elem_id="generate-find-neighbours")
            status = gr.Markdown(elem_id="generate-status")
            shown_trajectory = display_gallery(label="Predicted clean image x̂₀ while denoising", columns=8)
            with gr.Accordion("Samples at the model's own size (downloads)", open=False):
                gallery = gr.Gallery(label="Samples", columns=8, format="png", interactive=False,
                                     elem_id="generate-native")
                trajectory = gr.Gallery(label="Trajectory", columns=8, format="png", interactive=False)
            selected = gr.State(0)  # the gallery image other tabs take ("use last generated image")

    def on_generate(model_ref, seed_value, steps_value, sampler_name, n, show, step_size_value,
                    progress=gr.Progress()):
        def work(channel: Channel) -> GenerateOutput:
            def report(done: int, total: int) -> None:
                progress((done, total), desc="denoising", unit="steps")  # stops an event whose client is gone
                channel.check()  # stops work whose stream Gradio closed

            return run_generate(cache, settings, model_ref, seed_value, steps_value, sampler_name, n, show, report,
                                step_size_value, on_preview=channel.send)

        # The gallery forms while it is sampled: x̂₀ previews, then the samples and the trajectory.
        for item in streamed(work):
            if isinstance(item, Done):
                out = item.value
                yield (out.gallery, out.trajectory, out.status,
                       enlarged_items(out.gallery), enlarged_items(out.trajectory))
            else:
                yield item.gallery, gr.skip(), item.status, enlarged_items(item.gallery), gr.skip()

    listen(
        button.click, on_gpu(on_generate),
        [model, seed, steps, sampler, num_images, show_trajectory, step_size],
        [gallery, trajectory, status, shown, shown_trajectory], what="generation", status=status,
        api_name="generate", concurrency_limit=settings.concurrency, concurrency_id="gpu",
        show_progress_on=status,
    )
    randomize.click(lambda: random.randint(0, 2**31 - 1), None, seed, api_name="random_seed", queue=False)
    # On every page load too: models trained or copied in while the app runs are listed.
    gr.on([refresh.click, demo.load], lambda: gr.Dropdown(choices=model_choices(settings)), None, model,
          api_name="refresh_models", queue=False, show_progress="hidden")
    model.change(lambda ref: describe_model(ref, settings), model, model_info, api_name="describe_model", queue=False)
    model.change(lambda ref: default_steps_for(ref, settings), model, steps, api_visibility="private", queue=False)
    shown.select(_selected_index, None, selected, api_name="select_generated", queue=False)
    return {"model": model, "gallery": gallery, "selected": selected, "find_neighbours": find_neighbours}


def _selected_index(event: gr.SelectData) -> int:
    return int(event.index) if isinstance(event.index, int) else 0


__all__ = ["build_generate_tab", "run_generate", "CURATED_HUB_MODELS"]
