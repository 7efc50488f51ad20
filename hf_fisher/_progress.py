"""Progress reporting as an injected callback, so that computing modules never render anything.

A measurement takes ``progress: ProgressCallback | None`` and calls it as units of its work
finish; the caller decides what to show (the runner draws a tqdm bar, tests record the calls).
"""

from __future__ import annotations

from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]
"""``progress(done, total)``: ``done`` of ``total`` units of work have finished."""


class Steps:
    """Counts finished units of work and reports each to an optional callback.

    >>> seen = []
    >>> steps = Steps(lambda done, total: seen.append((done, total)), total=3)
    >>> steps.advance(); steps.advance(2); seen
    [(1, 3), (3, 3)]
    >>> Steps(None, total=2).advance()  # no callback: nothing to report
    """

    def __init__(self, progress: ProgressCallback | None, total: int) -> None:
        self.progress = progress
        self.total = total
        self.done = 0

    def advance(self, count: int = 1) -> None:
        """Mark ``count`` more units as finished."""
        self.done += count
        if self.progress is not None:
            self.progress(self.done, self.total)
