"""Where a loaded model's networks live, shared safely by concurrent requests.

The app keeps one pipeline per model and may run several requests on it at once
(``BEDGEN_CONCURRENCY``). Networks are moved to a device only when no request is
running on them: a request that needs another device waits for the running ones to
finish, then moves the networks; requests for the device they are on run side by side.
Nothing else about a request is stored on the pipeline.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from ..core.device import Placement


class SharedPlacement:
    """``channels_last(placement)``: whether the networks' weights go in channels_last on that
    placement's device (the layout the engine that runs them there reads fastest)."""

    def __init__(self, networks: Callable[[], list[torch.nn.Module]],
                 channels_last: Callable[[Placement], bool] = lambda placement: False):
        self._networks, self._channels_last = networks, channels_last
        self._current: Placement | None = None
        self._running = 0
        self._changed = threading.Condition()

    @contextmanager
    def use(self, placement: Placement) -> Iterator[Placement]:
        """Run a request on ``placement``'s device; the networks stay there until it ends."""
        with self._changed:
            while self._running and not self._on(placement):
                self._changed.wait()
            if not self._on(placement):
                self._move(placement)
            self._current = placement
            self._running += 1
        try:
            yield placement
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def forget(self) -> None:
        """Move the networks again on next use (after their weights were edited in place)."""
        with self._changed:
            self._current = None

    def _on(self, placement: Placement) -> bool:
        return self._current is not None and self._current.device == placement.device

    def _move(self, placement: Placement) -> None:
        layout = torch.channels_last if self._channels_last(placement) else torch.contiguous_format
        for network in self._networks():
            network.to(device=placement.device, memory_format=layout)
