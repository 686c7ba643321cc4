"""Assemble the Gradio Blocks app from the tabs; no model logic lives here."""

from __future__ import annotations

import argparse

import gradio as gr

from .cache import PipelineCache
from .generate import build_generate_tab
from .train import build_train_tab
from .settings import AppSettings

INTRO = """# bedgen — diffusion models of bedrooms
Generate LSUN-Bedroom-style rooms from a seed. Every image is reproducible from its seed;
the first run of a Hub model downloads it once.
"""


def build_app(settings: AppSettings | None = None) -> gr.Blocks:
    settings = settings or AppSettings.from_env()
    cache = PipelineCache(settings.model_cache_size)
    with gr.Blocks(title="bedgen") as demo:
        gr.Markdown(INTRO)
        with gr.Tab("Generate"):
            generate = build_generate_tab(settings, cache)
        if settings.training_enabled:
            with gr.Tab("Train"):
                build_train_tab(settings, generate["model"])
    demo.queue(max_size=settings.queue_size, default_concurrency_limit=settings.concurrency)
    return demo


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Run the bedgen Gradio app.")
    parser.add_argument("--host", default=None, help="address to bind (default 127.0.0.1; 0.0.0.0 in a Space)")
    parser.add_argument("--port", type=int, default=None, help="port (default 7860 or $GRADIO_SERVER_PORT)")
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    build_app().launch(server_name=args.host, server_port=args.port, share=args.share)
