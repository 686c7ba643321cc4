"""Progress bars for long commands: tqdm on stderr, opened on first use."""

from __future__ import annotations

import sys


class TqdmProgress:
    """A ``progress(done, total)`` callback drawing a tqdm bar, opened on first use
    so that argument errors found before any work print no empty bar."""

    def __init__(self, desc: str, unit: str):
        self.desc, self.unit, self.bar = desc, unit, None

    def __call__(self, done: int, total: int) -> None:
        from tqdm import tqdm

        if self.bar is None:
            self.bar = tqdm(total=total, desc=self.desc, unit=self.unit, file=sys.stderr)
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "TqdmProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()


class StageProgress:
    """A ``progress(done, total, stage)`` callback with one tqdm bar per stage (e.g. reference, samples)."""

    def __init__(self, unit: str = "img"):
        self.unit, self.stage, self.bar = unit, None, None

    def __call__(self, done: int, total: int, stage: str) -> None:
        if stage != self.stage:
            self.__exit__()
            self.stage, self.bar = stage, TqdmProgress(stage, self.unit)
        self.bar(done, total)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__()
