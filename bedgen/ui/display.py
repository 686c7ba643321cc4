"""Small images shown large in the browser, while every other use keeps their pixels.

A 32 px sample shown at its size is a speck. Gradio serves one file per image, to show and
to download alike, so each output has two components:

- the native one (an event's API output, what "use this image" hands to another tab, and
  the downloads, in a closed "native size" accordion), and
- a display copy (:class:`DisplayGallery`, :class:`DisplayImage`) enlarged by a whole factor
  with NEAREST, so pixels stay sharp squares and nothing is invented. Display copies are
  outside the API (``skip_api``): clients get the model's own pixels, as before.

A note about what is shown (:func:`display_note`) is outside the API the same way.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gradio as gr
from PIL import Image

DISPLAY_MIN_PX = 256  # the short side of an image as shown


def enlarged(image: Image.Image | None) -> Image.Image | None:
    """``image`` scaled up by the smallest whole factor that makes its short side at least
    :data:`DISPLAY_MIN_PX` (itself when it is already that large)."""
    if image is None:
        return None
    factor = math.ceil(DISPLAY_MIN_PX / max(1, min(image.size)))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def enlarged_items(items: Sequence[tuple[Image.Image, str]]) -> list[tuple[Image.Image, str]]:
    """Gallery items (image, caption) with their images enlarged."""
    return [(enlarged(image), caption) for image, caption in items]


class DisplayGallery(gr.Gallery):
    """A Gallery shown in the browser only (made by :func:`display_gallery`)."""

    is_template = True

    @property
    def skip_api(self) -> bool:
        return True


class DisplayImage(gr.Image):
    """An Image shown in the browser only (made by :func:`display_image`)."""

    is_template = True

    @property
    def skip_api(self) -> bool:
        return True


class DisplayNote(gr.Markdown):
    """A Markdown line shown in the browser only (made by :func:`display_note`)."""

    is_template = True

    @property
    def skip_api(self) -> bool:
        return True


# No drop zone, and no download: the native component next to it has that. (Set here, not in
# an __init__ of the classes: Gradio sends the browser the props named in __init__'s signature.)
DISPLAY_OPTIONS = {"interactive": False, "buttons": ["fullscreen"], "format": "png"}


def display_gallery(**options: Any) -> DisplayGallery:
    return DisplayGallery(**{**DISPLAY_OPTIONS, **options})


def display_image(**options: Any) -> DisplayImage:
    return DisplayImage(**{**DISPLAY_OPTIONS, **options})


def display_note(**options: Any) -> DisplayNote:
    return DisplayNote(**options)
