"""The Train tab's "Push to the Hub": publish the tab's finished run as ``bedgen push`` does.

Built only inside the Train tab, so an app without training has no push route at all. The
push is :func:`bedgen.sharing.publish.push_model` itself (token check, redaction, card, one
commit); the token is the server's (``HF_TOKEN`` or ``hf auth login``), never taken from
or shown to the page, so whoever may train here may publish with it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from ..core.errors import BedgenError
from .errors import listen
from .security import without_server_paths
from .settings import AppSettings

if TYPE_CHECKING:
    from ..sharing.publish import PushResult



def push_run(settings: AppSettings, finished_run: Callable[[], Path], repo: Any, private: Any,
             progress: Callable[[int, int, str], None] | None = None) -> "PushResult":
    """Push the tab's last run, once it has stopped, to ``repo`` (ORG/NAME); raises BedgenError."""
    from ..sharing.publish import check_repo_id, push_model

    repo_id = check_repo_id(repo, "repo name")
    if not isinstance(private, bool):
        raise BedgenError(f"private must be true or false, got {private!r}")
    run = finished_run()
    try:
        return push_model(run, repo_id, private=private, progress=progress)
    except BedgenError as e:  # e.g. "'<run folder>' has no checkpoint yet": name it as the page knows it
        raise BedgenError(without_server_paths(str(e), [settings.checkpoints])) from e


def push_summary(result: "PushResult") -> str:
    """The repo as a link, what the push did, and the model ref to load it with."""
    done = (f"pushed {len(result.files)} files in commit `{result.commit[:12]}`" if result.changed
            else "the repo already held these files: no new commit")
    visibility = "private" if result.private else "public"
    return (f"[{result.url}]({result.url}) — {done} ({visibility}); in the Generate tab as "
            f"`{result.ref}`")


def build_push_section(settings: AppSettings, finished_run: Callable[[], Path], model_dropdown: gr.Dropdown
                       ) -> gr.Accordion:
    """Lay out the section and wire its event; returns it so the status poll can show it once a run stops.
    ``finished_run`` gives the stopped run's folder (BedgenError while none has stopped)."""
    from .generate import model_choices

    with gr.Accordion("Push to the Hub", open=True, visible=False, elem_id="push-section") as section:
        gr.Markdown("Publishes the run above (its latest EMA checkpoint, a sample grid, the loss curve and a "
                    "model card; no local paths or secrets) like `bedgen push`, with the server's Hugging Face "
                    "token (`HF_TOKEN` or `hf auth login`), which this page never sees.")
        with gr.Row():
            repo = gr.Textbox(label="Repo (ORG/NAME)", placeholder="my-name/bedrooms-tiny", elem_id="push-repo",
                              scale=3)
            private = gr.Checkbox(False, label="Private", elem_id="push-private", scale=1)
        button = gr.Button("Push to the Hub", variant="primary", elem_id="push-button")
        result = gr.Markdown(elem_id="push-result")

    def on_push(repo_id, is_private, progress=gr.Progress()):
        def report(done: int, total: int, stage: str) -> None:
            progress((done, total), desc=stage)

        pushed = push_run(settings, finished_run, repo_id, is_private, report)
        return push_summary(pushed), gr.Dropdown(choices=model_choices(settings))

    # One push at a time: it samples the grid and uploads; Generate keeps its own slots.
    # Errors: one line in `result` (bedgen.ui.errors); a bug's traceback goes to the log only.
    listen(button.click, on_push, [repo, private], [result, model_dropdown], what="pushing", status=result,
           api_name="push_to_hub", concurrency_limit=1, concurrency_id="push")
    return section
