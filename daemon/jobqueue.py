"""The worker pool's queued jobs: one queue per priority, and within one, by rank.

Why ranks: a prefetch is cut into pieces, all submitted at once (daemon/remote.py), in the order a
container's start reads them. In one first-in-first-out queue per priority, a layer resolved later
queued its first pieces behind every piece of the layers resolved before it: with prefetch on,
the app image's rootfs (the interpreter and libc, the first files a start reads) registers last,
and its first piece left 65-75 ms after it was planned, behind the python layer's, while the
app's first read waited for it. A piece's rank is its place in its layer's range, so the first
pieces of every layer go before the later pieces of any; equal ranks keep their submission order,
and jobs that are not pieces (rank 0) go with the first pieces.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterator
from typing import Generic, Protocol, TypeVar


class Priority(enum.IntEnum):
    """Lower value = served first."""

    FOREGROUND = 0
    PREFETCH = 1
    BACKGROUND = 2


class Queueable(Protocol):
    priority: Priority
    #: lower ranks of one priority are sent first
    rank: int
    queued: bool


J = TypeVar("J", bound=Queueable)


class JobQueues(Generic[J]):
    """Jobs waiting for a worker slot, by priority, then rank, then arrival."""

    def __init__(self) -> None:
        self._queues: dict[Priority, deque[J]] = {p: deque() for p in Priority}

    def push(self, job: J, *, front: bool = False) -> None:
        """Queue ``job`` behind those of its priority with a rank no higher, or with ``front``
        (a job handed back by a worker that died) ahead of all of them."""
        queue = self._queues[job.priority]
        if front:
            queue.appendleft(job)
        else:
            at = len(queue)
            while at and queue[at - 1].rank > job.rank:
                at -= 1
            queue.insert(at, job)
        job.queued = True

    def remove(self, job: J) -> None:
        if job.queued:
            self._queues[job.priority].remove(job)
            job.queued = False

    def by_priority(self) -> Iterator[tuple[Priority, deque[J]]]:
        """Each priority's queue, the first served first; each in the order jobs are sent."""
        return iter(self._queues.items())

    def waiting(self, priority: Priority) -> int:
        return len(self._queues[priority])
