"""How a failed event reaches the visitor and the log; every tab wires its events through :func:`listen`.

- The visitor sees the cause twice: in a pop-up (which Gradio closes after a while) and in
  the tab's status area, where it stays until the next run of that event.
- A user error (:class:`BedgenError`, ``gr.Error``: input the visitor can correct) is one line
  in the log; anything else is a bug: its traceback is logged once, and the visitor gets a
  one-line message that names no server path.
- Quoted values are clipped (:data:`QUOTE_LIMIT`), so a megabyte of junk sent as a model
  name is neither echoed back nor logged in full.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import re
import threading
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import gradio as gr
from gradio.context import LocalContext

from ..core.errors import BedgenError

log = logging.getLogger("bedgen.ui")

QUOTE_LIMIT = 80  # characters of a quoted value kept in a message
MESSAGE_LIMIT = 400  # characters of a whole message
# A quoted value: opened and closed by the same quote, neither inside a word ("the model's").
QUOTED = re.compile(r"(?<!\w)(['\"])([^'\"\n]{%d,}?)\1(?!\w)" % (QUOTE_LIMIT + 1))
CODE = re.compile(r"`([^`]+)`")


def clip(text: str, limit: int = QUOTE_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, an ellipsis marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def clipped_message(error: BaseException) -> str:
    """The error's message on one line, its quoted values and its length clipped."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = QUOTED.sub(lambda m: m.group(1) + clip(m.group(2)) + m.group(1), text)
    return clip(text, MESSAGE_LIMIT)


def toast_text(message: str) -> str:
    """A message for Gradio's pop-up, which renders HTML and is also what API clients read:
    Markdown's backticks dropped (the status area renders them), ``&`` and ``<`` escaped."""
    return CODE.sub(r"\1", message).replace("&", "&amp;").replace("<", "&lt;")


class _Failures:
    """The last failure of each (visitor session, event), until the tab's status area shows it."""

    def __init__(self, capacity: int = 1024):
        self.capacity = capacity  # clients that never read theirs (API callers) cannot grow it
        self._items: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, key: tuple[str, int], text: str) -> None:
        with self._lock:
            self._items[key] = text
            self._items.move_to_end(key)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def pop(self, key: tuple[str, int]) -> str | None:
        with self._lock:
            return self._items.pop(key, None)


_failures = _Failures()
_event_ids = itertools.count()


def _session() -> str | None:
    request = LocalContext.request.get(None)
    return getattr(request, "session_hash", None)


@dataclass(frozen=True)
class RefusedInput:
    """What an input component hands the event instead of a value it refused to read; the
    event fails with ``message`` as a user error (see :func:`reported`)."""

    message: str


def reported(fn: Callable[..., Any], what: str, event_id: int | None = None) -> Callable[..., Any]:
    """``fn`` raising every failure as a one-line ``gr.Error``, logged as described above.

    ``what`` names the work in messages ("generation"); ``event_id`` (from :func:`listen`)
    keeps the message for the tab's status area. A generator function (an event that streams
    updates) stays one, so Gradio still streams it; a failure between two updates is reported
    the same way.
    """
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                _refuse_refused_inputs(args, kwargs)
                yield from fn(*args, **kwargs)
            except Exception as error:  # GeneratorExit (Gradio closing a stream) is no failure: it passes
                raise _reported_error(error, what, event_id) from None

        return stream

    @functools.wraps(fn)  # Gradio reads the signature (gr.Progress, gr.Request) through __wrapped__
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            _refuse_refused_inputs(args, kwargs)
            return fn(*args, **kwargs)
        except Exception as error:
            raise _reported_error(error, what, event_id) from None

    return run


def _refuse_refused_inputs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, RefusedInput):
            raise BedgenError(value.message)


def _reported_error(error: Exception, what: str, event_id: int | None) -> gr.Error:
    """The ``gr.Error`` the visitor sees for ``error``, logged, and kept for the status area."""
    if isinstance(error, (BedgenError, gr.Error)):
        message = clipped_message(error.message if isinstance(error, gr.Error) else error)
        log.warning("%s refused: %s", what, message)
    else:
        log.error("%s failed\n%s", what, _traceback(error))
        message = f"{what} failed unexpectedly (a bug); the app's log has the details"
    session = _session()
    if event_id is not None and session is not None:
        _failures.put((session, event_id), message)
    return gr.Error(toast_text(message), print_exception=False)


def _traceback(error: BaseException) -> str:
    """The error's traceback, each of its lines clipped: the message may quote a request's values."""
    lines = "".join(traceback.format_exception(error)).splitlines()
    return "\n".join(clip(line, MESSAGE_LIMIT) for line in lines)


def listen(trigger: Callable[..., Any], fn: Callable[..., Any], inputs: Any, outputs: Any, *, what: str,
           status: gr.Markdown, clear_on_success: bool = False, **options: Any) -> Any:
    """``trigger(fn, inputs, outputs, **options)`` (e.g. ``button.click``) with ``fn`` wrapped by
    :func:`reported`, and the failure's message written into ``status``, where it stays.

    ``clear_on_success`` empties ``status`` when the event succeeds (for a message area that
    is not among the event's outputs). Returns the event, for chaining.
    """
    event_id = next(_event_ids)
    event = trigger(reported(fn, what, event_id), inputs, outputs, **options)
    # The failure also completes the failed event's other outputs: no bare "Error" badge stays on them.
    others = [c for c in _as_list(outputs) if c is not status]

    def show_failure(request: gr.Request) -> tuple[Any, ...]:
        message = _failures.pop((request.session_hash, event_id))
        # None: Gradio refused the request before bedgen's code ran (an input it checks, a full queue).
        text = f"⚠️ {message}" if message else f"⚠️ {what} did not run: the pop-up said why"
        return (text, *[gr.skip()] * len(others))

    quiet = {"queue": False, "show_progress": "minimal", "api_visibility": "private"}
    event.failure(show_failure, None, [status, *others], **quiet)
    if clear_on_success:
        event.success(lambda: "", None, status, **quiet)
    return event


def _as_list(components: Any) -> list[Any]:
    if components is None:
        return []
    return list(components) if isinstance(components, (list, tuple, set)) else [components]
