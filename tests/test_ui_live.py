"""Views that follow the visitor live: the λ slider flips through computed frames without the
model, and Generate streams x̂₀ previews while it samples. (The app and browser tests in
test_app.py and test_browser.py drive the same through HTTP and Chromium.)"""

from __future__ import annotations

import threading

import gradio as gr
import pytest
from PIL import Image

from bedgen.core.errors import BedgenError
from bedgen.ui.cache import PipelineCache
from bedgen.ui.generate import run_generate
from bedgen.ui.interpolate import Frames, nearest_frame
from bedgen.ui.settings import AppSettings
from bedgen.ui.stream import Done, StreamClosed, streamed


def _frames(n: int = 5) -> Frames:
    weights = tuple(i / (n - 1) for i in range(n))
    native = tuple(Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(n))
    shown = tuple(im.resize((256, 256)) for im in native)
    return Frames(weights, native, shown)


@pytest.mark.parametrize("weight, index", [(0.0, 0), (0.1, 0), (0.13, 1), (0.45, 2), (0.6, 2), (0.9, 4), (1, 4)])
def test_dragging_shows_the_computed_frame_nearest_the_slider(weight, index):
    frames = _frames()  # λ = 0, 0.25, 0.5, 0.75, 1
    native, shown, note = nearest_frame(frames, weight)
    assert native is frames.native[index] and shown is frames.shown[index]  # the display copy, as shown after a run
    if weight == frames.weights[index]:
        assert note == f"precomputed frame λ = {frames.weights[index]:.2f}"
    else:
        assert note == (f"nearest precomputed frame λ = {frames.weights[index]:.2f}; "
                        f"release to compute λ = {weight:.2f} exactly")


def test_before_any_interpolation_dragging_changes_no_image():
    native, shown, note = nearest_frame(None, 0.3)
    assert native == shown == gr.skip()
    assert "Interpolate first" in note and "λ = 0.30" in note


def test_a_stream_yields_the_updates_then_the_result_in_the_work_context():
    import contextvars

    mark = contextvars.ContextVar("mark")
    mark.set("the event's")

    def work(channel):
        for i in range(3):
            channel.send(i)
        return mark.get()  # Gradio's progress finds its event through context variables like this one

    assert list(streamed(work)) == [0, 1, 2, Done("the event's")]


def test_a_failure_in_the_work_comes_after_its_updates():
    def work(channel):
        channel.send("first")
        raise BedgenError("seed must be a whole number")

    stream = streamed(work)
    assert next(stream) == "first"
    with pytest.raises(BedgenError, match="seed must be"):
        next(stream)


def test_closing_the_stream_stops_the_work_at_its_next_step():
    sent, stopped, go_on = threading.Event(), threading.Event(), threading.Event()

    def work(channel):
        channel.send("preview")
        sent.set()
        go_on.wait(timeout=60)
        try:
            channel.check()  # the next denoising step
        except StreamClosed:
            stopped.set()
            raise
        return "finished for nobody"

    stream = streamed(work)
    assert next(stream) == "preview"
    stream.close()  # what Gradio does when the visitor cancels
    go_on.set()
    assert stopped.wait(timeout=60)


@pytest.fixture(scope="module")
def cache_and_settings(tiny_checkpoint):
    return PipelineCache(1), AppSettings(checkpoints=tiny_checkpoint.parent, default_model=str(tiny_checkpoint))


def test_generate_previews_x0_every_few_steps_then_returns_the_samples(cache_and_settings, tiny_checkpoint):
    cache, settings = cache_and_settings
    previews = []
    out = run_generate(cache, settings, str(tiny_checkpoint), 3, 16, "ddim", 2, False, on_preview=previews.append)
    # ceil(16 / 8) = every 2nd step and the last: 9 previews of both images, captioned by seed.
    assert len(previews) == 9
    assert all([caption for _, caption in p.gallery] == ["seed 3", "seed 4"] for p in previews)
    assert "step 1 of 16" in previews[0].status and "step 16 of 16" in previews[-1].status
    assert [caption for _, caption in out.gallery] == ["seed 3", "seed 4"] and out.trajectory == []
    with_trajectory = run_generate(cache, settings, str(tiny_checkpoint), 3, 16, "ddim", 2, True)
    assert len(with_trajectory.trajectory) == 9  # the same frames, when asked for
    assert [im.tobytes() for im, _ in with_trajectory.gallery] == [im.tobytes() for im, _ in out.gallery]
