"""What fetching reports as it happens: counters for `status`, the observer metrics implement, and
the tally of a profile replay's hits and waste.

Apart from daemon/remote.py because none of it fetches anything: Remote only feeds these, and
`status`, the metrics and the profile code read them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from lazylayer.daemon.jobqueue import Priority


@dataclass
class FetchStats:
    """Counters of chunk fetching on this front (for `status` and for tests)."""

    #: fetch_chunks jobs this front started
    jobs: int = 0
    #: times a reader waited on a job another reader had started (per-chunk dedup)
    joined: int = 0
    #: chunks stored and compressed bytes fetched by those jobs
    chunks: int = 0
    bytes: int = 0
    #: finished fetch_chunks jobs per worker id
    by_worker: Counter[str] = field(default_factory=Counter)
    #: most background pieces ever in flight at once (bounded by background_concurrency)
    background_peak: int = 0


class FetchObserver:
    """What the read path reports as it happens (daemon/metrics.py implements it); the base
    class ignores everything, so Remote never checks for a missing observer."""

    def chunks_read(self, hits: int, misses: int) -> None:
        """One demand read: chunks found in LMDB on its first look, chunks it had to fetch."""

    def job_done(self, kind: str, seconds: float) -> None:
        """A worker job finished (successfully or not) after ``seconds`` as seen by the front."""

    def fetched(self, priority: Priority, nbytes: int) -> None:
        """Compressed bytes a finished job fetched from the registry."""

    def cache_corrupt(self, chunks: int) -> None:
        """Cached chunks a read found not matching their digest (dropped and fetched again)."""

    def profile_chunks(self, prefetched: int, hits: int, unread: int) -> None:
        """Profile replay: chunks it fetched, of those later read (hits), and read by nobody yet."""


@dataclass
class ReplayTally:
    """Chunks a profile replay fetched, and whether reads came for them: hits are what the
    profile was right about, what stays unread is its waste. At most ``limit`` unread keys are
    remembered (a daemon runs for months); older ones count as waste for good."""

    unread: dict[bytes, None] = field(default_factory=dict)
    prefetched: int = 0
    hits: int = 0
    #: unread keys forgotten to stay within ``limit``
    forgotten: int = 0
    limit: int = 1 << 18

    @property
    def waste(self) -> int:
        return len(self.unread) + self.forgotten

    def fetched(self, keys: Iterable[bytes]) -> None:
        for key in keys:
            if key not in self.unread:
                self.prefetched += 1
                self.unread[key] = None
        while len(self.unread) > self.limit:
            del self.unread[next(iter(self.unread))]
            self.forgotten += 1

    def read(self, keys: Iterable[bytes]) -> int:
        """Count the replayed ones among chunks a read was served from; returns how many."""
        if not self.unread:
            return 0
        found = [key for key in keys if self.unread.pop(key, 0) is None]
        self.hits += len(found)
        return len(found)
