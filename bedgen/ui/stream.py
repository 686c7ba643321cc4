"""Work that reports through callbacks while it runs, streamed to the browser as it reports.

Gradio streams an event's updates from a generator function, one update per ``yield``; bedgen's
sampling instead calls back (progress, previews) from inside one long call. :func:`streamed`
runs that call in a thread and yields what it sends.
"""

from __future__ import annotations

import contextvars
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

R = TypeVar("R")


class StreamClosed(Exception):
    """Raised inside the work when nobody reads its stream any more, to stop it."""


@dataclass(frozen=True)
class Done(Generic[R]):
    """The work's return value: the stream's last item."""

    value: R


class Channel:
    """What the work sends its updates through."""

    def __init__(self) -> None:
        self._items: queue.Queue[tuple[bool, Any]] = queue.Queue()
        self._closed = threading.Event()

    def send(self, update: Any) -> None:
        self.check()
        self._items.put((False, update))

    def check(self) -> None:
        """Stop the work (raise :class:`StreamClosed`) if its stream was closed; call it every step."""
        if self._closed.is_set():
            raise StreamClosed("the stream was closed: its client cancelled or left")

    def _end(self, last: Any) -> None:
        self._items.put((True, last))

    def _receive(self) -> tuple[bool, Any]:
        return self._items.get()

    def _close(self) -> None:
        self._closed.set()


def streamed(work: Callable[[Channel], R]) -> Iterator[Any]:
    """Run ``work(channel)`` in a thread; yield each update it sends, then ``Done(its result)``.

    An exception of the work is raised here, after the updates sent before it. The thread
    runs in a copy of this context: Gradio finds an event's progress bar through context
    variables, and bedgen.ui.guard stops an event whose client is gone from inside that
    progress call. Closing this generator (Gradio does when the visitor cancels) makes the
    work's next ``send`` or ``check`` raise, so it stops at its next step instead of
    finishing for nobody; closing does not wait for it, as Gradio closes streams on its
    event loop.
    """
    channel = Channel()

    def run() -> None:
        try:
            channel._end(Done(work(channel)))
        except BaseException as error:  # noqa: BLE001 - handed to the reader, who raises it
            channel._end(error)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(run,), name="bedgen-stream", daemon=True).start()
    try:
        while True:
            last, item = channel._receive()
            if isinstance(item, BaseException):
                raise item
            yield item
            if last:
                return
    finally:
        channel._close()
