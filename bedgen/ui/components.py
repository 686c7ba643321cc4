"""Gradio inputs whose values bedgen validates itself.

Gradio's own Slider/Number checks say "Value 0 is less than minimum value 1"
without naming the field, and Number(precision=0) silently rounds 1.5 to 2.
These subclasses pass the raw value through so the tab's typed function can
reject it with a message that names the field. ``is_template`` makes the
browser render them as the stock components.
"""

from __future__ import annotations

from typing import Any

import gradio as gr


class RawSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class RawNumber(gr.Number):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload
