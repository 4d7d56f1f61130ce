"""Content-addressed chunk data: chunk digest -> verified, decompressed bytes.

Why content-addressed: the same chunk in another layer or image is fetched and stored once.
Chunks of legacy layers without digests (only when verification is explicitly skipped) are keyed
by (layer digest, blob offset, inner offset) instead and are never shared.

A chunk is stored as parts of at most 1 MiB (LMDB's get cost grows with the value size even with
buffers=True, limits §4.1) plus one index record. Parts, index record, LRU entry and the byte
counter are written in ONE transaction, so a writer killed mid-put leaves nothing readable and
a reader either sees the whole chunk or a miss. Every chunk's footprint is accounted in whole
pages against the budget; a put that would exceed it evicts the oldest chunks in the same
transaction, so the store never holds more than its budget.
"""

from __future__ import annotations

import hashlib
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import lmdb

from lazylayer.shared.errors import CacheError, CorruptCacheError, DigestMismatchError, FormatError
from lazylayer.shared.store.env import Store, StoreOptions

PART_SIZE = 1 << 20
_PAGE = 4096
_RECORD = struct.Struct(">QQIQ")  # size, accounted bytes, parts, access time (ms)
_PART_NO = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_TOTAL_KEY = b"chunk_bytes"
_EVICTED_CHUNKS_KEY = b"evicted_chunks"
_EVICTED_BYTES_KEY = b"evicted_bytes"
_BUDGET_KEY = b"chunk_budget"


def chunk_key(digest: str) -> bytes:
    """Store key of a chunk with a digest (``sha256:<64 hex>``)."""
    algo, _, hexdigest = digest.partition(":")
    if algo != "sha256" or len(hexdigest) != 64:
        raise FormatError(f"chunk digest {digest!r} is not a sha256 digest")
    try:
        return digest_key(bytes.fromhex(hexdigest))
    except ValueError:
        raise FormatError(f"chunk digest {digest!r} is not hex") from None


def digest_key(raw_digest: bytes) -> bytes:
    """`chunk_key` of a sha256 digest already checked and decoded (registration: one per chunk)."""
    return b"D" + raw_digest


def unverified_key(layer_digest: str, blob_offset: int, inner_offset: int = 0) -> bytes:
    """Store key of a digest-less chunk: private to its layer, never shared."""
    layer = hashlib.sha256(layer_digest.encode()).digest()[:16]
    return b"U" + layer + _U64.pack(blob_offset) + _U64.pack(inner_offset)


def footprint(size: int) -> int:
    """Bytes a chunk of ``size`` is charged: each part rounded up to whole pages (with headroom
    for LMDB's overflow-page header), so many small chunks cannot sneak past the budget."""
    parts = max(1, -(-size // PART_SIZE))
    last = size - (parts - 1) * PART_SIZE
    return (parts - 1) * _pages(PART_SIZE) + _pages(last)


def _pages(nbytes: int) -> int:
    return -(-(nbytes + 64) // _PAGE) * _PAGE


@dataclass(frozen=True, slots=True)
class ChunkRecord:
    size: int
    accounted: int
    parts: int
    atime_ms: int

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> "ChunkRecord":
        try:
            return cls(*_RECORD.unpack(raw))
        except struct.error:
            raise CorruptCacheError(f"a chunk record of {len(raw)} bytes does not decode") from None

    def encode(self) -> bytes:
        return _RECORD.pack(self.size, self.accounted, self.parts, self.atime_ms)


@dataclass(frozen=True)
class ChunkStats:
    chunks: int
    accounted_bytes: int
    budget: int
    #: since the store was created, by every process (puts evicting inline and the janitor)
    evicted_chunks: int = 0
    evicted_bytes: int = 0


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def verify(digest: str, data: bytes | memoryview) -> None:
    """Raise DigestMismatchError unless ``data`` hashes to ``digest``."""
    actual = "sha256:" + hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise DigestMismatchError("chunk", digest, actual)


def _lru_key(atime_ms: int, key: bytes) -> bytes:
    return _U64.pack(atime_ms) + key


def _put_parts(txn: lmdb.Transaction, db: lmdb._Database, key: bytes, data: memoryview) -> int:
    """Write the parts of one chunk; returns how many. Inside the caller's put transaction."""
    count = max(1, -(-len(data) // PART_SIZE))
    for i in range(count):
        txn.put(key + _PART_NO.pack(i), data[i * PART_SIZE : (i + 1) * PART_SIZE], db=db)
    return count


class ChunkStore:
    """Chunk data in the shared environment. Readers and writers each use their own Store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._index = store.db("chunk_index")
        self._parts = store.db("chunk_parts")
        self._lru = store.db("chunk_lru")
        self._meta = store.db("meta")

    # -- writing (workers) ------------------------------------------------------------------

    def put(self, digest: str, data: bytes | memoryview) -> bool:
        """Store a chunk under its digest after re-checking it; False if it was already there.

        The hash is re-checked here (about 3 ms per 4 MiB) so that no caller bug can ever put
        unverified bytes under a digest that every later reader trusts.
        """
        return self.put_many([(digest, data)]) == 1

    def put_many(self, chunks: Sequence[tuple[str, bytes | memoryview]], *, hashed_by_caller: bool = False) -> int:
        """`put` for a job's chunks in ONE write transaction (a commit per chunk was most of the
        store's cost for a miss that brings its small neighbours along); returns how many were
        new. All or nothing: on CacheFullError nothing of the batch was stored.

        ``hashed_by_caller``: the caller has just checked each chunk's bytes against its digest
        (the fetcher's `decompress_chunk` does, on the very bytes it passes here), so they are
        not hashed a second time: sha256 costs as much CPU as ISA-L's inflate of the chunk."""
        if not hashed_by_caller:
            for digest, data in chunks:
                verify(digest, data)
        return self._store([(chunk_key(digest), memoryview(data)) for digest, data in chunks])

    def put_unverified(self, layer_digest: str, blob_offset: int, inner_offset: int, data: bytes) -> bool:
        """Store a digest-less chunk. Only for layers whose verification was explicitly skipped."""
        return self._store([(unverified_key(layer_digest, blob_offset, inner_offset), memoryview(data))]) == 1

    def _store(self, items: list[tuple[bytes, memoryview]]) -> int:
        need = sum(footprint(len(data)) for _, data in items)

        def put(txn: lmdb.Transaction) -> int:
            budget = self._budget(txn)
            total = self._total(txn)
            stored = 0
            for key, data in items:
                if txn.get(key, db=self._index) is not None:
                    continue
                accounted = footprint(len(data))
                if accounted > budget:
                    raise CacheError(f"a {len(data)}-byte chunk does not fit in the cache budget of {budget} bytes")
                excess = total + accounted - budget
                if excess > 0:
                    total -= self._evict_in(txn, excess)
                parts = _put_parts(txn, self._parts, key, data)
                record = ChunkRecord(len(data), accounted, parts, now_ms())
                txn.put(key, record.encode(), db=self._index)
                txn.put(_lru_key(record.atime_ms, key), b"", db=self._lru)
                total += accounted
                stored += 1
            self._set_total(txn, total)
            return stored

        return self.store.write(put, make_room=lambda: self.evict(max(2 * need, self.store.budget // 100)) > 0)

    def delete(self, key: bytes) -> bool:
        def delete(txn: lmdb.Transaction) -> bool:
            raw = txn.get(key, db=self._index)
            if raw is None:
                return False
            try:
                record = ChunkRecord.decode(raw)
            except CorruptCacheError:
                self._drop_garbage_in(txn, key)
                return True
            self._delete_in(txn, key, record)
            self._set_total(txn, max(0, self._total(txn) - record.accounted))
            return True

        return self.store.write(delete)

    def drop_if_corrupt(self, digest: str) -> bool:
        """Delete the stored chunk of ``digest`` if its bytes (or record) are not what the digest
        says; True if it was dropped. A worker runs this before refetching a chunk the front
        found corrupt: the front cannot write, and must not be trusted to say what to delete."""
        key = chunk_key(digest)

        def check(txn: lmdb.Transaction) -> bool:
            try:
                data = self.read_in(txn, key, 0, None)
            except CorruptCacheError:
                return True
            return data is not None and "sha256:" + hashlib.sha256(data).hexdigest() != digest

        return self.store.read(check) and self.delete(key)

    def _drop_garbage_in(self, txn: lmdb.Transaction, key: bytes) -> None:
        """Remove a chunk whose record does not decode: its parts by key prefix (the part count
        is in the lost record); its LRU entry is dropped when eviction meets it."""
        txn.delete(key, db=self._index)
        with txn.cursor(db=self._parts) as cursor:
            if cursor.set_range(key):
                while bytes(cursor.key()).startswith(key) and len(cursor.key()) == len(key) + _PART_NO.size:
                    if not cursor.delete():
                        break

    def set_budget(self, budget: int) -> int:
        """Make ``budget`` the chunk-data cap of every process sharing the store, from now on,
        and evict down to it; returns bytes freed. Kept in LMDB so a cap changed at run time
        (config reload) reaches workers without restarting them."""
        limit = StoreOptions(self.store.options.path, self.store.options.map_size, chunk_budget=budget).budget()

        def apply(txn: lmdb.Transaction) -> int:
            txn.put(_BUDGET_KEY, _U64.pack(limit), db=self._meta)
            total = self._total(txn)
            freed = self._evict_in(txn, total - limit) if total > limit else 0
            self._set_total(txn, total - freed)
            return freed

        return self.store.write(apply)

    def budget(self) -> int:
        return self.store.read(self._budget)

    def _budget(self, txn: lmdb.Transaction) -> int:
        """The cap set by set_budget, else this process's configured one."""
        raw = txn.get(_BUDGET_KEY, db=self._meta)
        return self.store.budget if raw is None else _U64.unpack(raw)[0]

    def evict(self, nbytes: int) -> int:
        """Evict least-recently-used chunks worth at least ``nbytes``; returns bytes freed."""

        def evict(txn: lmdb.Transaction) -> int:
            freed = self._evict_in(txn, nbytes)
            self._set_total(txn, self._total(txn) - freed)
            return freed

        return self.store.write(evict)

    def evict_to(self, target: int) -> int:
        """Evict oldest chunks until at most ``target`` bytes are accounted; returns bytes freed."""

        def evict(txn: lmdb.Transaction) -> int:
            total = self._total(txn)
            freed = self._evict_in(txn, total - target) if total > target else 0
            self._set_total(txn, total - freed)
            return freed

        return self.store.write(evict)

    def record_accesses(self, accesses: Iterable[tuple[bytes, int]]) -> int:
        """Move chunks up the LRU from a batch of (key, access time ms); returns how many moved.

        Batched because one write txn per read would put every reader behind the write lock.
        """

        def apply(txn: lmdb.Transaction) -> int:
            moved = 0
            for key, atime in accesses:
                raw = txn.get(key, db=self._index)
                if raw is None:
                    continue
                try:
                    record = ChunkRecord.decode(raw)
                except CorruptCacheError:
                    continue  # the next read finds it corrupt and has it refetched
                if atime <= record.atime_ms:
                    continue
                txn.delete(_lru_key(record.atime_ms, key), db=self._lru)
                txn.put(_lru_key(atime, key), b"", db=self._lru)
                txn.put(key, ChunkRecord(record.size, record.accounted, record.parts, atime).encode(), db=self._index)
                moved += 1
            return moved

        return self.store.write(apply)

    def _evict_in(self, txn: lmdb.Transaction, need: int) -> int:
        victims: list[tuple[bytes, ChunkRecord]] = []
        garbage: list[bytes] = []
        freed = 0
        with txn.cursor(db=self._lru) as cursor:
            for lru_key in cursor.iternext(keys=True, values=False):
                key = bytes(lru_key[_U64.size :])
                raw = txn.get(key, db=self._index)
                try:
                    record = ChunkRecord.decode(raw if raw is not None else b"")
                except CorruptCacheError:  # gone or garbage: drop its LRU entry and what is left
                    garbage.append(bytes(lru_key))
                    continue
                victims.append((key, record))
                freed += record.accounted
                if freed >= need:
                    break
        for lru_key in garbage:
            self._drop_garbage_in(txn, lru_key[_U64.size :])
            txn.delete(lru_key, db=self._lru)
        for key, record in victims:
            self._delete_in(txn, key, record)
        if victims:
            self._bump(txn, _EVICTED_CHUNKS_KEY, len(victims))
            self._bump(txn, _EVICTED_BYTES_KEY, freed)
        return freed

    def _delete_in(self, txn: lmdb.Transaction, key: bytes, record: ChunkRecord) -> None:
        for i in range(record.parts):
            txn.delete(key + _PART_NO.pack(i), db=self._parts)
        txn.delete(key, db=self._index)
        txn.delete(_lru_key(record.atime_ms, key), db=self._lru)

    def _total(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_TOTAL_KEY, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def _set_total(self, txn: lmdb.Transaction, total: int) -> None:
        txn.put(_TOTAL_KEY, _U64.pack(total), db=self._meta)

    def _counter(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self._meta)
        return 0 if raw is None else _U64.unpack(raw)[0]

    def _bump(self, txn: lmdb.Transaction, key: bytes, amount: int) -> None:
        txn.put(key, _U64.pack(self._counter(txn, key) + amount), db=self._meta)

    # -- reading (front and workers) -----------------------------------------------------------

    def has(self, key: bytes) -> bool:
        return self.store.read(lambda txn: self.stored_in(txn, key))

    def stored_in(self, txn: lmdb.Transaction, key: bytes) -> bool:
        return txn.get(key, db=self._index) is not None

    def read(self, key: bytes, offset: int = 0, size: int | None = None) -> bytes | None:
        """``size`` bytes (clipped to the chunk) from ``offset`` of a stored chunk; None on a miss."""
        return self.store.read(lambda txn: self.read_in(txn, key, offset, size))

    def read_in(self, txn: lmdb.Transaction, key: bytes, offset: int, size: int | None) -> bytes | None:
        """Like read(), inside the caller's read txn; copies only the requested slice."""
        raw = txn.get(key, db=self._index)
        if raw is None:
            return None
        total = ChunkRecord.decode(raw).size
        end = total if size is None else min(total, offset + size)
        if offset >= end:
            return b""
        pieces = []
        for part in range(offset // PART_SIZE, (end - 1) // PART_SIZE + 1):
            buf = txn.get(key + _PART_NO.pack(part), db=self._parts)
            if buf is None:
                raise CorruptCacheError(f"chunk {key.hex()}: part {part} missing")
            base = part * PART_SIZE
            pieces.append(bytes(buf[max(offset - base, 0) : min(end - base, PART_SIZE)]))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def stats(self) -> ChunkStats:
        def stats(txn: lmdb.Transaction) -> ChunkStats:
            return ChunkStats(txn.stat(self._index)["entries"], self._total(txn), self._budget(txn),
                              self._counter(txn, _EVICTED_CHUNKS_KEY), self._counter(txn, _EVICTED_BYTES_KEY))

        return self.store.read(stats)
