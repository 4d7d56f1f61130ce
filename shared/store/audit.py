"""Cached chunks are checked against their digest once per process before they are served.

Why: LMDB keeps bytes on a disk that can rot or be scribbled on, and a chunk is keyed by the
digest its bytes had when a worker stored them, not by what the disk returns today. Hashing every
read would cost the hit path a sha256 of a whole chunk per FUSE request; hashing each chunk once in
the process's life costs that only on its first read after a start. Chunks a worker fetched for
this process are trusted without a second hash: the worker checked them moments ago.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import lmdb

from lazylayer.shared.errors import CorruptCacheError
from lazylayer.shared.store.chunks import ChunkStore

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

    def check(self, chunks: ChunkStore, txn: lmdb.Transaction, key: bytes, digest: str) -> bool:
        """Whether the stored chunk ``key`` may be served: True when it is digest-less (only
        stored when verification was explicitly skipped), absent (a miss, not a lie), already
        checked, or hashes to ``digest`` now; False, counted, when it is corrupt."""
        if not digest or key in self._trusted:
            return True
        try:
            data = chunks.read_in(txn, key, 0, None)
        except CorruptCacheError:
            actual = "an undecodable record"
        else:
            if data is None:
                return True
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
        if actual == digest:
            self.trust((key,))
            return True
        self.corrupt += 1
        return False
