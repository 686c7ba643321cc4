"""Gradio inputs whose values bedgen validates itself.

Gradio's own Slider/Number checks say "Value 0 is less than minimum value 1"
without naming the field, and Number(precision=0) silently rounds 1.5 to 2.
These subclasses pass the raw value through so the tab's typed function can
reject it with a message that names the field. ``is_template`` makes the
browser render them as the stock components.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from typing import Any

import gradio as gr
from gradio.context import LocalContext

from ..config.overrides import short_repr
from .errors import RefusedInput
from .security import inside


class RawSlider(gr.Slider):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


class RawNumber(gr.Number):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return payload


def _within_choices(component: Any, preprocess: Any, payload: Any) -> Any:
    """Gradio refuses a value outside a choice component's choices by quoting the value and
    every choice in full, with a logged traceback: a megabyte sent as a sampler name came
    back (and went into the log) whole. The refusal goes to the event instead, one clipped
    line naming the field (bedgen.ui.errors)."""
    try:
        return preprocess(payload)
    except (gr.Error, TypeError):
        return RefusedInput(f"{component.label or 'the choice'} must be one of the listed choices, "
                            f"got {short_repr(payload)}")


# Templates name their stock component as their first base class (the browser renders that one),
# so each subclasses the stock component directly.
class Choice(gr.Dropdown):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return _within_choices(self, super().preprocess, payload)


class Options(gr.Radio):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return _within_choices(self, super().preprocess, payload)


class Checkboxes(gr.CheckboxGroup):
    is_template = True

    def preprocess(self, payload: Any) -> Any:
        return _within_choices(self, super().preprocess, payload)


class ImageUpload(gr.Image):
    """An image input that hands bedgen the uploaded file's path, undecoded.

    Stock ``gr.Image`` opens every upload with PIL before the event runs, so a
    non-image, a truncated file or a decompression bomb fails inside Gradio with a
    generic message. bedgen decodes it instead (``bedgen.core.images.load_image``) and
    says what is wrong. Base64 data URLs (clipboard) are passed on as bytes, within
    the upload size limit.

    A request may name any path in a file dict, and Gradio checks only those that
    carry its FileData marker; so this component, in and out, holds only files Gradio
    stored for this app (its upload and cache folder, ``GRADIO_TEMP_DIR``). Every other
    path gets one error, the same whether it exists or not: no file-existence oracle.
    """

    is_template = True

    def preprocess(self, payload: Any) -> Any:
        # A refusal is handed to the event, which reports it like its own errors (bedgen.ui.errors):
        # raised here, Gradio would show it only in a pop-up that closes after a while.
        try:
            return self._read(payload)
        except gr.Error as refused:
            return RefusedInput(refused.message)

    def _read(self, payload: Any) -> Any:
        if payload is None:
            return None
        if payload.path:
            return self._stored(payload.path)
        if payload.url and payload.url.startswith("data:"):
            return self._decode_data_url(payload.url)
        return None

    def postprocess(self, value: Any) -> Any:
        # A path returned into this input ("use last generated image") is copied into the
        # cache and served: it must already be one of this app's files.
        if isinstance(value, (str, Path)):
            value = self._stored(value)
        return super().postprocess(value)

    def _stored(self, path: "str | Path") -> str:
        try:
            resolved = Path(path).resolve()
            if inside(resolved, Path(self.GRADIO_CACHE)) and resolved.is_file():
                return str(resolved)
        except (OSError, ValueError, RuntimeError):  # NUL bytes, names too long, link loops
            pass
        raise gr.Error(
            f"{self._name()} must be an image uploaded to this app (uploads expire after a while); upload it again",
            print_exception=False,
        )

    def _decode_data_url(self, url: str) -> bytes:
        encoded = url.split(",", 1)[-1]
        limit = getattr(LocalContext.blocks.get(None), "max_file_size", None)  # launch(max_file_size=...)
        if limit is not None and len(encoded) // 4 * 3 > limit:  # the decoded size, known before decoding
            raise gr.Error(
                f"{self._name()} is a {len(encoded) // 4 * 3 / 2**20:.1f} MB data URL, over this app's "
                f"{limit / 2**20:g} MB upload limit; downscale the image", print_exception=False,
            )
        try:
            return base64.b64decode(encoded, validate=True)
        except binascii.Error:
            raise gr.Error(f"{self._name()} is not a valid base64 data URL", print_exception=False) from None

    def _name(self) -> str:
        return self.label or "the image"


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
