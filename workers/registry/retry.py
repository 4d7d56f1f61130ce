"""When to retry a registry request, and how long to wait first.

Connection errors, 429 and 5xx (except 501, which no retry will fix) are retried with exponential
backoff and full jitter in [d, 2d), bounded by a maximum delay and a maximum number of retries; a
`Retry-After` header sets the delay instead, capped by the same maximum (upstream: hashicorp
go-retryablehttp as configured by stargz-snapshotter).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Callable


def is_retryable_status(status: int) -> bool:
    return status == 429 or (500 <= status <= 599 and status != 501)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delta seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


@dataclass
class Backoff:
    """Delays for successive retries; ``sleep`` is injectable so tests can record the waits."""

    min_delay: float
    max_delay: float
    max_retries: int
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        base = min(self.min_delay * (2 ** attempt), self.max_delay)
        return min(base * (1 + self.rng.random()), self.max_delay)

    def wait(self, attempt: int, retry_after: float | None = None) -> None:
        self.sleep(self.delay(attempt, retry_after))
