"""A registry that failed is left alone for a while: the front's view, shared by all workers.

When a job fails because its registry did not answer (timeout, stalled body, refused connection,
5xx/429 after the worker's retries, or a job abandoned at its deadline), further jobs for that
registry fail at once with the same cause for a pause that starts at ``FIRST_PAUSE`` and doubles
with each failure in a row, up to half the request timeout, so a fixed registry is tried again
well within one request timeout. The first success clears it.

This is also what keeps a failed read from being fetched twice: the kernel retries a failed
FUSE read at once (readahead, then a synchronous read of the same page), and that retry lands
inside the pause instead of asking the registry again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from lazylayer.shared.errors import LazyLayerError, RegistryError, RequestTimeoutError

#: the first pause after a failure: longer than the kernel's immediate retry of a read [s]
FIRST_PAUSE = 1.0


@dataclass
class _Failing:
    failures: int
    until: float
    last: str


def is_host_failure(exc: LazyLayerError) -> bool:
    """The registry, not the request, is at fault (workers mark such errors ``host_failure``)."""
    if isinstance(exc, RequestTimeoutError):  # unless it timed out in our own queue
        return not getattr(exc, "never_sent", False)
    if not isinstance(exc, RegistryError):
        return False
    status = getattr(exc, "status", None)
    return bool(getattr(exc, "host_failure", False)) or status == 429 or (status is not None and status >= 500)


class HostBackoff:
    """Per-registry pauses after failures (trio clock)."""

    def __init__(self, max_pause: float) -> None:
        self.max_pause = max_pause
        self._failing: dict[str, _Failing] = {}

    def check(self, registry: str) -> None:
        """Raise RegistryError while ``registry`` is paused."""
        failing = self._failing.get(registry)
        if failing is None:
            return
        left = failing.until - trio.current_time()
        if left > 0:
            raise RegistryError(f"registry {registry} is not asked again for {left:.1f} s after "
                                f"{failing.failures} failure(s) in a row; the last: {failing.last}")

    def failed(self, registry: str, exc: LazyLayerError) -> None:
        failures = self._failing[registry].failures + 1 if registry in self._failing else 1
        pause = min(self.max_pause, FIRST_PAUSE * 2 ** (failures - 1))
        self._failing[registry] = _Failing(failures, trio.current_time() + pause, str(exc))

    def succeeded(self, registry: str) -> None:
        self._failing.pop(registry, None)


class MirrorRanges:
    """What the workers found about mirrors' range support (workers/registry/rangesupport.py),
    kept by the front so every worker knows what one learnt: a mirror that answered a ranged
    read with the whole blob costs the origin a few MB per probe while it fills its cache, so a
    daemon's second worker must not probe it again. Replies bring each worker's view; jobs
    carry the marks still running (`marks`); `status` shows them."""

    def __init__(self) -> None:
        #: host -> (state, strikes, until on the trio clock)
        self._hosts: dict[str, tuple[str, int, float]] = {}

    def learn(self, reported: list[dict[str, Any]]) -> None:
        now = trio.current_time()
        for host in reported:
            self._hosts[host["host"]] = (host["state"], int(host["strikes"]), now + float(host["retry_in"]))

    def marks(self) -> list[list[Any]]:
        """``[host, strikes, seconds left]`` of the mirrors passed over now."""
        now = trio.current_time()
        return [[host, strikes, round(until - now, 2)] for host, (state, strikes, until) in self._hosts.items()
                if state == "full-body" and until > now]

    def status(self) -> list[dict[str, Any]]:
        now = trio.current_time()
        return [{"host": host, "state": state, "strikes": strikes, "retry_in": round(max(0.0, until - now), 1)}
                for host, (state, strikes, until) in sorted(self._hosts.items())]
