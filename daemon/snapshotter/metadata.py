"""Snapshot metadata: containerd's snapshot records, persisted in the snapshotter's own LMDB.

Why its own environment (``ROOT/metadata``) and not the shared chunk cache: the cache's writers
are the workers only, the cache may be wiped or moved aside as damaged at any time (everything in
it can be fetched again), and its writers run with ``sync=False``. Snapshot metadata is the
opposite: small, written by this one process, and not re-creatable - a lost record orphans a
running container's upper dir - so it is synced on every commit and outlives the cache.

Records follow containerd's snapshots.Info plus what the snapshotter needs: the numeric id that
names the snapshot's directory (kept across Commit, as containerd's own storage does), the usage
measured at commit, and for a remote snapshot the (image ref, layer digest) served by the layer
store.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from enum import IntEnum
from typing import Callable, Iterator, TypeVar

import lmdb
import msgpack

from lazylayer.shared.errors import AlreadyExistsError, CacheError, NotFoundError, PreconditionError
from lazylayer.shared.perms import private_dir, private_file

T = TypeVar("T")

_SNAPSHOTS, _META = b"snapshots", b"meta"
_NEXT_ID = b"next_id"


class Kind(IntEnum):
    """containerd.services.snapshots.v1.Kind (same numbers as on the wire)."""

    UNKNOWN = 0
    VIEW = 1
    ACTIVE = 2
    COMMITTED = 3


@dataclass(frozen=True)
class Snapshot:
    name: str
    id: int
    kind: Kind
    parent: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    created: int = 0  # ns since the epoch
    updated: int = 0
    size: int = 0  # bytes, measured at commit
    inodes: int = 0
    remote_ref: str = ""  # a remote snapshot: its layer is MNT/<ref>/<remote_digest>/diff
    remote_digest: str = ""

    @property
    def remote(self) -> bool:
        return bool(self.remote_digest)

    def pack(self) -> bytes:
        return msgpack.packb(asdict(self) | {"kind": int(self.kind)})

    @classmethod
    def unpack(cls, raw: bytes) -> "Snapshot":
        values = msgpack.unpackb(raw)
        return cls(**(values | {"kind": Kind(values["kind"])}))


def now_ns() -> int:
    return time.time_ns()


def summarize(snapshots: list[Snapshot]) -> dict[str, int]:
    """Snapshots by kind, remote ones apart (status and metrics)."""
    counts = Counter("remote" if s.remote else s.kind.name.lower() for s in snapshots)
    return {kind: counts.get(kind, 0) for kind in ("remote", "committed", "active", "view")}


def read_snapshots(root: str) -> list[Snapshot] | None:
    """The snapshots kept under a snapshotter ``root``, None where it never ran (nothing is
    created). Safe beside the running snapshotter: LMDB readers do not block it."""
    path = os.path.join(root, "metadata")
    if not os.path.exists(os.path.join(path, "data.mdb")):
        return None
    store = MetaStore(path)
    try:
        return store.all()
    finally:
        store.close()


class MetaStore:
    """The snapshot records, one LMDB environment; every mutation is one write transaction."""

    def __init__(self, path: str, map_size: int = 1 << 30) -> None:
        os.makedirs(path, exist_ok=True)
        private_dir(path)
        try:
            self.env = lmdb.open(path, map_size=map_size, max_dbs=4, subdir=True, sync=True, metasync=True)
        except lmdb.Error as exc:
            raise CacheError(f"snapshot metadata {path}: {exc}") from None
        for name in ("data.mdb", "lock.mdb"):
            private_file(os.path.join(path, name))
        self._snapshots = self.env.open_db(_SNAPSHOTS)
        self._meta = self.env.open_db(_META)
        #: serialises read-check-write sequences across gRPC threads (LMDB serialises only writes)
        self.lock = threading.RLock()

    def close(self) -> None:
        self.env.close()

    def _write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        with self.lock, self.env.begin(write=True) as txn:
            return fn(txn)

    # -- reads ------------------------------------------------------------------------------

    def find(self, name: str) -> Snapshot | None:
        with self.env.begin() as txn:
            raw = txn.get(name.encode(), db=self._snapshots)
        return Snapshot.unpack(raw) if raw is not None else None

    def get(self, name: str) -> Snapshot:
        found = self.find(name)
        if found is None:
            raise NotFoundError(f"snapshot {name!r} does not exist")
        return found

    def all(self) -> list[Snapshot]:
        with self.env.begin() as txn:
            return [Snapshot.unpack(raw) for _key, raw in txn.cursor(db=self._snapshots)]

    def chain(self, snapshot: Snapshot) -> Iterator[Snapshot]:
        """The snapshot's ancestors, nearest first (overlayfs' lowerdir order)."""
        parent = snapshot.parent
        while parent:
            record = self.get(parent)
            yield record
            parent = record.parent

    def get_meta(self, key: bytes) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key, db=self._meta)

    # -- writes -----------------------------------------------------------------------------

    def put_meta(self, key: bytes, value: bytes) -> None:
        self._write(lambda txn: txn.put(key, value, db=self._meta))

    def create(self, kind: Kind, key: str, parent: str, labels: dict[str, str]) -> Snapshot:
        """A new active or view snapshot; its parent must be committed (containerd's rule)."""
        if not key:
            raise PreconditionError("a snapshot key must not be empty")

        def create(txn: lmdb.Transaction) -> Snapshot:
            if txn.get(key.encode(), db=self._snapshots) is not None:
                raise AlreadyExistsError(f"snapshot {key!r} already exists")
            if parent:
                raw = txn.get(parent.encode(), db=self._snapshots)
                if raw is None:
                    raise NotFoundError(f"parent snapshot {parent!r} does not exist")
                if Snapshot.unpack(raw).kind is not Kind.COMMITTED:
                    raise PreconditionError(f"parent {parent!r} is not a committed snapshot")
            next_id = int(txn.get(_NEXT_ID, b"1", db=self._meta))
            txn.put(_NEXT_ID, str(next_id + 1).encode(), db=self._meta)
            stamp = now_ns()
            record = Snapshot(key, next_id, kind, parent, dict(labels), stamp, stamp)
            txn.put(key.encode(), record.pack(), db=self._snapshots)
            return record

        return self._write(create)

    def commit(self, key: str, name: str, labels: dict[str, str], *, size: int = 0, inodes: int = 0,
               remote_ref: str = "", remote_digest: str = "") -> Snapshot:
        """The active snapshot ``key`` becomes the committed ``name`` (same id, same directory)."""

        def commit(txn: lmdb.Transaction) -> Snapshot:
            raw = txn.get(key.encode(), db=self._snapshots)
            if raw is None:
                raise NotFoundError(f"snapshot {key!r} does not exist")
            active = Snapshot.unpack(raw)
            if active.kind is not Kind.ACTIVE:
                raise PreconditionError(f"snapshot {key!r} is {active.kind.name.lower()}, not active")
            if txn.get(name.encode(), db=self._snapshots) is not None:
                raise AlreadyExistsError(f"snapshot {name!r} already exists")
            stamp = now_ns()
            record = replace(active, name=name, kind=Kind.COMMITTED, labels=dict(labels), created=stamp,
                             updated=stamp, size=size, inodes=inodes, remote_ref=remote_ref,
                             remote_digest=remote_digest)
            txn.delete(key.encode(), db=self._snapshots)
            txn.put(name.encode(), record.pack(), db=self._snapshots)
            return record

        return self._write(commit)

    def remove(self, key: str) -> Snapshot:
        """Forget ``key``; one with children stays (containerd removes children first)."""

        def remove(txn: lmdb.Transaction) -> Snapshot:
            raw = txn.get(key.encode(), db=self._snapshots)
            if raw is None:
                raise NotFoundError(f"snapshot {key!r} does not exist")
            for _name, other in txn.cursor(db=self._snapshots):
                if Snapshot.unpack(other).parent == key:
                    raise PreconditionError(f"snapshot {key!r} has children: remove them first")
            txn.delete(key.encode(), db=self._snapshots)
            return Snapshot.unpack(raw)

        return self._write(remove)

    def update_labels(self, name: str, labels: dict[str, str], paths: list[str]) -> Snapshot:
        """containerd's Update: only labels change. No paths: the labels are replaced; ``labels``
        replaces them too; ``labels.KEY`` sets (or, absent from ``labels``, deletes) one."""

        def update(txn: lmdb.Transaction) -> Snapshot:
            raw = txn.get(name.encode(), db=self._snapshots)
            if raw is None:
                raise NotFoundError(f"snapshot {name!r} does not exist")
            record = Snapshot.unpack(raw)
            new = dict(record.labels)
            if not paths or "labels" in paths:
                new = dict(labels)
            for path in paths:
                if path == "labels":
                    continue
                if not path.startswith("labels."):
                    raise PreconditionError(f"cannot update {path!r} of snapshot {name!r}: only labels change")
                label = path[len("labels."):]
                if label in labels:
                    new[label] = labels[label]
                else:
                    new.pop(label, None)
            record = replace(record, labels=new, updated=now_ns())
            txn.put(name.encode(), record.pack(), db=self._snapshots)
            return record

        return self._write(update)
