"""Verified chunks the cache could not take, kept in the front's memory for a while.

Why: when the cache filesystem is full a worker still fetched and checked the bytes a read asked
for; failing that read with EIO would turn a full disk into a broken container. The worker sends
such chunks back with its reply and the front serves them from here, least recently used first
out, within a byte bound (reads of an image far larger than the bound refetch, but never fail).
"""

from __future__ import annotations

from collections import OrderedDict

#: Default bound on the bytes held [bytes].
DEFAULT_LIMIT = 256 << 20


class UnstoredChunks:
    """Data key -> verified chunk bytes, LRU-bounded by total size."""

    def __init__(self, limit: int = DEFAULT_LIMIT) -> None:
        self.limit = limit
        self.size = 0
        self._chunks: OrderedDict[bytes, bytes] = OrderedDict()

    def add(self, key: bytes, data: bytes) -> None:
        old = self._chunks.pop(key, None)
        if old is not None:
            self.size -= len(old)
        self._chunks[key] = data
        self.size += len(data)
        while self.size > self.limit and len(self._chunks) > 1:
            _, dropped = self._chunks.popitem(last=False)
            self.size -= len(dropped)

    def get(self, key: bytes) -> bytes | None:
        data = self._chunks.get(key)
        if data is not None:
            self._chunks.move_to_end(key)
        return data

    def __contains__(self, key: bytes) -> bool:
        return key in self._chunks

    def __len__(self) -> int:
        return len(self._chunks)
