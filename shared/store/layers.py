"""Layer records: layer digest -> numeric id, sizes, verification and fetch state, last error.

Registration writes the layer's metadata (layerbuild.py) in batches under a fresh id, then the
record in a last transaction: readers find a layer only through its record, so a layer is either
fully described or absent. It is idempotent: when two processes race to register the same
layer, the loser finds the winner's record in its publishing transaction, returns it and deletes
its own rows. The TOC is decoded and checked before the first write, and each write transaction
is short, so other writers never wait long on a large layer.
"""

from __future__ import annotations

import logging
import os
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from enum import Enum
from typing import TYPE_CHECKING, Any

import lmdb
import msgpack

from lazylayer.shared.errors import CacheError, NotFoundError
from lazylayer.shared.gcpause import gc_paused
from lazylayer.shared.store.corrupt import decoding
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.metadata import BATCH_ROWS, ROOT_ID, NodeRef, delete_metadata, write_rows

if TYPE_CHECKING:
    from lazylayer.shared.estargz.toc import TOC
    from lazylayer.shared.estargz.tocstream import TOCStream

log = logging.getLogger(__name__)

_ID = struct.Struct(">I")
_NEXT_ID_KEY = b"next_layer_id"
#: Meta key prefix (+ layer id) of a registration under way: its process id and layer digest.
#: Its rows are unreachable (no layer record names the id yet); if the process dies, the next
#: registration finds the mark and deletes them.
PENDING_PREFIX = b"pending_layer:"
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
    #: Every file of that range has a node id at most this (registration knows it from the TOC's
    #: order; a prefetch walks only those rows); None: unknown, every file is looked at.
    prefetch_nodes: int | None = None
    #: At least the nodes that show an xattr (0: none does, and the front answers their xattr
    #: requests in C: daemon/xattrless.c); None: not counted (older records).
    xattr_nodes: int | None = None
    last_read: float = 0.0
    last_error: str = ""
    node_count: int = 0
    chunk_count: int = 0
    payload_bytes: int = 0
    registered_at: float = 0.0
    #: the source handler that served the registration (workers/sources) and where it read
    source: str = ""
    source_location: str = ""
    #: the decompressor that decodes its chunks (shared/estargz/formats.py); "" for records
    #: made before it was kept (chunks then say gzip or zstd by their magic)
    decompressor: str = ""
    #: the descriptor facts a source is chosen by, so any worker can choose it again
    media_type: str = ""
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "urls", tuple(self.urls))  # msgpack gives a list back

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
        toc: TOC | TOCStream,
        *,
        verified: bool,
        allow_unverified: bool = False,
    ) -> LayerRecord:
        """Store a layer's record and metadata; returns the existing record if already there.

        A stream is decoded and checked whole (its digest included) before the first write; the
        rows then go in batches under a fresh layer id, and the record, written last, publishes
        them. Rows of a registration that failed are deleted; those of a process that died
        are deleted by the next registration (`PENDING_PREFIX`)."""
        # here, not at the top: the front reads layer records but never registers, and these
        # (with tarfile, zstandard and ISA-L) were ~25 ms of its start before the mount
        from lazylayer.shared.estargz.tocstream import TOCStream

        stream = toc if isinstance(toc, TOCStream) else TOCStream.of(toc)
        existing = self.get(digest)
        if existing is not None:
            return self._same(existing, _digest_of(stream))
        with gc_paused():  # per-entry objects, no cycles: see shared/gcpause.py
            return self._register_new(digest, blob_size, stream, verified, allow_unverified)

    def _register_new(self, digest: str, blob_size: int, stream: TOCStream, verified: bool,
                      allow_unverified: bool) -> LayerRecord:
        from lazylayer.shared.store.layerbuild import LayerScan

        scan = LayerScan(digest, allow_unverified=allow_unverified)
        scan.scan(stream)
        toc_digest = _digest_of(stream)
        if scan.overlay_xattrs:
            log.warning("layer %s: overlayfs's own xattrs (trusted.overlay.*, user.overlay.*) on %d TOC entries, "
                        "first %r, are not served: an image marks opaque dirs with .wh..wh..opq",
                        digest, scan.overlay_xattrs, scan.first_overlay_xattr)
        self._sweep()
        layer_id = self.store.write(lambda txn: self._begin(txn, digest))

        def publish(txn: lmdb.Transaction) -> LayerRecord:
            raw = txn.get(digest.encode(), db=self._layers)
            if raw is not None:
                return LayerRecord.decode(raw)  # another process registered it meanwhile
            record = LayerRecord(
                digest=digest,
                layer_id=layer_id,
                blob_size=blob_size,
                toc_digest=toc_digest,
                verified=verified,
                prefetch_end=scan.prefetch_end,
                prefetch_nodes=scan.prefetch_nodes,
                xattr_nodes=scan.xattr_nodes,
                node_count=scan.node_count,
                chunk_count=scan.chunk_count,
                payload_bytes=scan.payload_bytes,
                registered_at=time.time(),
            )
            txn.put(digest.encode(), record.encode(), db=self._layers)
            txn.put(_ID.pack(layer_id), digest.encode(), db=self._ids)
            txn.delete(_pending_key(layer_id), db=self._meta)
            return record

        try:
            for batch in scan.rows(layer_id):
                self.store.write(lambda txn: write_rows(txn, self.store, batch))
            record = self.store.write(publish)
        except BaseException:
            self._discard(layer_id)
            raise
        if record.layer_id != layer_id:
            self._discard(layer_id)
        return self._same(record, toc_digest)

    def _begin(self, txn: lmdb.Transaction, digest: str) -> int:
        layer_id = allocate_id(txn, self.store)
        self._mark_pending(txn, layer_id, digest)
        return layer_id

    def _mark_pending(self, txn: lmdb.Transaction, layer_id: int, digest: str) -> None:
        txn.put(_pending_key(layer_id), msgpack.packb([os.getpid(), digest]), db=self._meta)

    def _sweep(self) -> None:
        """Delete the rows of registrations whose process died before publishing them."""

        def pending(txn: lmdb.Transaction) -> list[tuple[int, int]]:
            out = []
            with txn.cursor(db=self._meta) as cursor:
                if cursor.set_range(PENDING_PREFIX):
                    for key, value in cursor:
                        if not bytes(key).startswith(PENDING_PREFIX):
                            break
                        with decoding("pending registration"):
                            pid = msgpack.unpackb(value)[0]
                        out.append((_ID.unpack(key[len(PENDING_PREFIX):])[0], pid))
            return out

        for layer_id, pid in self.store.read(pending):
            if not _alive(pid):
                log.warning("deleting the metadata of layer id %d: its registration (pid %d) died", layer_id, pid)
                self._discard(layer_id)

    def _discard(self, layer_id: int) -> None:
        """Delete the rows of an unpublished (or removed) layer id in batches, then its pending
        mark: each transaction stays small, whatever the layer's size."""
        while not self.store.write(lambda txn: delete_metadata(txn, self.store, layer_id, BATCH_ROWS)):
            pass
        self.store.write(lambda txn: txn.delete(_pending_key(layer_id), db=self._meta))

    @staticmethod
    def _same(record: LayerRecord, toc_digest: str) -> LayerRecord:
        if record.toc_digest != toc_digest:
            raise CacheError(
                f"layer {record.digest} is registered with TOC {record.toc_digest}, "
                f"not {toc_digest}; remove it from the cache first"
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
        """Drop a layer's record, then its metadata in batches (its chunks stay until evicted:
        they may be shared). The record goes first, leaving a pending mark, so the layer is gone
        at once and the rows of a process that dies part-way are swept like a registration's."""

        def unpublish(txn: lmdb.Transaction) -> int | None:
            raw = txn.get(digest.encode(), db=self._layers)
            if raw is None:
                return None
            layer_id = LayerRecord.decode(raw).layer_id
            txn.delete(digest.encode(), db=self._layers)
            txn.delete(_ID.pack(layer_id), db=self._ids)
            self._mark_pending(txn, layer_id, digest)
            return layer_id

        layer_id = self.store.write(unpublish)
        if layer_id is None:
            return False
        self._discard(layer_id)
        return True


def allocate_id(txn: lmdb.Transaction, store: Store) -> int:
    """Next numeric id for a layer or a merged view (one id space: ids are inode prefixes)."""
    meta = store.db("meta")
    raw = txn.get(_NEXT_ID_KEY, db=meta)
    layer_id = 1 if raw is None else _ID.unpack(raw)[0]
    if layer_id > MAX_LAYER_ID:
        raise CacheError("the cache has run out of layer ids; wipe it")
    txn.put(_NEXT_ID_KEY, _ID.pack(layer_id + 1), db=meta)
    return layer_id


def _pending_key(layer_id: int) -> bytes:
    return PENDING_PREFIX + _ID.pack(layer_id)


def _digest_of(stream: TOCStream) -> str:
    """The stream's TOC digest, reading it to the end if nobody has."""
    if stream.digest is None:
        for _ in stream:
            pass
    assert stream.digest is not None
    return stream.digest


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _copy(raw: bytes | memoryview | None) -> bytes | None:
    return None if raw is None else bytes(raw)
