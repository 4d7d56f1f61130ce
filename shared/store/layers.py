"""Layer records: layer digest -> numeric id, sizes, verification and fetch state, last error.

Registration writes the record and the layer's whole metadata (metadata.py) in one transaction,
so a layer is either fully described or absent. It is idempotent: when two processes race to
register the same layer, the loser finds the winner's record inside its own write transaction
and returns it; since node ids are derived from the TOC alone, both computed the same ids.
The metadata is built before the write transaction begins, so the lock is held only to write.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
import time
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import Any

import lmdb
import msgpack

from lazylayer.shared.errors import CacheError, NotFoundError
from lazylayer.shared.estargz.toc import TOC
from lazylayer.shared.store.corrupt import decoding
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.metadata import ROOT_ID, NodeRef, build_metadata, delete_metadata, write_metadata

_ID = struct.Struct(">I")
_NEXT_ID_KEY = b"next_layer_id"
MAX_LAYER_ID = (1 << 31) - 1


class LayerState(str, Enum):
    REGISTERED = "registered"  # metadata stored; chunks fetched on demand
    PREFETCHING = "prefetching"
    READY = "ready"  # prefetch done (or none to do)
    FETCHED = "fetched"  # every chunk was fetched once and the blob digest checked
    FAILED = "failed"


@dataclass(frozen=True)
class LayerRecord:
    digest: str
    layer_id: int
    blob_size: int
    toc_digest: str
    verified: bool
    state: LayerState = LayerState.REGISTERED
    fetched_bytes: int = 0
    prefetch_size: int = 0
    #: Compressed end of the prefetch range: the landmark's offset, 0 for ``.no.prefetch.landmark``,
    #: None when the layer has neither (legacy: the configured prefetch size applies).
    prefetch_end: int | None = None
    last_read: float = 0.0
    last_error: str = ""
    node_count: int = 0
    chunk_count: int = 0
    payload_bytes: int = 0
    registered_at: float = 0.0

    @property
    def root(self) -> NodeRef:
        return NodeRef(self.layer_id, ROOT_ID)

    def encode(self) -> bytes:
        data = asdict(self)
        data["state"] = self.state.value
        return msgpack.packb(data)

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> "LayerRecord":
        with decoding("layer record"):
            data: dict[str, Any] = msgpack.unpackb(raw)
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["state"] = LayerState(data.get("state", LayerState.REGISTERED.value))
            return cls(**data)


def prefetch_end_of(toc: TOC) -> int | None:
    if toc.has_no_prefetch_landmark:
        return 0
    return toc.prefetch_landmark_offset


class Layers:
    """Layer records in the shared environment. Writes need a writable Store (workers)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._layers = store.db("layers")
        self._ids = store.db("layer_ids")
        self._meta = store.db("meta")

    def register(
        self,
        digest: str,
        blob_size: int,
        toc: TOC,
        *,
        verified: bool,
        allow_unverified: bool = False,
    ) -> LayerRecord:
        """Store a layer's record and metadata; returns the existing record if already there."""
        existing = self.get(digest)
        if existing is not None:
            return self._same(existing, toc)
        meta = build_metadata(toc, digest, allow_unverified=allow_unverified)

        def register(txn: lmdb.Transaction) -> LayerRecord:
            raw = txn.get(digest.encode(), db=self._layers)
            if raw is not None:
                return LayerRecord.decode(raw)
            layer_id = allocate_id(txn, self.store)
            record = LayerRecord(
                digest=digest,
                layer_id=layer_id,
                blob_size=blob_size,
                toc_digest=toc.json_bytes_digest,
                verified=verified,
                prefetch_end=prefetch_end_of(toc),
                node_count=meta.node_count,
                chunk_count=meta.chunk_count,
                payload_bytes=meta.payload_bytes,
                registered_at=time.time(),
            )
            write_metadata(txn, self.store, layer_id, meta)
            txn.put(digest.encode(), record.encode(), db=self._layers)
            txn.put(_ID.pack(layer_id), digest.encode(), db=self._ids)
            return record

        return self._same(self.store.write(register), toc)

    @staticmethod
    def _same(record: LayerRecord, toc: TOC) -> LayerRecord:
        if record.toc_digest != toc.json_bytes_digest:
            raise CacheError(
                f"layer {record.digest} is registered with TOC {record.toc_digest}, "
                f"not {toc.json_bytes_digest}; remove it from the cache first"
            )
        return record

    def get(self, digest: str) -> LayerRecord | None:
        raw = self.store.read(lambda txn: _copy(txn.get(digest.encode(), db=self._layers)))
        return None if raw is None else LayerRecord.decode(raw)

    def require(self, digest: str) -> LayerRecord:
        record = self.get(digest)
        if record is None:
            raise NotFoundError(f"layer {digest} is not in the cache")
        return record

    def by_id(self, layer_id: int) -> LayerRecord | None:
        def find(txn: lmdb.Transaction) -> bytes | None:
            digest = txn.get(_ID.pack(layer_id), db=self._ids)
            return None if digest is None else _copy(txn.get(bytes(digest), db=self._layers))

        raw = self.store.read(find)
        return None if raw is None else LayerRecord.decode(raw)

    def all(self) -> list[LayerRecord]:
        def scan(txn: lmdb.Transaction) -> list[LayerRecord]:
            with txn.cursor(db=self._layers) as cursor:
                return [LayerRecord.decode(value) for value in cursor.iternext(keys=False, values=True)]

        return self.store.read(scan)

    def update(self, digest: str, **changes: Any) -> LayerRecord:
        """Set record fields (state, verified, prefetch_size, last_read, last_error, ...)."""
        return self.modify(digest, lambda record: replace(record, **changes))

    def add_fetched(self, digest: str, nbytes: int, *, read_time: float | None = None) -> LayerRecord:
        """Count compressed bytes fetched for this layer (and when it last hit the network).
        Capped at the blob size: ranges fetched twice (prefetch, then the background walk)
        must not make a layer look more than fully fetched."""
        return self.modify(
            digest,
            lambda r: replace(r, fetched_bytes=min(r.blob_size, r.fetched_bytes + nbytes),
                              last_read=r.last_read if read_time is None else read_time),
        )

    def set_error(self, digest: str, message: str) -> LayerRecord:
        return self.update(digest, last_error=message)

    def modify(self, digest: str, change: Callable[[LayerRecord], LayerRecord]) -> LayerRecord:
        """Apply ``change`` to the current record inside one write txn: a read-decide-write that
        no other process can interleave with (state transitions depend on the current state)."""

        def modify(txn: lmdb.Transaction) -> LayerRecord:
            raw = txn.get(digest.encode(), db=self._layers)
            if raw is None:
                raise NotFoundError(f"layer {digest} is not in the cache")
            record = change(LayerRecord.decode(raw))
            txn.put(digest.encode(), record.encode(), db=self._layers)
            return record

        return self.store.write(modify)

    def remove(self, digest: str) -> bool:
        """Drop a layer's record and metadata (its chunks stay until evicted: they may be shared)."""

        def remove(txn: lmdb.Transaction) -> bool:
            raw = txn.get(digest.encode(), db=self._layers)
            if raw is None:
                return False
            record = LayerRecord.decode(raw)
            delete_metadata(txn, self.store, record.layer_id)
            txn.delete(digest.encode(), db=self._layers)
            txn.delete(_ID.pack(record.layer_id), db=self._ids)
            return True

        return self.store.write(remove)


def allocate_id(txn: lmdb.Transaction, store: Store) -> int:
    """Next numeric id for a layer or a merged view (one id space: ids are inode prefixes)."""
    meta = store.db("meta")
    raw = txn.get(_NEXT_ID_KEY, db=meta)
    layer_id = 1 if raw is None else _ID.unpack(raw)[0]
    if layer_id > MAX_LAYER_ID:
        raise CacheError("the cache has run out of layer ids; wipe it")
    txn.put(_NEXT_ID_KEY, _ID.pack(layer_id + 1), db=meta)
    return layer_id


def _copy(raw: bytes | memoryview | None) -> bytes | None:
    return None if raw is None else bytes(raw)
