"""Merged views: a stack of registered layers (bottom -> top) seen as one read-only tree, for
`lazylayer mount` of a whole image.

The merge is computed once and stored like a layer of its own (a "view" id from the layer id
space): every directory of the merged tree becomes a view node, and every non-directory entry
points straight at the layer node that wins, so a file keeps its layer inode (one page cache
for both views) and reads go through that layer's chunk table. Lookups and readdir then use the
ordinary Metadata code, in every process, with no merging at request time.

Rules (OCI layer semantics, as overlayfs applies them): for each name the topmost layer that
has it decides; a whiteout hides it and everything below; a non-directory hides everything
below; a directory is merged with the directories of the same name below it until a layer has
a non-directory or whiteout there, or the directory is opaque (or was re-created beside its own
whiteout), which stops the merge after that layer. Whiteouts and opaque flags do not show in the
merged tree.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace

import lmdb
import msgpack

from lazylayer.shared.errors import NotFoundError
from lazylayer.shared.store.corrupt import decoding
from lazylayer.shared.store.env import Store
from lazylayer.shared.store.layers import Layers, allocate_id
from lazylayer.shared.store.metadata import (
    ROOT_ID, LayerMetadata, Metadata, NodeAttr, NodeFlag, NodeRef, delete_metadata, write_metadata,
)

_STOPS_MERGE = int(NodeFlag.OPAQUE | NodeFlag.HIDES_LOWER)  # `NodeAttr.flags` is a plain int


@dataclass(frozen=True)
class ViewRecord:
    view_id: int
    layers: tuple[str, ...]  # bottom -> top
    node_count: int

    @property
    def root(self) -> NodeRef:
        return NodeRef(self.view_id, ROOT_ID)


def _key(layers: Sequence[str]) -> bytes:
    return hashlib.sha256("\n".join(layers).encode()).digest()


class MergedViews:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.meta = Metadata(store)
        self._views = store.db("views")

    def get(self, layers: Sequence[str]) -> ViewRecord | None:
        raw = self.store.read(lambda txn: _copy(txn.get(_key(layers), db=self._views)))
        return None if raw is None else _decode(raw)

    def create(self, layers: Sequence[str]) -> ViewRecord:
        """The view of ``layers`` (bottom -> top, all registered); idempotent like registration."""
        existing = self.get(layers)
        if existing is not None:
            return existing
        records = [Layers(self.store).require(digest) for digest in layers]
        meta = self._build([record.root for record in reversed(records)])

        def create(txn: lmdb.Transaction) -> ViewRecord:
            raw = txn.get(_key(layers), db=self._views)
            if raw is not None:
                return _decode(raw)
            view = ViewRecord(allocate_id(txn, self.store), tuple(layers), meta.node_count)
            write_metadata(txn, self.store, view.view_id, meta)
            txn.put(_key(layers), msgpack.packb([view.view_id, list(view.layers), view.node_count]), db=self._views)
            return view

        return self.store.write(create)

    def remove(self, layers: Sequence[str]) -> bool:
        def remove(txn: lmdb.Transaction) -> bool:
            raw = txn.get(_key(layers), db=self._views)
            if raw is None:
                return False
            delete_metadata(txn, self.store, _decode(raw).view_id)
            txn.delete(_key(layers), db=self._views)
            return True

        return self.store.write(remove)

    def _build(self, roots_top_down: list[NodeRef]) -> LayerMetadata:
        """Walk the merged tree breadth-first; view node ids are assigned in that order."""
        nodes: dict[int, NodeAttr] = {}
        dirents: list[tuple[bytes, NodeRef]] = []
        pending: list[tuple[int, list[NodeRef]]] = [(ROOT_ID, _until_stop(self.meta, roots_top_down))]
        for view_id, sources in pending:
            top = self.meta.getattr(sources[0])
            if top is None:
                raise NotFoundError(f"layer node {sources[0]} vanished while building a merged view")
            attr = replace(top, nlink=2, flags=int(NodeFlag.NONE))
            nodes[view_id] = attr
            for name, winner in sorted(self._merge_dir(sources).items()):
                if isinstance(winner, list):
                    child = ROOT_ID + len(pending)
                    pending.append((child, winner))
                    attr.nlink += 1
                    dirents.append((struct.pack(">I", view_id) + name, NodeRef(0, child)))
                else:
                    dirents.append((struct.pack(">I", view_id) + name, winner))
        return LayerMetadata(
            nodes=[(struct.pack(">I", i), a.encode()) for i, a in sorted(nodes.items())],
            dirents=sorted(dirents),
            chunks=[],
            node_count=len(nodes),
            chunk_count=0,
            payload_bytes=0,
        )

    def _merge_dir(self, sources: list[NodeRef]) -> dict[bytes, NodeRef | list[NodeRef]]:
        """One merged directory: name -> winning non-dir ref, or the dir refs to merge under it."""
        listings = [dict(self.meta.readdir(source)) for source in sources]
        out: dict[bytes, NodeRef | list[NodeRef]] = {}
        for name in sorted(set().union(*listings)):
            chain = [listing[name] for listing in listings if name in listing]
            first = self.meta.getattr(chain[0])
            if first is None or first.is_whiteout:
                continue
            out[name] = _until_stop(self.meta, chain) if first.is_dir else chain[0]
        return out


def _until_stop(meta: Metadata, chain: list[NodeRef]) -> list[NodeRef]:
    """The directories of one name, top down, that merge: stop at a non-directory (or whiteout)
    and after an opaque directory."""
    merged: list[NodeRef] = []
    for ref in chain:
        attr = meta.getattr(ref)
        if attr is None or not attr.is_dir:
            break
        merged.append(ref)
        if attr.flags & _STOPS_MERGE:
            break
    return merged


def _decode(raw: bytes) -> ViewRecord:
    with decoding("merged view"):
        view_id, layers, count = msgpack.unpackb(raw)
        return ViewRecord(view_id, tuple(layers), count)


def _copy(raw: bytes | memoryview | None) -> bytes | None:
    return None if raw is None else bytes(raw)
