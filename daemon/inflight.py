"""Chunk jobs in flight, and a demand read's wait for its own chunks rather than their whole job.

Why: a job stores many chunks, a read needs a few. A miss's side job (daemon/neighbours.py)
carries MiBs of its neighbours' chunks, and a read that joined it for one small file waited for
all of them to be fetched, inflated, hashed and stored: a small file's first 4 KiB took 63-108 ms
joined to a side job against 29 ms as a miss of its own (by hand, bench rootfs). Workers store a
job's chunks in slices as they go (workers/fetcher.py `STORE_SLICE`), so a read returns as soon as
its own chunks are in the store. The job is still followed to its end by a task in the daemon's
nursery: the pool retires a job nobody waits for, and its reply carries the bookkeeping (what it
fetched, chunks the cache could not take).

Only a worker stores a chunk, and only after checking its digest, so a chunk that was missing when
the read asked for it and is there now is verified. Chunks a read found corrupt are the exception
(the job drops the old copy first): for those the read waits for the job.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from lazylayer.shared.errors import LazyLayerError
from lazylayer.shared.store.env import Store

#: How often a read waiting on a job looks for its own chunks in the store: one LMDB read
#: transaction of a few lookups (~20 us), against the ~30 ms a miss takes here [s]
POLL = 0.003


@dataclass(eq=False)
class Pending:
    """A fetch_chunks job in flight and the chunk keys it will store."""

    dedup_key: Hashable
    params: dict[str, Any]
    keys: tuple[bytes, ...]
    #: its place among the jobs of its priority (daemon/jobqueue.py)
    rank: int = 0
    waiters: int = 0
    counted: bool = False
    #: compressed bytes the job fetched (set when it finished)
    fetched: int = 0
    #: set when the job has ended, with ``error`` what it failed with
    done: trio.Event = field(default_factory=trio.Event)
    error: LazyLayerError | None = None


async def until_stored(store: Store, index: Any, jobs: Sequence[Pending], needed: Collection[bytes]) -> bool:
    """Return once every one of ``jobs`` has ended (False) or every key of ``needed`` is in the
    store's chunk ``index`` (True), whichever comes first. Empty ``needed``: the jobs' end."""
    while True:
        running = [job for job in jobs if not job.done.is_set()]
        if not running:
            return False
        if needed and store.read(lambda txn: all(txn.get(key, db=index) is not None for key in needed)):
            return True
        with trio.move_on_after(POLL if needed else float("inf")):
            await running[0].done.wait()
