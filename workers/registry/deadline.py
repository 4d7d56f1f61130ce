"""The deadline of the job a thread is running, for every wait on a registry to respect.

The front waits ``workers.request_timeout`` for a job (queueing and re-dispatch included) and
sends the job the time it has left. The worker runs the handler inside `job_deadline`; the
registry client then clips each connect, each body read and each retry backoff to what is left,
so a hung or stalled registry costs a job its own budget - never more, never a second fetch
after the front stopped waiting. Outside a job (the CLI) there is no deadline.

A job is also *urgent* or not (`urgency`): a reader waits for it (a demand read, a layer
resolve) or nobody does yet (prefetch, read-ahead). The client lets only urgent reads go to the
origin beside a pull-through cache that is still filling (client.py, README "Running a fleet").
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from typing import Iterator

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("job_deadline", default=math.inf)
_urgent: contextvars.ContextVar[bool] = contextvars.ContextVar("job_urgent", default=True)


@contextlib.contextmanager
def job_deadline(seconds: float | None) -> Iterator[None]:
    """Run the body with a deadline ``seconds`` from now (None: none) in this thread."""
    token = _deadline.set(math.inf if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


@contextlib.contextmanager
def urgency(urgent: bool) -> Iterator[None]:
    """Run the body as an urgent job or not (outside any: urgent, as the CLI's reads are)."""
    token = _urgent.set(urgent)
    try:
        yield
    finally:
        _urgent.reset(token)


def urgent() -> bool:
    return _urgent.get()


def remaining() -> float:
    """Seconds left before the current job's deadline (inf without one; <= 0 once it passed)."""
    return _deadline.get() - time.monotonic()

