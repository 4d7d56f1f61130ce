"""How a TOC's entries, applied in order, make a tree: the rules both the TOC model (toc.py) and
layer registration (store/layerbuild.py) follow, so that what a reader shows and what is
registered cannot differ.

Entries come one at a time (tocstream.py); `grouped` pairs each regular file with the chunk
entries after it, `TreeBuilder` applies them as layer extraction does (the later of duplicate
names wins, a non-directory replacing a directory drops what was under it, missing parents exist
implicitly), `file_chunks` validates one file's chunk tiling as soon as it is complete, and
`resolve_hardlinks` follows hardlink chains once every name is known. The builder stores whatever
value its caller keeps per path (a whole `TOCEntry`, or something more compact) and asks the
caller's ``kind_of`` for its type, so the caller decides what a large layer costs in memory.
"""

from __future__ import annotations

from array import array
from dataclasses import replace
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from lazylayer.shared.errors import TOCError, TOCLimitError
from lazylayer.shared.estargz.toc import (
    CHUNK, DIR, HARDLINK, REG, SYMLINK, TOC, TOC_VERSION, Chunk, EntryType, TOCEntry, TOCLimits, is_digest,
    normalize_name, not_a_digest, parent_of,
)
from lazylayer.shared.estargz.tocstream import TOCStream

#: One validated chunk of a file: (chunk offset, size, blob offset, inner offset, digest).
ChunkSpec = tuple[int, int, int, int, str]


V = TypeVar("V")


def type_of(entry: TOCEntry) -> EntryType:
    return entry.type


def grouped(entries: Iterable[TOCEntry]) -> Iterator[tuple[TOCEntry, list[TOCEntry]]]:
    """Each non-chunk entry with its pieces: ``[reg, chunk entries...]`` for a regular file,
    ``[entry]`` otherwise. Chunk entries take their file's name; uname/gname are backfilled."""
    owners: dict[int, str] = {}
    groups: dict[int, str] = {}
    current: tuple[TOCEntry, list[TOCEntry]] | None = None
    for entry in entries:
        if entry.type is CHUNK:
            if current is None or current[0].type is not REG:
                raise TOCError(f"entry {entry.name!r}: chunk entry does not follow a regular file")
            entry.name = current[0].name
            current[1].append(entry)
            continue
        if current is not None:
            yield current
        _backfill(entry, owners, groups)
        current = (entry, [entry])
    if current is not None:
        yield current


def _backfill(entry: TOCEntry, owners: dict[int, str], groups: dict[int, str]) -> None:
    """Upstream writers name a uid/gid only the first time they see it; repeat it here."""
    if entry.uname:
        owners[entry.uid] = entry.uname
    elif entry.uid in owners:
        entry.uname = owners[entry.uid]
    if entry.gname:
        groups[entry.gid] = entry.gname
    elif entry.gid in groups:
        entry.gname = groups[entry.gid]


class TreeBuilder(Generic[V]):
    """Applies entries in order the way layer extraction does, keeping the result consistent.

    ``nodes`` maps each path of the resolved tree to its caller's value, the root first, then in
    the order paths first appeared (a replaced path keeps its place)."""

    def __init__(self, implicit_dir: Callable[[str], V], kind_of: Callable[[V], EntryType]) -> None:
        #: The value of a directory only implied by what lives under it (and the root's).
        self.implicit_dir = implicit_dir
        #: The entry type a value stands for.
        self.kind_of = kind_of
        self.nodes: dict[str, V] = {"": implicit_dir("")}
        self.implicit: set[str] = {""}
        #: directory path -> the paths directly under it: a key for each directory there is, and
        #: only for those (store/scanloop.c adds the common entries itself, keeping it so)
        self.children: dict[str, set[str]] = {"": set()}

    def add(self, entry: TOCEntry, value: V) -> None:
        """Apply one non-chunk entry, keeping ``value`` for its path."""
        path = entry.name
        kind = entry.type
        if path == "" and kind is not DIR:
            raise TOCError(f"entry {path!r}: the layer root is a {kind.value}, not a dir")
        if (kind is SYMLINK or kind is HARDLINK) and not entry.link_name:
            raise TOCError(f"entry {path!r}: {kind.value} has no target (linkName)")
        parent = parent_of(path)
        if path and parent not in self.children:
            self._ensure_parent(path)
        if kind is not DIR and path in self.children:
            self._drop_subtree(path)
        self.nodes[path] = value
        self.implicit.discard(path)
        if kind is DIR:
            self.children.setdefault(path, set())
        if path:
            self.children[parent].add(path)

    def _ensure_parent(self, path: str) -> None:
        parent = parent_of(path)
        missing: list[str] = []
        while parent not in self.nodes:
            missing.append(parent)
            parent = parent_of(parent)
        kind = self.kind_of(self.nodes[parent])
        if kind is not DIR:
            raise TOCError(f"entry {path!r}: parent {parent!r} is a {kind.value}, not a directory")
        for name in reversed(missing):
            self.nodes[name] = self.implicit_dir(name)
            self.implicit.add(name)
            self.children[name] = set()
            self.children[parent_of(name)].add(name)

    def _drop_subtree(self, path: str) -> None:
        stack = list(self.children.pop(path, ()))
        while stack:
            name = stack.pop()
            del self.nodes[name]
            self.implicit.discard(name)
            stack.extend(self.children.pop(name, ()))


class PayloadStarts:
    """Compressed offsets where payloads start: a chunk's data ends where the next one begins."""

    def __init__(self) -> None:
        #: sorted once `finish` ran, the payload end last (registration's C row encoder reads it)
        self.starts = array("q")

    def append(self, offset: int) -> None:
        """A payload (one chunk of `file_chunks`) starts at ``offset``."""
        self.starts.append(offset)

    def finish(self, payload_end: int) -> None:
        self.starts.append(payload_end)
        self.starts = array("q", sorted(self.starts))

    def end_after(self, offset: int) -> int:
        return self.starts[bisect_right(self.starts, offset)]


def file_chunks(pieces: list[TOCEntry], payload_end: int, limits: TOCLimits) -> list[ChunkSpec]:
    """Validate one regular file's chunk entries; its chunks in file order."""
    reg = pieces[0]
    name, size = reg.name, reg.size
    if reg.digest and not is_digest(reg.digest):
        raise not_a_digest(reg.digest, f"entry {name!r}: digest")
    if size == 0:
        if len(pieces) > 1:
            raise TOCError(f"entry {name!r}: empty file has {len(pieces) - 1} chunk entries")
        return []
    ordered = sorted(pieces, key=lambda e: e.chunk_offset) if len(pieces) > 1 else pieces
    if ordered[0].chunk_offset != 0:
        raise TOCError(
            f"entry {name!r}: gap: the first chunk starts at file offset "
            f"{ordered[0].chunk_offset}, not 0"
        )
    out: list[ChunkSpec] = []
    for index, piece in enumerate(ordered):
        last = index == len(ordered) - 1
        start = piece.chunk_offset
        end = size if last else ordered[index + 1].chunk_offset
        if end <= start:
            where = "is past the file size" if last else "overlaps the next chunk"
            raise TOCError(f"entry {name!r}: the chunk at file offset {start} {where} ({size})")
        length = end - start
        if piece.chunk_size and piece.chunk_size != length:
            if last:
                raise TOCError(
                    f"entry {name!r}: chunk sizes add up to {start + piece.chunk_size}, "
                    f"not the file size {size}"
                )
            problem = "gap after" if piece.chunk_size < length else "overlap at"
            raise TOCError(
                f"entry {name!r}: {problem} the chunk at file offset {start} (its chunkSize is "
                f"{piece.chunk_size}, the next chunk starts at {end})"
            )
        if piece.inner_offset + length > limits.max_chunk_bytes:
            raise TOCLimitError(
                f"entry {name!r}: the chunk at file offset {start} needs "
                f"{piece.inner_offset + length} uncompressed bytes, over the limit of "
                f"{limits.max_chunk_bytes}"
            )
        if piece.offset >= payload_end:
            raise TOCError(
                f"entry {name!r}: the chunk at file offset {start} has blob offset "
                f"{piece.offset}, past the payload end {payload_end}"
            )
        digest = piece.chunk_digest or (reg.digest if len(ordered) == 1 else "")
        if digest and digest is not reg.digest and not is_digest(digest):
            raise not_a_digest(digest, f"entry {name!r}: chunk at file offset {start}: chunkDigest")
        out.append((start, length, piece.offset, piece.inner_offset, digest))
    return out


def resolve_hardlinks(nodes: Mapping[str, V], kind_of: Callable[[V], EntryType]) -> dict[str, str]:
    """hardlink path -> final target path; refuses missing targets, loops and directories.
    A hardlink's value in ``nodes`` must be its `TOCEntry`."""
    links = {path: value for path, value in nodes.items() if kind_of(value) is HARDLINK}
    resolved: dict[str, str] = {}
    for path in links:
        if path in resolved:
            continue
        chain: list[str] = []
        seen: set[str] = set()
        current = path
        while True:
            if current in resolved:
                target = resolved[current]
                break
            if kind_of(nodes[current]) is not HARDLINK:
                target = current
                break
            if current in seen:
                raise TOCError(f"entry {path!r}: hardlinks loop ({' -> '.join(chain + [current])})")
            chain.append(current)
            seen.add(current)
            node = links[current]
            assert isinstance(node, TOCEntry)
            try:
                current = normalize_name(node.link_name)
            except TOCError:
                raise TOCError(
                    f"entry {node.name!r}: hardlink target {node.link_name!r} escapes the layer root"
                ) from None
            if current not in nodes:
                raise TOCError(f"entry {node.name!r}: hardlink target {node.link_name!r} is not in the layer")
        if kind_of(nodes[target]) is DIR:
            raise TOCError(f"entry {path!r}: hardlink to a directory ({target!r})")
        for name in chain:
            resolved[name] = target
    return resolved


def build_toc(stream: TOCStream) -> TOC:
    """The whole TOC in memory, validated: for tools and tests that look around a layer."""
    entries: list[TOCEntry] = []
    tree: TreeBuilder[TOCEntry] = TreeBuilder(_implicit_dir, type_of)
    starts = PayloadStarts()
    chunks: dict[str, tuple[Chunk, ...]] = {}
    for entry, pieces in grouped(_kept(stream, entries)):
        tree.add(entry, entry)
        if entry.type is REG:
            specs = file_chunks(pieces, stream.payload_end, stream.limits)
            for spec in specs:
                starts.append(spec[2])
            chunks[entry.name] = tuple(Chunk(*spec[:4], 0, spec[4], entry.name) for spec in specs)
    starts.finish(stream.payload_end)
    kept = {
        path: tuple(replace(c, blob_end=starts.end_after(c.blob_offset)) for c in chunks[path])
        for path, node in tree.nodes.items() if node.type is REG
    }
    hardlinks = resolve_hardlinks(tree.nodes, type_of)
    assert stream.digest is not None  # the stream is exhausted
    return TOC(TOC_VERSION, entries, stream.digest, stream.json_size, stream.payload_end, stream.limits,
               tree.nodes, tree.implicit, hardlinks, kept)


def _kept(stream: TOCStream, entries: list[TOCEntry]) -> Iterator[TOCEntry]:
    for entry in stream:
        entries.append(entry)
        yield entry


def _implicit_dir(name: str) -> TOCEntry:
    return TOCEntry(name=name, type=DIR, mode=0o755)
