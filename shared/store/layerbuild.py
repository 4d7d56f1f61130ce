"""A layer's metadata rows built from a streamed TOC and written in bounded batches.

A 1,000,000-entry layer used to be held as JSON text, a list of dicts, a list of entries, the
resolved tree and the encoded rows, all at once (over a GB), and written in one transaction.
Here each entry is applied to the tree (tree.py) as it is decoded and kept only as what its rows
need, already encoded: the node's attributes as msgpack bytes and, for a regular file, its
validated chunks. Once the stream ends (and with it the TOC digest check) the rows are produced
in node order and written `BATCH_ROWS` at a time, each batch its own short write transaction, so
neither this process's memory nor other writers' wait grows with the layer.

The overlay rules (metadata.py's module docstring) are applied in the same passes: whiteouts,
opaque directories, hidden landmarks, hardlinks sharing their target's node, directory link
counts. Rows go under a layer id no reader can reach until `Layers.register` publishes the layer
record last; see `PENDING_PREFIX` for what happens to the rows of a registration that dies.

The rules stay here, in Python. Two loops that run once per entry, node or chunk are C: the one
applying the common entries (a plain file, dir or symlink at a new path; scanloop.c, which
declines everything else to `_apply`) and the one laying decided values out as bytes (a node's
attributes, the rows' keys and values; rowcodec.c).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator

from lazylayer.shared.errors import FormatError, TOCError, TOCLimitError
from lazylayer.shared.estargz.fields import MTIME_MAX, file_time
from lazylayer.shared.estargz.toc import (
    BLOCK, CHAR, CHUNK, DIR, HARDLINK, NO_PREFETCH_LANDMARK, OPAQUE_WHITEOUT, PREFETCH_LANDMARK, REG, SYMLINK,
    WHITEOUT_PREFIX, EntryType, TOCEntry, TOCLimits, parent_of, settled, split_name,
)
from lazylayer.shared.estargz.tocstream import TOCStream
from lazylayer.shared.estargz.tree import ChunkSpec, PayloadStarts, TreeBuilder, file_chunks, resolve_hardlinks
from lazylayer.shared.store._rowcodec import encode_attr, encode_rows, scan_groups
from lazylayer.shared.store.chunks import digest_key, unverified_key
from lazylayer.shared.store.metadata import (
    BATCH_ROWS, MAX_NODE_ID, OVERLAY_PRIVATE, ROOT_ID, TYPE_BITS, WHITEOUT_MODE, NodeAttr, NodeFlag, attr_of,
)

_ROOT_LANDMARKS = (PREFETCH_LANDMARK, NO_PREFETCH_LANDMARK)
#: entry type -> (st_mode type bits, shape) for rowcodec.c's `encode_attr`: what a kind shows
#: besides mode, ids and time (1 its size, 2 two links, 3 its target and its length, 4 rdev)
_ATTR_KINDS = {kind: (bits, {REG: 1, DIR: 2, SYMLINK: 3, CHAR: 4, BLOCK: 4}.get(kind, 0))
               for kind, bits in TYPE_BITS.items()}
_NODE_KEY = struct.Struct(">II")
#: the entry types scanloop.c tells apart
_SCAN_TYPES = (REG, DIR, SYMLINK, CHUNK)


#: What one path keeps while the TOC streams: (type, its encoded `NodeAttr`, for a regular file
#: its validated chunks; blob ends need every payload start, known only at the end), not the
#: entry with its names and xattrs. Hardlinks keep their entry. `Layers.register` runs with the
#: cyclic GC paused (shared/gcpause.py): a million of these are never walked by it.
_Node = tuple[EntryType, bytes, tuple[ChunkSpec, ...]]
Value = _Node | TOCEntry


def _kind(value: Value) -> EntryType:
    return value.type if isinstance(value, TOCEntry) else value[0]


Rows = dict[str, list[tuple[bytes, bytes]]]


class LayerScan:
    """A layer's tree from its TOC stream, compact (`scan`); `rows` then yields its rows."""

    def __init__(self, layer_digest: str, *, allow_unverified: bool = False) -> None:
        self.layer_digest = layer_digest
        self.allow_unverified = allow_unverified
        self.node_count = 0
        #: Counted as `rows` produces them.
        self.chunk_count = 0
        self.payload_bytes = 0
        #: Compressed end of the prefetch range: the landmark's offset, 0 for
        #: ``.no.prefetch.landmark``, None when the layer has neither.
        self.prefetch_end: int | None = None
        #: No file of the prefetch range has a node id above this (`LayerRecord.prefetch_nodes`).
        self.prefetch_nodes: int | None = None
        #: Nodes that may show an xattr: entries with xattrs, and (counted by `rows`) opaque dirs.
        self.xattr_nodes = 0
        #: Entries naming overlayfs's own xattrs, which are not served (`OVERLAY_PRIVATE`), and the first.
        self.overlay_xattrs = 0
        self.first_overlay_xattr = ""
        self._tree: TreeBuilder[Value] = TreeBuilder(lambda name: _IMPLICIT_DIR, _kind)
        self._starts = PayloadStarts()
        self._hardlinks: dict[str, str] = {}
        self._payload_end = 0
        self._limits = TOCLimits()

    def scan(self, stream: TOCStream) -> None:
        """Apply every entry of ``stream``; raises what the TOC is refused for."""
        self._payload_end, self._limits = stream.payload_end, stream.limits
        # The loop is C (scanloop.c): toc.py's `settled`, tree.py's `grouped`, each common group
        # kept and added there as `_keep` and `TreeBuilder.add` would, every other one by `_apply`.
        # Node ids follow the tree's path order, one per path but hardlinks, so a path's id is
        # at most ROOT_ID + its index there: the loop counts the nodes when the landmark (written
        # after the prefetched files), or a later file still starting before it, was added.
        landmark_offset, landmark_bound = scan_groups(
            stream.decoded(), _SCAN_TYPES, self._tree.nodes, self._tree.children, self._apply,
            self._starts.starts, _ATTR_KINDS, MTIME_MAX, stream.payload_end, self._limits.max_chunk_bytes, self.allow_unverified,
            PREFETCH_LANDMARK, TOCError, settled)
        self._starts.finish(stream.payload_end)
        self._hardlinks = resolve_hardlinks(self._tree.nodes, _kind)
        landmark = self._tree.nodes.get(PREFETCH_LANDMARK)
        if NO_PREFETCH_LANDMARK in self._tree.nodes:
            self.prefetch_end = 0
        elif landmark is not None and _kind(landmark) is REG:
            self.prefetch_end = landmark_offset
            self.prefetch_nodes = None if landmark_bound is None else ROOT_ID - 1 + landmark_bound
        self.node_count = len(self._tree.nodes) - len(self._hardlinks)
        if self.node_count > MAX_NODE_ID - ROOT_ID:
            raise TOCLimitError(f"layer has {self.node_count} nodes; at most {MAX_NODE_ID - ROOT_ID} fit")

    def _apply(self, entry: TOCEntry, pieces: list[TOCEntry]) -> Value:
        """A group scanloop.c left to Python: kept (validated, refused if it must be) and added."""
        kept = self._keep(entry, pieces)
        self._tree.add(entry, kept)
        return kept

    def _keep(self, entry: TOCEntry, pieces: list[TOCEntry]) -> Value:
        if entry.xattrs:
            self.xattr_nodes += 1
            if any(key.startswith(OVERLAY_PRIVATE) for key in entry.xattrs):
                self.overlay_xattrs += 1
                self.first_overlay_xattr = self.first_overlay_xattr or entry.name
        if entry.type is HARDLINK:
            return entry
        chunks: tuple[ChunkSpec, ...] = ()
        if entry.type is REG:
            chunks = tuple(file_chunks(pieces, self._payload_end, self._limits))
            for offset, _, blob_offset, _, digest in chunks:
                if not digest and not self.allow_unverified:
                    raise FormatError(f"{entry.name}: chunk at {offset} has no digest")
                self._starts.append(blob_offset)
        return (entry.type, encoded_attr_of(entry), chunks)

    def rows(self, layer_id: int) -> Iterator[Rows]:
        """The layer's node, dirent and file-chunk rows under ``layer_id``, in batches."""
        nodes, hardlinks = self._tree.nodes, self._hardlinks
        hides, whiteouts, opaque = self._overlay_marks()
        self.xattr_nodes += len(opaque)
        # Ids of the nodes other rows point at: directories (parents), hardlink targets, and
        # what a whiteout marks. Everything else gets its id as it is written.
        needed = set(hardlinks.values()) | hides | set(whiteouts)
        ids: dict[str, int] = {}
        subdirs: Counter[str] = Counter()
        next_id = ROOT_ID
        for path, value in nodes.items():
            if isinstance(value, TOCEntry):  # a hardlink: its target's node
                continue
            is_dir = value[0] is DIR
            if is_dir or path in needed:
                ids[path] = next_id
            next_id += 1
            if is_dir and path and _shows(path):
                subdirs[parent_of(path)] += 1
        links = Counter(hardlinks.values())
        special = hides | whiteouts.keys() | opaque | links.keys() | subdirs.keys()
        prefix = struct.pack(">I", layer_id)
        parent_keys = {path: prefix + struct.pack(">I", node) for path, node in ids.items()}
        hardlink_keys = {path: _NODE_KEY.pack(layer_id, ids[target]) for path, target in hardlinks.items()}

        def special_attr(path: str, node: _Node) -> bytes:
            return self._attr(path, node, 1 + links.get(path, 0), subdirs.get(path, 0), hides, whiteouts, opaque)

        def special_dirent(path: str) -> tuple[str, str] | None:
            return _dirent(path, nodes, hardlinks)

        def chunk_key(digest: str, blob_offset: int, inner: int) -> bytes:
            return (digest_key(bytes.fromhex(digest[7:])) if digest
                    else unverified_key(self.layer_digest, blob_offset, inner))

        # the per-node loop is C (rowcodec.c): it runs once per TOC entry and chunk of the layer
        items = list(nodes.items())
        node_id = ROOT_ID - 1
        for start in range(0, max(len(items), 1), BATCH_ROWS):
            node_rows, dirent_rows, file_chunk_rows, node_id, payload, chunks = encode_rows(
                items, start, start + BATCH_ROWS, node_id, layer_id, special, special_attr, hardlink_keys,
                parent_keys, _ROOT_LANDMARKS, special_dirent, self._starts.starts, chunk_key)
            self.payload_bytes += payload
            self.chunk_count += chunks
            yield {"nodes": node_rows, "dirents": dirent_rows, "file_chunks": file_chunk_rows}

    def _overlay_marks(self) -> tuple[set[str], dict[str, int], set[str]]:
        """From the ``.wh.*`` names: the nodes a whiteout of their own name sits beside
        (HIDES_LOWER), the whiteout nodes shown as char 0/0 (with their mtime), opaque dirs."""
        nodes, hardlinks = self._tree.nodes, self._hardlinks
        hides: set[str] = set()
        whiteouts: dict[str, int] = {}
        opaque: set[str] = set()
        for path, value in nodes.items():
            if WHITEOUT_PREFIX not in path:
                continue
            parent, base = split_name(path)
            if not base.startswith(WHITEOUT_PREFIX):
                continue
            if base == OPAQUE_WHITEOUT:
                opaque.add(parent)
                continue
            hidden = base[len(WHITEOUT_PREFIX):]
            if not hidden:
                continue
            sibling = _join(parent, hidden)
            if sibling in nodes:
                hides.add(hardlinks.get(sibling, sibling))
            else:
                mtime = value.mtime if isinstance(value, TOCEntry) else NodeAttr.decode(value[1]).mtime
                whiteouts[hardlinks.get(path, path)] = file_time(mtime)
        return hides, whiteouts, opaque

    def _attr(self, path: str, node: _Node, names: int, subdirs: int, hides: set[str],
              whiteouts: dict[str, int], opaque: set[str]) -> bytes:
        """The row of a node with a link count or a flag to fix (`rows` keeps the others' rows
        as encoded while streaming); it may still turn out to need none."""
        kind, encoded, _ = node
        is_dir = kind is DIR
        if path in whiteouts:
            attr = NodeAttr(WHITEOUT_MODE, mtime=whiteouts[path], flags=int(NodeFlag.WHITEOUT))
        elif (is_dir and subdirs == 0 or not is_dir and names == 1) and path not in hides and path not in opaque:
            return encoded
        else:
            attr = NodeAttr.decode(encoded)
            attr.nlink = 2 + subdirs if is_dir else names
        if path in hides:
            attr.flags |= int(NodeFlag.HIDES_LOWER)
        if path in opaque:
            attr.flags |= int(NodeFlag.OPAQUE)
        return attr.encode()


def encoded_attr_of(entry: TOCEntry) -> bytes:
    """``attr_of(entry).encode()`` (metadata.py), in C and without the object in between:
    registration encodes one per TOC entry."""
    return encode_attr(entry, _ATTR_KINDS, MTIME_MAX)


def _shows(path: str) -> bool:
    """A name that gets a directory entry as itself (not a whiteout, not a root landmark)."""
    parent, base = split_name(path)
    return not base.startswith(WHITEOUT_PREFIX) and not (not parent and base in _ROOT_LANDMARKS)


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _dirent(path: str, nodes: dict[str, Value], hardlinks: dict[str, str]) -> tuple[str, str] | None:
    """(parent path, shown name) of the entry ``path`` gets, or None when it is hidden: ``.wh.x``
    shows as ``x`` only when no real ``x`` is beside it; root landmarks never show."""
    parent, base = split_name(path)
    if base.startswith(WHITEOUT_PREFIX):
        hidden = base[len(WHITEOUT_PREFIX):]
        if base == OPAQUE_WHITEOUT or not hidden or _join(parent, hidden) in nodes:
            return None
        return parent, hidden
    if not parent and base in _ROOT_LANDMARKS:
        return None
    return parent, base


_IMPLICIT_DIR: _Node = (DIR, attr_of(TOCEntry(name="", type=DIR, mode=0o755)).encode(), ())

