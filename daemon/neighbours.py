"""What a read miss fetches besides its own chunks: the chunks beside them in blob order.

Node ids follow TOC order, which is blob order, and a layer's tar keeps a directory's files
together, so the chunks next to a miss are the other small files of its directory, which a
starting program is about to open. Fetching them along (verified and stored like any chunk)
turns many misses into one request.

The chunks within ``neighbour_window`` compressed bytes after the miss ride in the miss's own
job. When the miss opens a file (its first chunk), the ``neighbour_ahead`` bytes after those and
the ``neighbour_behind`` bytes before it go to a second job the miss does not wait for: a wider
own window made each miss wait for its inflating and hashing (app start on the bench image,
4.71 s at 256 KiB, 4.56 s at 2 MiB), a side job does not (3.68-3.90 s with 4 MiB ahead).
Programs open a directory's files in their own order, not the TOC's (a package's ``__init__``
before the modules named before it): 16 of the 44 misses left with a window after lay within
1 MiB before an earlier one. A side job takes the files' first chunks only, what opening them
reads (all of a small file): a large file beside a small one read alone stays unfetched. A read
in the middle of a large file is no opening: the near window only, so random reads do not
start side jobs.

A layer whose start-up reads are known (a landmark prefetch fetched them) starts no side jobs:
its misses are the stragglers of a start the prefetch already covers, and a side job only
guessed at what the prefetch knew while it took CPU from the start (bench item 8 with prefetch
on, two rounds of 10 alternating pairs: the app run 1.55 -> 1.46 s and 1.50 -> 1.42 s; with
prefetch off side jobs stay a large win: 3.19 s against 4.17 s without them).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import trio

from lazylayer.shared.store.metadata import FileChunk, Metadata, NodeRef

#: Side jobs in flight at once: with two, one can inflate while the next downloads, and a worker
#: slot stays free for the misses of a program that reads on.
SIDE_JOBS = 2


class Neighbours:
    """Which chunks go along with a miss, and the side jobs for the wide part."""

    def __init__(self, meta: Metadata, window: int, ahead: int, behind: int) -> None:
        self.meta = meta
        self.window, self.ahead, self.behind = window, ahead, behind
        self._slots = trio.Semaphore(SIDE_JOBS)
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        """Where side jobs run (the daemon's nursery); none are started before."""
        self._nursery = nursery

    def of(self, node: NodeRef, missed: Sequence[FileChunk], *, prefetched: bool = False
           ) -> tuple[list[FileChunk], list[FileChunk]]:
        """(chunks for the miss's own job, chunks for a side job) around the ``missed`` chunks of
        file ``node``. ``prefetched``: its layer's start-up reads were prefetched (no side job)."""
        first = min(missed, key=lambda c: c.chunk_offset)
        last = max(missed, key=lambda c: c.chunk_offset)
        wide = first.chunk_offset == 0 and not prefetched  # an opening, with nothing known of what comes next
        ahead = self.ahead if wide else 0
        behind = self.behind if wide else 0
        after = self.meta.chunks_after(node, last.chunk_offset, self.window + ahead) if self.window + ahead else []
        before = self.meta.chunks_before(node, first.chunk_offset, behind) if behind else []
        edge = last.blob_end + self.window
        near = [c for c in after if c.blob_end <= edge]
        if prefetched:
            return near, []
        far = [c for c in after if c.blob_end > edge]
        return near, [c for c in (*before, *far) if c.chunk_offset == 0]  # what opening the files reads

    def start(self, fetch: Callable[[], Awaitable[object]]) -> None:
        """Run the side job ``fetch`` in the background, unless `SIDE_JOBS` run already: a
        program missing faster than they finish gets fresh ones for where it reads now rather
        than a queue for where it was. ``fetch`` handles its own errors."""
        if self._nursery is None:
            return
        try:
            self._slots.acquire_nowait()
        except trio.WouldBlock:
            return

        async def run() -> None:
            try:
                await fetch()
            finally:
                self._slots.release()

        self._nursery.start_soon(run)
