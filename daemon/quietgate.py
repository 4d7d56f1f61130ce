"""When background work may run: no foreground job live, and none for ``quiet_period`` after the
last one ended (upstream's background fetcher pauses the same way, 5 s by default).

The pool counts its foreground jobs here and asks `is_open` before it dispatches a BACKGROUND
job. Background work also waits in `wait_open` before it even plans: a layer's background walk
first reads the layer's whole chunk list (~0.1 s of CPU per 20,000 chunks), and a container
start, when every core is busy registering and reading, is when that would hurt most.
"""

from __future__ import annotations

import math

import trio


class QuietGate:
    """Foreground activity and the quiet period after it. Methods run in the trio thread."""

    def __init__(self, quiet_period: float) -> None:
        self.quiet_period = quiet_period
        #: foreground jobs live now
        self.live = 0
        self._last_end = -math.inf
        self._ended = trio.Event()

    @property
    def opens_at(self) -> float:
        """When background work may start if no foreground job comes (inf while one is live)."""
        return math.inf if self.live else self._last_end + self.quiet_period

    def is_open(self, now: float) -> bool:
        return now >= self.opens_at

    def started(self) -> None:
        self.live += 1

    def ended(self) -> None:
        self.live -= 1
        self._last_end = trio.current_time()
        self._ended.set()
        self._ended = trio.Event()

    async def wait_open(self) -> None:
        """Return once `is_open`; each foreground job that ends restarts the quiet period."""
        while not self.is_open(trio.current_time()):
            ended = self._ended
            with trio.move_on_at(self.opens_at):
                await ended.wait()
