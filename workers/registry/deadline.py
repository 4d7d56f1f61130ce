"""The deadline of the job a thread is running, for every wait on a registry to respect.

The front waits ``workers.request_timeout`` for a job (queueing and re-dispatch included) and
sends the job the time it has left. The worker runs the handler inside `job_deadline`; the
registry client then clips each connect, each body read and each retry backoff to what is left,
so a hung or stalled registry costs a job its own budget - never more, never a second fetch
after the front stopped waiting. Outside a job (the CLI) there is no deadline.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import time
from typing import Iterator

_deadline: contextvars.ContextVar[float] = contextvars.ContextVar("job_deadline", default=math.inf)


@contextlib.contextmanager
def job_deadline(seconds: float | None) -> Iterator[None]:
    """Run the body with a deadline ``seconds`` from now (None: none) in this thread."""
    token = _deadline.set(math.inf if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _deadline.reset(token)


def remaining() -> float:
    """Seconds left before the current job's deadline (inf without one; <= 0 once it passed)."""
    return _deadline.get() - time.monotonic()

