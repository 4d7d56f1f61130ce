"""Approximately-LRU eviction: access times batched by readers, applied by one janitor.

Why batched: an access-time update is a write, and a write txn per read would put the front
behind the process-shared write lock (limits §4.3-4.4). The front notes accesses in memory
(AccessLog, no LMDB at all) and hands batches to the janitor, which applies them in one
transaction, trims the chunk data to its low watermark, and frees the reader slots of dead
processes, which would otherwise pin freed pages until the map is full (limits §4.5).

The budget itself is enforced by every put (chunks.py): the janitor only keeps puts from
having to evict inline most of the time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lazylayer.shared.store.chunks import ChunkStore, now_ms


class AccessLog:
    """Last access time per chunk key, kept in the reader's memory until drained."""

    def __init__(self, max_pending: int = 65536) -> None:
        self._pending: dict[bytes, int] = {}
        self.max_pending = max_pending

    def touch(self, key: bytes, when_ms: int | None = None) -> None:
        self._pending[key] = now_ms() if when_ms is None else when_ms

    def __len__(self) -> int:
        return len(self._pending)

    @property
    def full(self) -> bool:
        """True when the owner should drain and ship a batch now, whatever its timer says."""
        return len(self._pending) >= self.max_pending

    def drain(self) -> list[tuple[bytes, int]]:
        batch = list(self._pending.items())
        self._pending.clear()
        return batch


@dataclass(frozen=True)
class JanitorReport:
    stale_readers: int
    accesses_applied: int
    bytes_evicted: int
    accounted_bytes: int


class Janitor:
    """The one process that applies access batches and keeps the store below its watermark."""

    def __init__(self, chunks: ChunkStore, *, low_watermark: float = 0.9) -> None:
        self.chunks = chunks
        self.low_watermark = low_watermark

    def run_once(self, accesses: Iterable[tuple[bytes, int]] = (), budget: int | None = None) -> JanitorReport:
        """Apply ``accesses``, then (with ``budget``) make it every process's cap, then trim to
        the low watermark. Accesses go first so a lowered cap evicts by up-to-date LRU order."""
        stale = self.chunks.store.reader_check()
        batch = list(accesses)
        applied = self.chunks.record_accesses(batch) if batch else 0
        freed = self.chunks.set_budget(budget) if budget is not None else 0
        freed += self.chunks.evict_to(int(self.chunks.budget() * self.low_watermark))
        return JanitorReport(stale, applied, freed, self.chunks.stats().accounted_bytes)
