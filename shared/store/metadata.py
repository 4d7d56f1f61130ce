"""Per-layer filesystem metadata: nodes, directory entries and file chunk tables.

Built from a streamed TOC (layerbuild.py) and written in batches by `Layers.register`; afterwards every process answers lookup/getattr/readdir/readlink/xattr
and "which chunks cover this range" from LMDB alone.

Why the choices:

* Node ids follow the resolved tree's order (root = 1, then TOC order; hardlinks share their
  target's node), so they are the same in every process and after every restart, and an inode
  (`inode_of`) is a pure function of (layer id, node id).
* Overlay semantics are decided at registration (layerbuild.py), as upstream's node.go does at lookup time
  (reference §2.3): every ``.wh.*`` name and the root landmarks are hidden; ``.wh.x`` shows as a
  whiteout (char 0/0, mode exactly S_IFCHR) named ``x`` only if no real ``x`` is beside it; a
  directory holding ``.wh..wh..opq`` is flagged opaque. Storing the result keeps the read path a
  plain key lookup.
* A directory entry points at a (layer id, node id) pair, not just a node id, so merged image
  views (merged.py) reuse the same tables and code.
"""

from __future__ import annotations

import os
import stat
import struct
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any, NamedTuple

import lmdb
import msgpack
import msgspec

from lazylayer.shared.errors import NotFoundError, TOCError
from lazylayer.shared.estargz.fields import file_time
from lazylayer.shared.estargz.toc import BLOCK, CHAR, DIR, REG, SYMLINK, EntryType, TOCEntry, normalize_name
from lazylayer.shared.store.corrupt import decoding
from lazylayer.shared.store.env import Store

ROOT_ID = 1
MAX_NODE_ID = (1 << 32) - 1
BLOCK_SIZE = 4096
#: A whiteout's mode: permission bits 0, what overlayfs recognises as a whiteout.
WHITEOUT_MODE = stat.S_IFCHR

_NODE_KEY = struct.Struct(">II")  # layer id, node id (also a dirent's value)
_DIRENT_PREFIX = struct.Struct(">II")  # layer id, parent node id; the name follows
_CHUNK_KEY = struct.Struct(">IIQ")  # layer id, node id, chunk offset
_LAYER_KEY = struct.Struct(">I")

#: st_mode's type bits of each entry type (a hardlink is its target's node)
TYPE_BITS = {
    EntryType.DIR: stat.S_IFDIR,
    EntryType.REG: stat.S_IFREG,
    EntryType.SYMLINK: stat.S_IFLNK,
    EntryType.CHAR: stat.S_IFCHR,
    EntryType.BLOCK: stat.S_IFBLK,
    EntryType.FIFO: stat.S_IFIFO,
}


class NodeFlag(IntFlag):
    NONE = 0
    #: A directory that held ``.wh..wh..opq``: lower layers' contents are hidden under it.
    OPAQUE = 1
    #: A whiteout shown as char 0/0: hides the lower layers' entry of the same name.
    WHITEOUT = 2
    #: A real entry with a ``.wh.`` sibling of its own name: lower layers' entry is replaced, not
    #: merged into (OCI: a whiteout applies to lower layers even when the name is re-added).
    HIDES_LOWER = 4


#: The bits as plain ints: `NodeAttr.flags` is one (an IntFlag's ``&`` and constructor run in
#: Python, ~1.5 us each, and the front decodes a node per lookup, getattr and getxattr).
_NO_FLAGS, _OPAQUE_BIT, _WHITEOUT_BIT = int(NodeFlag.NONE), int(NodeFlag.OPAQUE), int(NodeFlag.WHITEOUT)


class OpaqueXattr(IntEnum):
    """Which xattr(s) report an opaque directory (upstream's OverlayOpaqueType)."""

    ALL = 0  # trusted.overlay.opaque and user.overlay.opaque (upstream library default)
    TRUSTED = 1
    USER = 2


_OPAQUE_KEYS = {
    OpaqueXattr.ALL: ("trusted.overlay.opaque", "user.overlay.opaque"),
    OpaqueXattr.TRUSTED: ("trusted.overlay.opaque",),
    OpaqueXattr.USER: ("user.overlay.opaque",),
}


class NodeRef(NamedTuple):
    layer_id: int
    node_id: int

    @property
    def inode(self) -> int:
        return inode_of(self.layer_id, self.node_id)


def inode_of(layer_id: int, node_id: int) -> int:
    """Stable inode: never 1 (FUSE's root) because layer ids start at 1."""
    return (layer_id << 32) | node_id


def split_inode(inode: int) -> NodeRef:
    return NodeRef(inode >> 32, inode & MAX_NODE_ID)


@dataclass(slots=True)
class NodeAttr:
    """What getattr/readlink/getxattr report for one node (``mode`` includes the type bits)."""

    mode: int
    uid: int = 0
    gid: int = 0
    size: int = 0
    mtime: int = 0
    rdev: int = 0
    nlink: int = 1
    link_target: str = ""
    xattrs: dict[str, bytes] = field(default_factory=dict)
    #: `NodeFlag` bits, kept as a plain int
    flags: int = _NO_FLAGS

    @property
    def blocks(self) -> int:
        """st_blocks in 512-byte units of whole 4 KiB blocks (upstream HEAD)."""
        return -(-self.size // BLOCK_SIZE) * (BLOCK_SIZE // 512)

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_whiteout(self) -> bool:
        return bool(self.flags & _WHITEOUT_BIT)

    @property
    def is_opaque(self) -> bool:
        return bool(self.flags & _OPAQUE_BIT)

    def encode(self) -> bytes:
        return msgpack.packb(
            [self.mode, self.uid, self.gid, self.size, self.mtime, self.rdev, self.nlink,
             self.link_target, self.xattrs, int(self.flags)]
        )

    @classmethod
    def decode(cls, raw: bytes | memoryview) -> "NodeAttr":
        with decoding("node attributes"):
            mode, uid, gid, size, mtime, rdev, nlink, link, xattrs, flags = msgpack.unpackb(raw)
            if type(flags) is not int:
                raise TypeError("flags")
            return cls(mode, uid, gid, size, mtime, rdev, nlink, link, xattrs, flags)


#: overlayfs keeps its own state in a lower layer's xattrs of these namespaces (opaque dirs,
#: redirects, metacopy origins, escaped nested-overlay keys; ``user.`` under userxattr) and obeys
#: them in every container stacked on the layer. An image says opaque with `.wh..wh..opq` (OCI);
#: its TOC naming such a key is served nothing (upstream serves it verbatim).
OVERLAY_PRIVATE = ("trusted.overlay.", "user.overlay.")


def visible_xattrs(attr: NodeAttr, opaque: OpaqueXattr) -> dict[str, bytes]:
    """The xattrs getxattr/listxattr show, in listxattr order: opaque key(s) first, then the
    TOC's but overlayfs's own. One helper so the FUSE front and the conformance suite cannot
    disagree."""
    out: dict[str, bytes] = {}
    if attr.is_opaque:
        out.update((key, b"y") for key in _OPAQUE_KEYS[opaque])
    if attr.xattrs:
        out.update((key, value) for key, value in attr.xattrs.items() if not key.startswith(OVERLAY_PRIVATE))
    return out


@dataclass(frozen=True, slots=True)
class FileChunk:
    """One chunk of a regular file: where it is in the file, the blob, and the chunk store."""

    chunk_offset: int
    size: int
    blob_offset: int
    inner_offset: int
    blob_end: int
    digest: str  # "" only for digest-less legacy chunks
    data_key: bytes  # key in the chunk store

    @property
    def end(self) -> int:
        return self.chunk_offset + self.size

    def encode(self) -> bytes:
        """What registration writes (in C, byte for byte the same: shared/store/rowcodec.c)."""
        return packed([self.size, self.blob_offset, self.inner_offset, self.blob_end, self.digest, self.data_key])

    @classmethod
    def decode(cls, chunk_offset: int, raw: bytes | memoryview) -> "FileChunk":
        with decoding("file chunk"):
            size, blob_offset, inner, blob_end, digest, data_key = msgpack.unpackb(raw)
            return cls(chunk_offset, size, blob_offset, inner, blob_end, digest, data_key)


@dataclass
class LayerMetadata:
    """Everything a merged view's registration writes (merged.py), computed before its txn.

    Keys lack the layer-id prefix (unknown until the txn allocates it) and are sorted so the
    write can append.
    """

    nodes: list[tuple[bytes, bytes]]
    #: (parent id + name, target); a target with layer id 0 is a node of the layer being written.
    dirents: list[tuple[bytes, NodeRef]]
    chunks: list[tuple[bytes, bytes]]
    node_count: int
    chunk_count: int
    payload_bytes: int


def _plain_int(value: Any) -> int:
    if isinstance(value, int):  # ModTime (toc.py): msgspec encodes no int subclass but enums
        return int(value)
    raise NotImplementedError(f"no msgpack encoding for {type(value).__name__}")


#: The same bytes as ``msgpack.packb`` (tests/store pins it), 2-3x faster per small value:
#: registration packs two values per TOC entry and one per chunk.
packed = msgspec.msgpack.Encoder(enc_hook=_plain_int).encode


def name_bytes(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def attr_of(entry: TOCEntry) -> NodeAttr:
    """A node's attributes as its TOC entry gives them (link counts and overlay flags are the
    registration's to fix: layerbuild.py)."""
    fields = _attr_fields(entry)
    fields[-1] = dict(fields[-1])
    return NodeAttr(*fields)


def _attr_fields(entry: TOCEntry) -> list[Any]:
    """`NodeAttr`'s fields but the flags, in its order, from a TOC entry (its own xattrs dict)."""
    kind = entry.type
    size, link, rdev, nlink = 0, "", 0, 1
    if kind is REG:
        size = entry.size
    elif kind is DIR:
        nlink = 2
    elif kind is SYMLINK:
        size, link = len(name_bytes(entry.link_name)), entry.link_name
    elif kind is CHAR or kind is BLOCK:
        rdev = os.makedev(entry.dev_major, entry.dev_minor)
    return [TYPE_BITS[kind] | entry.mode, entry.uid, entry.gid, size, file_time(entry.mtime), rdev, nlink, link,
            entry.xattrs]


def write_metadata(txn: lmdb.Transaction, store: Store, layer_id: int, meta: LayerMetadata) -> None:
    """Append one layer's metadata inside the registration txn (keys sorted: append mode)."""
    prefix = struct.pack(">I", layer_id)
    ref = _NODE_KEY.pack
    with txn.cursor(db=store.db("nodes")) as cursor:
        cursor.putmulti(((prefix + k, v) for k, v in meta.nodes), append=_appendable(txn, store, "nodes", prefix))
    with txn.cursor(db=store.db("dirents")) as cursor:
        cursor.putmulti(((prefix + k, ref(t.layer_id or layer_id, t.node_id)) for k, t in meta.dirents),
                        append=_appendable(txn, store, "dirents", prefix))
    with txn.cursor(db=store.db("file_chunks")) as cursor:
        cursor.putmulti(((prefix + k, v) for k, v in meta.chunks),
                        append=_appendable(txn, store, "file_chunks", prefix))


def _appendable(txn: lmdb.Transaction, store: Store, db: str, prefix: bytes) -> bool:
    """Append mode is only legal when every existing key sorts before the new layer's keys."""
    with txn.cursor(db=store.db(db)) as cursor:
        return not cursor.last() or bytes(cursor.key()) < prefix


#: Rows (nodes, dirents and chunks together) written or deleted per write transaction.
BATCH_ROWS = 20_000


def write_rows(txn: lmdb.Transaction, store: Store, rows: dict[str, list[tuple[bytes, bytes]]]) -> None:
    """Put whole keyed rows (database name -> [(key, value)]), each database's in key order:
    appended (no tree search per row) when they all sort after what the database holds, as a
    new layer's nodes and chunks do."""
    for db, items in rows.items():
        if not items:
            continue
        items.sort()
        with txn.cursor(db=store.db(db)) as cursor:
            append = not cursor.last() or bytes(cursor.key()) < items[0][0]
            cursor.putmulti(items, append=append)


def delete_metadata(txn: lmdb.Transaction, store: Store, layer_id: int, limit: int | None = None) -> bool:
    """Delete a layer's (or view's) rows, at most ``limit`` of them; True once none are left."""
    prefix = struct.pack(">I", layer_id)
    left = limit
    for db in ("nodes", "dirents", "file_chunks"):
        with txn.cursor(db=store.db(db)) as cursor:
            if not cursor.set_range(prefix):
                continue
            while bytes(cursor.key()).startswith(prefix):
                if left is not None:
                    if left == 0:
                        return False
                    left -= 1
                if not cursor.delete():
                    break
    return True


class Metadata:
    """Read-only queries; each opens its own short read transaction (or uses the one given)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._nodes = store.db("nodes")
        self._dirents = store.db("dirents")
        self._chunks = store.db("file_chunks")

    def getattr(self, ref: NodeRef, txn: lmdb.Transaction | None = None) -> NodeAttr | None:
        if txn is None:
            return self.store.read(lambda t: self.getattr(ref, t))
        raw = txn.get(_NODE_KEY.pack(*ref), db=self._nodes)
        return None if raw is None else NodeAttr.decode(raw)

    def lookup(self, parent: NodeRef, name: bytes, txn: lmdb.Transaction | None = None) -> NodeRef | None:
        if txn is None:
            return self.store.read(lambda t: self.lookup(parent, name, t))
        raw = txn.get(_DIRENT_PREFIX.pack(*parent) + name, db=self._dirents)
        return None if raw is None else NodeRef(*_NODE_KEY.unpack(raw))

    def readdir(
        self, parent: NodeRef, after: bytes | None = None, limit: int | None = None
    ) -> list[tuple[bytes, NodeRef]]:
        """Entries of a directory sorted by name, starting after ``after`` (a cursor, so a
        large directory can be listed in pieces)."""
        prefix = _DIRENT_PREFIX.pack(*parent)

        def scan(txn: lmdb.Transaction) -> list[tuple[bytes, NodeRef]]:
            out: list[tuple[bytes, NodeRef]] = []
            with txn.cursor(db=self._dirents) as cursor:
                start = prefix + (after + b"\x00" if after is not None else b"")
                if not cursor.set_range(start):
                    return out
                for key, value in cursor:
                    if bytes(key[: len(prefix)]) != prefix or (limit is not None and len(out) >= limit):
                        break
                    out.append((bytes(key[len(prefix):]), NodeRef(*_NODE_KEY.unpack(value))))
            return out

        return self.store.read(scan)

    def resolve(self, root: NodeRef, path: str) -> NodeRef:
        """The node a path names, from ``root``; NotFoundError otherwise. Lookups see only
        visible names, so ``.wh.*`` and root landmarks are not found, as through FUSE."""
        try:
            parts = [p for p in normalize_name(path).split("/") if p]
        except TOCError:
            raise NotFoundError(f"{path}: no such file or directory") from None

        def walk(txn: lmdb.Transaction) -> NodeRef:
            ref = root
            for part in parts:
                found = self.lookup(ref, name_bytes(part), txn)
                if found is None:
                    raise NotFoundError(f"{path}: no such file or directory")
                ref = found
            return ref

        return self.store.read(walk)

    def chunks_covering(self, ref: NodeRef, offset: int, size: int,
                        txn: lmdb.Transaction | None = None) -> list[FileChunk]:
        """The file's chunks that overlap ``[offset, offset+size)``, in file order."""
        if txn is None:
            return self.store.read(lambda t: self.chunks_covering(ref, offset, size, t))
        prefix = _NODE_KEY.pack(*ref)
        out: list[FileChunk] = []
        if size <= 0:
            return out
        with txn.cursor(db=self._chunks) as cursor:
            if not _seek_floor(cursor, _CHUNK_KEY.pack(*ref, offset), prefix):
                return out
            for key, value in cursor:
                if bytes(key[: len(prefix)]) != prefix:
                    break
                chunk = FileChunk.decode(_CHUNK_KEY.unpack(key)[2], value)
                if chunk.chunk_offset >= offset + size:
                    break
                if chunk.end > offset:
                    out.append(chunk)
        return out

    def chunks_after(self, ref: NodeRef, chunk_offset: int, window: int, *, limit: int = 256,
                     txn: lmdb.Transaction | None = None) -> list[FileChunk]:
        """The chunks that follow chunk ``chunk_offset`` of file ``ref`` in the blob, within
        ``window`` compressed bytes of its end: the rest of the file, then the files after it.
        Node ids follow TOC order, which is blob order, so this is one cursor walk; small files
        of one directory lie together there, which is why a miss fetches them along."""
        if txn is None:
            return self.store.read(lambda t: self.chunks_after(ref, chunk_offset, window, limit=limit, txn=t))
        layer = _LAYER_KEY.pack(ref.layer_id)
        out: list[FileChunk] = []
        start: int | None = None
        with txn.cursor(db=self._chunks) as cursor:
            if not cursor.set_range(_CHUNK_KEY.pack(*ref, chunk_offset)):
                return out
            for key, value in cursor:
                if bytes(key[:4]) != layer or len(out) >= limit:
                    break
                chunk = FileChunk.decode(_CHUNK_KEY.unpack(key)[2], value)
                if start is None:  # the missed chunk itself
                    start = chunk.blob_end
                    continue
                if chunk.blob_offset < start:  # a hard link's chunks lie earlier in the blob
                    continue
                if chunk.blob_end > start + window:
                    break
                out.append(chunk)
        return out

    def chunks_before(self, ref: NodeRef, chunk_offset: int, window: int, *, limit: int = 256,
                      txn: lmdb.Transaction | None = None) -> list[FileChunk]:
        """The chunks that precede chunk ``chunk_offset`` of file ``ref`` in the blob, within
        ``window`` compressed bytes of its start, nearest last: `chunks_after` walking back. A
        program opens a directory's files in its own order, not the TOC's (a package's
        ``__init__`` first, then modules named before it)."""
        if txn is None:
            return self.store.read(lambda t: self.chunks_before(ref, chunk_offset, window, limit=limit, txn=t))
        layer = _LAYER_KEY.pack(ref.layer_id)
        out: list[FileChunk] = []
        with txn.cursor(db=self._chunks) as cursor:
            key = _CHUNK_KEY.pack(*ref, chunk_offset)
            if not cursor.set_key(key):
                return out
            start = FileChunk.decode(chunk_offset, cursor.value()).blob_offset
            while len(out) < limit and cursor.prev():
                key = cursor.key()
                if bytes(key[:4]) != layer:
                    break
                chunk = FileChunk.decode(_CHUNK_KEY.unpack(key)[2], cursor.value())
                if chunk.blob_end > start:  # out of blob order
                    continue
                if chunk.blob_offset < start - window:
                    break
                out.append(chunk)
        out.reverse()
        return out

    def all_chunks(self, ref: NodeRef) -> list[FileChunk]:
        return self.chunks_covering(ref, 0, 1 << 62)

    def prefetch_chunks(self, layer_id: int, prefetch_end: int, last_node: int | None = None) -> list[FileChunk]:
        """Every chunk of every file whose first payload starts before ``prefetch_end`` (the
        landmark's compressed offset): upstream filters per file, not per chunk (reference §2.2).

        Rows are in file order, not blob order: without ``last_node`` (the layer record's
        `prefetch_nodes`) every chunk row of the layer is walked, decoding only first chunks'
        values (0.05 s for the 17,698 chunks of the bench's rootfs); with it, only the rows of
        files up to that node, which for an eStargz with its prefetched files first is a few
        hundred (under a millisecond): a prefetching layer's first piece waited for the walk."""
        prefix = struct.pack(">I", layer_id)
        node_of, offset_of = struct.Struct(">I").unpack_from, struct.Struct(">Q").unpack_from
        last = MAX_NODE_ID if last_node is None else last_node

        def scan(txn: lmdb.Transaction) -> list[FileChunk]:
            out: list[FileChunk] = []
            taking = False
            with txn.cursor(db=self._chunks) as cursor, decoding("file chunk"):
                if not cursor.set_range(prefix):
                    return out
                for key, value in cursor:
                    if key[:4] != prefix or node_of(key, 4)[0] > last:
                        break
                    chunk_offset = offset_of(key, 8)[0]
                    if chunk_offset == 0 or taking:
                        fields = msgpack.unpackb(value)
                        if chunk_offset == 0:
                            taking = fields[1] < prefetch_end  # its blob offset
                        if taking:
                            out.append(FileChunk(chunk_offset, *fields))
            return out

        return self.store.read(scan)


def _seek_floor(cursor: lmdb.Cursor, key: bytes, prefix: bytes) -> bool:
    """Position at the last key <= ``key`` that starts with ``prefix`` (the chunk holding an
    offset starts at or before it), else at the first key > ``key``; False if there is none."""
    if cursor.set_range(key):
        if bytes(cursor.key()) == key:
            return True
        if cursor.prev() and bytes(cursor.key()).startswith(prefix):
            return True
        return cursor.set_range(key)
    return cursor.last() and bytes(cursor.key()).startswith(prefix)
