"""Assemble the Gradio Blocks app from the tabs; no model logic lives here."""

from __future__ import annotations

import argparse

import gradio as gr

from .cache import PipelineCache
from .components import gallery_image
from .errors import listen
from .evaluate import build_evaluate_tab
from .generate import build_generate_tab
from .guard import GuardSettings, middleware
from .interpolate import build_interpolate_tab
from .neighbours import build_neighbours_tab
from .train import build_train_tab
from .settings import AppSettings

INTRO = """# bedgen — diffusion models of bedrooms
Generate LSUN-Bedroom-style rooms from a seed, interpolate between two bedrooms through
the diffusion's noised states, and check a sample against its nearest training images
(LPIPS), and measure models by FID. Every image is reproducible from its seed; the first run of a Hub model downloads it once.
"""


def build_app(settings: AppSettings | None = None) -> gr.Blocks:
    settings = settings or AppSettings.from_env()
    cache = PipelineCache(settings.model_cache_size, settings.model_policy)
    # gradio's own cleanup: files it stored for this app (uploads, outputs) older than the age go.
    with gr.Blocks(title="bedgen", delete_cache=(settings.cache_clean_every, settings.cache_max_age)) as demo:
        gr.Markdown(INTRO)
        with gr.Tabs() as tabs:
            with gr.Tab("Generate", id="generate"):
                generate = build_generate_tab(settings, cache, demo)
            with gr.Tab("Interpolate", id="interpolate"):
                build_interpolate_tab(settings, cache, demo, generate["gallery"], generate["selected"])
            with gr.Tab("Nearest neighbours", id="neighbours"):
                neighbours = build_neighbours_tab(settings, demo, generate["gallery"], generate["selected"])
            with gr.Tab("Evaluate", id="evaluate"):
                build_evaluate_tab(settings, cache, demo)
            if settings.training_enabled:
                with gr.Tab("Train", id="train"):
                    build_train_tab(settings, generate["model"])
        _wire_find_neighbours(generate, neighbours, tabs)
    # api_open=False: queued events only through the queue (Gradio leaves /gradio_api/run/<name>
    # open off a Space, which would skip the queue's limits and bedgen.ui.guard's per-visitor cap).
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency, api_open=False)
    return demo


def _wire_find_neighbours(generate: dict, neighbours: dict, tabs: gr.Tabs) -> None:
    """The button under the Generate gallery: query with the selected sample, show its neighbours."""

    def take_sample(gallery, selected):
        return gallery_image(gallery, selected), gr.Tabs(selected="neighbours")

    taken = listen(
        generate["find_neighbours"].click, take_sample, [generate["gallery"], generate["selected"]],
        [neighbours["query"], tabs], what="taking the generated image", status=neighbours["status"],
        api_name="find_neighbours_of_generated", queue=False,
    )
    listen(
        taken.success, neighbours["search"], [neighbours["index"], neighbours["query"], neighbours["k"]],
        neighbours["outputs"], what="neighbour search", status=neighbours["status"],
        api_name="neighbours_of_generated",
    )


# Events that poll (the Train tab's timer) show no progress: Gradio then makes their progress
# text transparent, yet keeps it in the page, where it is read out ("processing 0.1/0.2s")
# and copied along with the status it covers. Taken out of the page instead.
APP_CSS = '[data-testid="status-tracker"].hidden { display: none !important; }'


ENVIRONMENT_HELP = """environment variables (all optional; the README has the full table):
  BEDGEN_CHECKPOINTS, BEDGEN_DEFAULT_MODEL, BEDGEN_HUB_MODELS   models listed / allowed
  BEDGEN_PUBLIC, BEDGEN_AUTH=user:password, BEDGEN_ENABLE_TRAINING  exposure and the Train tab
  BEDGEN_CONCURRENCY, BEDGEN_QUEUE_SIZE, BEDGEN_MAX_IMAGES, BEDGEN_MAX_STEPS, BEDGEN_MAX_UPLOAD_MB  load limits
  BEDGEN_MAX_PENDING_PER_VISITOR, BEDGEN_ABANDON_AFTER_S  queued work per visitor, unread work cancelled
  BEDGEN_LOGIN_LOCKOUT_S  lockout after repeated wrong passwords (doubles each time)
  BEDGEN_ALLOWED_HOSTS  host names a local app answers to besides localhost and IP addresses
  BEDGEN_CACHE_MAX_AGE, BEDGEN_CACHE_CLEAN_EVERY  seconds uploads and outputs are kept, and between cleanups
  BEDGEN_DATA_ROOTS, BEDGEN_INDEXES, BEDGEN_REFERENCES, BEDGEN_SWEEPS  server folders"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run the bedgen Gradio app.", epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 in a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true",
                        help="create a public gradio.live link (the app then runs in public mode)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = AppSettings.from_env(share=args.share)
    guard = GuardSettings.from_env(settings, args.host)
    for notice in settings.notices():
        print(f"bedgen app: {notice}", flush=True)
    demo = build_app(settings)
    demo.launch(
        server_name=args.host, server_port=args.port, share=args.share,
        auth=list(settings.auth) or None, max_file_size=f"{settings.max_upload_mb}mb", css=APP_CSS,
        # Hosts, login throttle and per-visitor work (bedgen.ui.guard), in front of every route.
        app_kwargs={"middleware": [middleware(guard, demo)]},
        # Gradio's start-up self-check fetches the page once with a 3 s timeout and stops the
        # app when that times out, which a busy CPU (a shared Space, a loaded test machine)
        # makes happen although the server is up; the server's own start is what counts.
        _frontend=False,
    )
