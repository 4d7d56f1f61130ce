"""pyfuse3's request loop without a trip through trio's scheduler per request.

pyfuse3 waits for each FUSE request with ``async with read_lock: await wait_readable(fd)``:
an uncontended trio.Lock still yields to the scheduler, a released one hands itself to a parked
reader (a task switch), and wait_readable registers the fd with epoll, yields, and unregisters
it. When requests come back to back and are served from what the front holds (a warm ``find``:
opendir, readdir, releasedir of every directory), that was about a quarter of the front's CPU.
pyfuse3 looks trio up through its module attribute ``pyfuse3.trio`` (its asyncio mode swaps it
the same way), so `install` gives it a namespace that is trio but for those two: a lock that the
task coming back takes again without yielding, and a wait that asks poll(2) first and returns at
once when a request is already queued. Every ``YIELD_EVERY`` requests it still waits through
trio, so replies that other tasks wait for (worker answers, timers) are not starved by a stream
of requests, and after every burst of GETATTRs daemon/attrcache.c served without Python.
"""

from __future__ import annotations

import ctypes
import select
import types
from typing import Any

import pyfuse3
import trio

from lazylayer.daemon import dircache

#: requests taken without a scheduler round before the next one waits through trio
YIELD_EVERY = 16


class _ReadLock:
    """Mutual exclusion for pyfuse3's readers that lets the task coming back from a request take
    the free lock again without a task switch. A release wakes one parked reader, at most one per
    scheduler round: if the releasing task went on to block (a read waiting for a fetch), that
    reader takes the lock and reads the next request; if the lock was taken again meanwhile, it
    parks again."""

    def __init__(self) -> None:
        self._held = False
        self._waking = False
        self._lot = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        while self._held:
            try:
                await self._lot.park()
            finally:
                self._waking = False
        self._held = True

    async def __aexit__(self, *exc: object) -> None:
        self._held = False
        if self._lot and not self._waking:
            self._waking = True
            self._lot.unpark()


class _Readiness:
    """wait_readable for the FUSE fd: poll(2) with no timeout first."""

    def __init__(self, burst_ended: ctypes.c_int | None) -> None:
        self._polls: dict[int, Any] = {}
        self._credit = YIELD_EVERY
        self._burst_ended = burst_ended

    async def wait_readable(self, fd: int) -> None:
        poller = self._polls.get(fd)
        if poller is None:
            poller = self._polls[fd] = select.poll()
            poller.register(fd, select.POLLIN)
        if self._burst_ended is not None and self._burst_ended.value:
            self._burst_ended.value = 0
            self._credit = 0
        if self._credit and poller.poll(0):
            self._credit -= 1
            return
        self._credit = YIELD_EVERY
        await trio.lowlevel.wait_readable(fd)


class _Namespace(types.SimpleNamespace):
    """Attributes set here, everything else from ``fallback``."""

    def __init__(self, fallback: Any, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._fallback = fallback

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


def install() -> None:
    """Point pyfuse3 at the fast lock and wait (before `pyfuse3.main`)."""
    readiness = _Readiness(dircache.burst_ended_flag())
    lowlevel = _Namespace(trio.lowlevel, wait_readable=readiness.wait_readable)
    pyfuse3.trio = _Namespace(trio, Lock=_ReadLock, lowlevel=lowlevel)  # type: ignore[attr-defined]
