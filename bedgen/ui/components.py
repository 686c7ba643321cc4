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


class ImageUpload(gr.Image):
    """An image input that hands bedgen the uploaded file's path, undecoded.

    Stock ``gr.Image`` opens every upload with PIL before the event runs, so a
    non-image, a truncated file or a decompression bomb fails inside Gradio with a
    generic message. bedgen decodes it instead (``bedgen.images.load_image``) and
    says what is wrong. Base64 data URLs (clipboard) are passed on as bytes.
    """

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        if payload is None:
            return None
        if payload.path:
            return payload.path
        if payload.url and payload.url.startswith("data:"):
            import base64

            return base64.b64decode(payload.url.split(",", 1)[-1])
        return None


def gallery_image(gallery: Any, index: Any = 0) -> Any:
    """The image at ``index`` of a Gallery value (list of (image, caption)), or None."""
    if not gallery:
        return None
    try:
        i = int(index or 0)
    except (TypeError, ValueError):
        i = 0
    item = gallery[i] if 0 <= i < len(gallery) else gallery[0]
    return item[0] if isinstance(item, (tuple, list)) else item


def on_gpu(fn: Any) -> Any:
    """GPU work of an event. On a ZeroGPU Space the ``spaces`` package is installed and its
    ``GPU`` decorator attaches a GPU for the duration of the call; elsewhere ``fn`` runs as is
    (CUDA is then used whenever present, through bedgen's device selection)."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
