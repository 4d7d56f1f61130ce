"""The read hit path: a file range -> its chunks -> cached chunk bytes, in ONE read transaction.

This is what the front runs for every FUSE read (DESIGN "Read path"): the chunk table lookup and
every chunk-data get share a single short read txn, only the requested slices are copied, and a
range with any chunk missing returns the missing chunks instead of partial data, so the caller
asks a worker for exactly those and then reads again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import lmdb

from lazylayer.shared.errors import CorruptCacheError
from lazylayer.shared.store.audit import ChunkAudit
from lazylayer.shared.store.chunks import ChunkStore
from lazylayer.shared.store.metadata import FileChunk, Metadata, NodeRef


@dataclass(frozen=True)
class RangeRead:
    """Either ``data`` (clipped at EOF) or the chunks that must be fetched first."""

    data: bytes | None
    missing: tuple[FileChunk, ...] = ()
    #: Keys of the chunks the data came from, for the reader's AccessLog.
    used: tuple[bytes, ...] = ()
    #: Stored chunks not yet checked in this process (with ``audit``): check them, then read again.
    unaudited: tuple[FileChunk, ...] = ()


def read_range(meta: Metadata, chunks: ChunkStore, ref: NodeRef, file_size: int,
               offset: int, size: int, *, audit: ChunkAudit | None = None,
               unstored: Mapping[bytes, bytes] | None = None) -> RangeRead:
    """Bytes ``[offset, offset+size)`` of a regular file whose size the caller already knows
    (from getattr), so no attribute lookup happens here. With ``audit``, a chunk is served only
    once its bytes were checked in this process (others come back as ``unaudited``); ``unstored``
    holds verified chunks a worker could not store (cache filesystem full), looked up where LMDB
    has none."""
    end = min(offset + size, file_size)
    if offset >= end:
        return RangeRead(b"")

    def read(txn: lmdb.Transaction) -> RangeRead:
        covering = meta.chunks_covering(ref, offset, end - offset, txn)
        pieces: list[bytes] = []
        missing: list[FileChunk] = []
        unaudited: list[FileChunk] = []
        for chunk in covering:
            lo = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            hi = min(end, chunk.end) - chunk.chunk_offset
            if audit is not None and not audit.trusted(chunk) and chunks.stored_in(txn, chunk.data_key):
                unaudited.append(chunk)
                continue
            piece = _piece(chunks, txn, chunk, lo, hi, unstored)
            if piece is None:
                missing.append(chunk)
            elif len(piece) != hi - lo:
                raise CorruptCacheError(f"chunk {chunk.digest or chunk.data_key.hex()}: stored size differs "
                                        "from the TOC")
            elif not missing and not unaudited:
                pieces.append(piece)
        if missing or unaudited:
            return RangeRead(None, tuple(missing), unaudited=tuple(unaudited))
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        return RangeRead(data, used=tuple(c.data_key for c in covering))

    return meta.store.read(read)


def _piece(chunks: ChunkStore, txn: lmdb.Transaction, chunk: FileChunk, lo: int, hi: int,
           unstored: Mapping[bytes, bytes] | None) -> bytes | None:
    piece = chunks.read_in(txn, chunk.data_key, lo, hi - lo)
    if piece is None and unstored is not None:
        data = unstored.get(chunk.data_key)
        piece = None if data is None else data[lo:hi]
    return piece
