"""A small, thread-safe, least-recently-used cache of loaded pipelines."""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..sampling.pipeline import Pipeline, load
from .security import ModelPolicy


class PipelineCache:
    """Every request's model goes through here, so the policy (what a public app may load)
    is checked in one place and memory stays bounded by ``capacity`` pipelines."""

    def __init__(self, capacity: int, policy: ModelPolicy | None = None):
        self.capacity = max(1, capacity)
        self.policy = policy
        self._items: OrderedDict[str, Pipeline] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, ref: str) -> Pipeline:
        ref = self.policy.check(ref) if self.policy is not None else ref.strip()
        with self._lock:
            if ref in self._items:
                self._items.move_to_end(ref)
                return self._items[ref]
            ref_lock = self._loading.setdefault(ref, threading.Lock())
        try:
            with ref_lock:  # two requests for one model load it once
                with self._lock:
                    if ref in self._items:
                        return self._items[ref]
                pipe = load(ref)
                if self.policy is not None:
                    self.policy.check_loaded(ref, pipe.info.path)
                with self._lock:
                    self._items[ref] = pipe
                    while len(self._items) > self.capacity:
                        self._items.popitem(last=False)  # evict the least recently used
                return pipe
        finally:
            # Loaded or failed, the lock has done its job: the table holds only loads in
            # progress, so refs that fail to load cannot make it grow.
            with self._lock:
                if self._loading.get(ref) is ref_lock:
                    del self._loading[ref]

    def __contains__(self, ref: str) -> bool:
        with self._lock:
            return ref.strip() in self._items

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
