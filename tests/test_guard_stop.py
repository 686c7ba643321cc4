"""The guard's stop of work whose client is gone, on a minimal Gradio app in this process.

Gradio ends a streaming event whose client has left at the event's next yield, without an
error and without a progress report. The guard used to say "stopped" only from inside a
progress report, so a stream that ended this way went unlogged; which of the two comes first
in bedgen's Generate is a race. Here the event never reports progress, so only the yield path
can end it, deterministically.
"""

from __future__ import annotations

import time

import httpx

from conftest import free_port

DEADLINE_S = 60  # an upper bound against hanging, never an expected duration


def test_a_stream_dropped_at_its_next_yield_is_logged_as_stopped(capfd):
    import gradio as gr

    from bedgen.ui.guard import GuardSettings, middleware

    yielded = []

    def count():
        for i in range(100_000):
            yielded.append(i)
            time.sleep(0.02)
            yield str(i)

    with gr.Blocks() as demo:
        shown = gr.Textbox()
        gr.Button().click(count, None, shown, api_name="count")
    port = free_port()
    demo.launch(server_port=port, prevent_thread_lock=True, quiet=True, _frontend=False,
                app_kwargs={"middleware": [middleware(GuardSettings(public=False), demo)]})
    try:
        base = f"http://127.0.0.1:{port}/gradio_api/call/count"
        with httpx.Client(timeout=30) as client:
            event = client.post(base, json={"data": []}).json()["event_id"]
            with client.stream("GET", f"{base}/{event}") as response:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        break  # the first yield arrived: the event runs; leave without reading on
        log, deadline = "", time.monotonic() + DEADLINE_S
        while "stopped count from 127.0.0.1: its client is gone" not in log:
            assert time.monotonic() < deadline, f"no 'stopped' line; the log was:\n{log[-2000:]}"
            time.sleep(0.2)
            log += capfd.readouterr().out
        at_stop = len(yielded)
        time.sleep(0.5)
        assert len(yielded) == at_stop  # and the work did stop
    finally:
        demo.close()
