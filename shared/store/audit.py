"""Cached chunks are checked against their digest once per process before they are served.

Why: LMDB keeps bytes on a disk that can rot or be scribbled on, and a chunk is keyed by the
digest its bytes had when a worker stored them, not by what the disk returns today. Hashing every
read would cost the hit path a sha256 of a whole chunk per FUSE request; hashing each chunk once in
the process's life costs that only on its first read after a start. Chunks a worker fetched for
this process are trusted without a second hash: the worker checked them moments ago.

The read path only asks `trusted` (a set lookup); `check_stored` does the hashing, in a thread of
the front's (sha256 of 4 MiB took 16 ms here, and hashlib lets go of the GIL for it), so a
first read after a restart never stalls the FUSE loop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import lmdb

from lazylayer.shared.errors import CorruptCacheError
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.metadata import FileChunk

#: Past this many checked chunks the set starts over (re-checking costs time, never correctness).
MAX_TRUSTED = 1 << 20


class ChunkAudit:
    """The digest-keyed chunks this process has checked (or fetched) since it started."""

    def __init__(self) -> None:
        self._trusted: set[bytes] = set()
        #: chunks found corrupt (bad bytes or an undecodable record), for metrics and status
        self.corrupt = 0

    def trust(self, keys: Iterable[bytes]) -> None:
        if len(self._trusted) > MAX_TRUSTED:
            self._trusted.clear()
        self._trusted.update(keys)

    def trusted(self, chunk: FileChunk) -> bool:
        """Whether ``chunk`` may be served without a check: digest-less chunks (stored only when
        verification was explicitly skipped) and chunks checked or fetched in this process."""
        return not chunk.digest or chunk.data_key in self._trusted

    def check_stored(self, chunks: ChunkStore, wanted: Sequence[FileChunk]) -> tuple[bytes, ...]:
        """Hash each stored chunk of ``wanted`` against its digest (one read transaction; meant
        for a thread); the good ones are trusted from now on, the keys of the corrupt ones (bad
        bytes or an undecodable record) are returned and counted. Absent ones are skipped: a miss
        is not a lie."""

        def check(txn: lmdb.Transaction) -> tuple[bytes, ...]:
            bad = []
            for chunk in wanted:
                try:
                    data = chunks.read_in(txn, chunk.data_key, 0, None)
                except CorruptCacheError:
                    bad.append(chunk.data_key)
                    continue
                if data is None:
                    continue
                if "sha256:" + hashlib.sha256(data).hexdigest() == chunk.digest:
                    self.trust((chunk.data_key,))
                else:
                    bad.append(chunk.data_key)
            return tuple(bad)

        bad = chunks.store.read(check)
        self.corrupt += len(bad)
        return bad
