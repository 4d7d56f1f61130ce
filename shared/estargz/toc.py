"""The TOC (`stargz.index.json`): entry model and its JSON encoding.

The JSON schema and its quirks are reference §1.3-1.5: zero-valued fields are omitted, xattr values
are base64, `mode` may carry file-type bits (we keep only 07777), names may start with `./` and
directories end with `/`, `chunk` entries repeat (and readers ignore) the file name, and `modtime`
is RFC 3339 rounded to seconds, omitted for the zero time and for the Unix epoch.

This module is the model both the reader and the writer use; `TOCEntry` is one JSON entry with
names already normalised, nothing derived. `parse_toc` turns a whole TOC into a validated `TOC`:
the resolved tree (duplicates, implicit parents, hardlinks) and each regular file's `Chunk` list,
with every hostile shape (escaping names, link loops, gaps, overlaps, offsets past the payload,
absurd sizes, over-limit TOCs) refused up front with a `TOCError` naming the entry, so nothing
downstream ever has to re-check the TOC.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import posixpath
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from enum import Enum
from typing import Any

from lazylayer.shared.errors import TOCError, TOCLimitError
from lazylayer.shared.estargz.fields import DEV_MAJOR_MAX, DEV_MINOR_MAX, UINT32_MAX, int_field, text_field

TOC_TAR_NAME = "stargz.index.json"
TOC_VERSION = 1
PREFETCH_LANDMARK = ".prefetch.landmark"
NO_PREFETCH_LANDMARK = ".no.prefetch.landmark"
LANDMARK_CONTENT = b"\x0f"
WHITEOUT_PREFIX = ".wh."
OPAQUE_WHITEOUT = ".wh..wh..opq"

_PERM_MASK = 0o7777


class EntryType(str, Enum):
    DIR = "dir"
    REG = "reg"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    CHUNK = "chunk"


@dataclass(slots=True)
class TOCEntry:
    """One TOC entry. ``name`` is normalised (no leading ``./`` or ``/``, no trailing ``/``;
    the root is ``""``); ``mtime`` is Unix seconds (0 when the TOC omits it)."""

    name: str
    type: EntryType
    size: int = 0
    mtime: int = 0
    link_name: str = ""
    mode: int = 0
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    dev_major: int = 0
    dev_minor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)
    digest: str = ""
    offset: int = 0
    chunk_offset: int = 0
    chunk_size: int = 0
    chunk_digest: str = ""
    inner_offset: int = 0

    @property
    def has_payload(self) -> bool:
        """True for entries whose bytes live in the blob (non-empty reg and every chunk)."""
        return self.type is EntryType.CHUNK or (self.type is EntryType.REG and self.size > 0)


def normalize_name(raw: str) -> str:
    """Clean a tar path the way upstream does (clean('/'+name) minus the leading '/').

    A name that would climb above the root is refused here rather than silently clamped:
    a TOC that says ``../x`` is hostile, not sloppy.
    """
    if "\x00" in raw:
        raise TOCError(f"entry {raw!r}: name contains a NUL byte")
    parts: list[str] = []
    for part in raw.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                raise TOCError(f"entry {raw!r}: name escapes the layer root")
            parts.pop()
            continue
        parts.append(part)
    return "/".join(parts)


def format_modtime(mtime: int) -> str | None:
    """RFC 3339 UTC, as Go's time.Time marshals a seconds-rounded UTC time; None for epoch 0."""
    if mtime == 0:
        return None
    when = datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=mtime)
    # strftime's %Y does not zero-pad years below 1000; RFC 3339 needs four digits.
    return f"{when.year:04d}-" + when.strftime("%m-%dT%H:%M:%SZ")


def parse_modtime(value: str, name: str) -> int:
    """Unix seconds from an RFC 3339 string; Go's zero time (year 1) maps to 0 like an omitted one."""
    text = value.strip()
    if text.startswith("0001-01-01T00:00:00"):
        return 0
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise TOCError(f"entry {name!r}: modtime {value!r} is not RFC 3339") from exc
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() // 1)


def entry_from_json(obj: Any) -> TOCEntry:
    """One entry from its decoded JSON object, with every field type- and range-checked (fields.py)."""
    if not isinstance(obj, dict):
        raise TOCError(f"TOC entry is a {type(obj).__name__}, not an object")
    raw_name = text_field(obj, "name", repr(obj.get("name")))
    try:
        kind = EntryType(text_field(obj, "type", raw_name))
    except ValueError:
        raise TOCError(f"entry {raw_name!r}: unknown type {obj.get('type')!r}") from None
    name = normalize_name(raw_name)
    xattrs: dict[str, bytes] = {}
    raw_xattrs = obj.get("xattrs") or {}
    if not isinstance(raw_xattrs, dict):
        raise TOCError(f"entry {raw_name!r}: xattrs is not an object")
    for key, value in raw_xattrs.items():
        if not isinstance(value, str):
            raise TOCError(f"entry {raw_name!r}: xattr {key!r} is not a base64 string")
        try:
            xattrs[key] = base64.b64decode(value, validate=True)
        except binascii.Error:
            raise TOCError(f"entry {raw_name!r}: xattr {key!r} is not valid base64") from None
    modtime = text_field(obj, "modtime", raw_name)
    entry = TOCEntry(
        name=name,
        type=kind,
        size=int_field(obj, "size", raw_name),
        mtime=parse_modtime(modtime, raw_name) if modtime else 0,
        link_name=text_field(obj, "linkName", raw_name),
        mode=int_field(obj, "mode", raw_name, UINT32_MAX) & _PERM_MASK,
        uid=int_field(obj, "uid", raw_name, UINT32_MAX),
        gid=int_field(obj, "gid", raw_name, UINT32_MAX),
        uname=text_field(obj, "userName", raw_name),
        gname=text_field(obj, "groupName", raw_name),
        dev_major=int_field(obj, "devMajor", raw_name, DEV_MAJOR_MAX),
        dev_minor=int_field(obj, "devMinor", raw_name, DEV_MINOR_MAX),
        xattrs=xattrs,
        digest=text_field(obj, "digest", raw_name),
        offset=int_field(obj, "offset", raw_name),
        chunk_offset=int_field(obj, "chunkOffset", raw_name),
        chunk_size=int_field(obj, "chunkSize", raw_name),
        chunk_digest=text_field(obj, "chunkDigest", raw_name),
        inner_offset=int_field(obj, "innerOffset", raw_name),
    )
    return entry


def entry_to_json(entry: TOCEntry, *, emit_uname: bool = True, emit_gname: bool = True) -> dict[str, Any]:
    """The JSON object upstream's writer would emit for ``entry`` (zero fields omitted).

    Directories get their trailing ``/`` back, as Go's archive/tar names them. The writer passes
    ``emit_uname``/``emit_gname`` False for repeats, matching upstream's first-occurrence rule.
    """
    name = entry.name + "/" if entry.type is EntryType.DIR and entry.name else entry.name
    out: dict[str, Any] = {"name": name, "type": entry.type.value}
    pairs: list[tuple[str, Any]] = [
        ("size", entry.size),
        ("modtime", format_modtime(entry.mtime)),
        ("linkName", entry.link_name),
        ("mode", entry.mode),
        ("uid", entry.uid),
        ("gid", entry.gid),
        ("userName", entry.uname if emit_uname else ""),
        ("groupName", entry.gname if emit_gname else ""),
        ("devMajor", entry.dev_major),
        ("devMinor", entry.dev_minor),
        ("xattrs", {k: base64.b64encode(v).decode() for k, v in entry.xattrs.items()}),
        ("digest", entry.digest),
        ("offset", entry.offset),
        ("innerOffset", entry.inner_offset),
        ("chunkOffset", entry.chunk_offset),
        ("chunkSize", entry.chunk_size),
        ("chunkDigest", entry.chunk_digest),
    ]
    out.update((key, value) for key, value in pairs if value)
    return out


def parent_of(name: str) -> str:
    """Parent directory of a normalised name ('' for the root's children)."""
    return posixpath.dirname(name)


# --------------------------------------------------------------------------------------------
# The whole TOC: limits, chunks, the resolved tree.

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class TOCLimits:
    """Bounds on what a TOC may make us allocate; a TOC past any of them is refused.

    Defaults: 64 MiB of uncompressed JSON (upstream TOCs run ~250 bytes per entry, so that is
    ~250k entries), 1,000,000 entries (chunk entries included), and 256 MiB per chunk
    (``innerOffset`` included) because a reader holds a whole chunk in memory to verify it;
    upstream writers chunk at 4 MiB.
    """

    max_toc_bytes: int = 64 << 20
    max_entries: int = 1_000_000
    max_chunk_bytes: int = 256 << 20


@dataclass(frozen=True)
class Chunk:
    """One independently decompressible, digest-checked piece of a regular file."""

    #: Offset of the piece in the uncompressed file.
    chunk_offset: int
    #: Uncompressed length, derived from the next chunk's offset or the file size.
    size: int
    #: Compressed offset of the gzip member / zstd frame to start decompressing at.
    blob_offset: int
    #: Uncompressed bytes to skip after ``blob_offset`` (several payloads may share a member).
    inner_offset: int
    #: Compressed end bound: the next payload member's offset, or the payload end.
    blob_end: int
    #: ``sha256:<hex>`` of the piece; "" only in legacy digest-less layers.
    digest: str
    #: The file the piece belongs to (a hardlink's target), for error messages.
    path: str = ""

    @property
    def end(self) -> int:
        """Uncompressed end offset in the file."""
        return self.chunk_offset + self.size


class TOC:
    """A parsed, validated TOC. Build it with `parse_toc`.

    ``entries`` keeps every JSON entry in TOC order (chunk entries carry their file's name).
    Lookups see the resolved tree: the later of duplicate names wins (a non-directory replacing
    a directory drops what was under it, as layer extraction does), missing parent directories
    exist implicitly (mode 0755, owner 0:0, mtime 0), and hardlink chains resolve to their
    final target.
    """

    def __init__(
        self,
        version: int,
        entries: list[TOCEntry],
        json_bytes_digest: str,
        json_size: int,
        nodes: dict[str, TOCEntry],
        implicit: set[str],
        hardlinks: dict[str, str],
        chunks: dict[str, tuple[Chunk, ...]],
    ) -> None:
        self.version = version
        self.entries = entries
        self.json_bytes_digest = json_bytes_digest
        #: Length of the uncompressed TOC JSON.
        self.json_size = json_size
        self._nodes = nodes
        self._implicit = implicit
        self._hardlinks = hardlinks
        self._chunks = chunks
        landmark = nodes.get(PREFETCH_LANDMARK)
        self.prefetch_landmark_offset: int | None = (
            landmark.offset if landmark is not None and landmark.type is EntryType.REG else None
        )
        self.has_no_prefetch_landmark = NO_PREFETCH_LANDMARK in nodes

    def entry(self, path: str) -> TOCEntry | None:
        """The entry a normalised (or normalisable) path names; None when there is none.

        The root and implicit parent directories get a synthesised ``dir`` entry.
        """
        key = _lookup_key(path)
        return None if key is None else self._nodes.get(key)

    def nodes(self) -> list[TOCEntry]:
        """Every path of the resolved tree once, the root first, otherwise in TOC order."""
        return list(self._nodes.values())

    def is_implicit(self, path: str) -> bool:
        """True for directories that exist only because something lives under them."""
        return _lookup_key(path) in self._implicit

    def hardlink_target(self, path: str) -> str | None:
        """The final target of a hardlink (chains followed); None if ``path`` is not one."""
        key = _lookup_key(path)
        return None if key is None else self._hardlinks.get(key)

    def chunks(self, path: str) -> list[Chunk]:
        """A regular file's chunks in file order (hardlinks resolved); [] for empty files and for
        anything that is not a regular file."""
        key = _lookup_key(path)
        if key is None:
            return []
        key = self._hardlinks.get(key, key)
        return list(self._chunks.get(key, ()))


def parse_toc(json_bytes: bytes, *, payload_end: int, limits: TOCLimits = TOCLimits()) -> TOC:
    """Parse and validate the uncompressed TOC JSON of a blob whose payload ends at
    ``payload_end`` (the compressed offset where the TOC starts).

    Raises TOCLimitError past ``limits`` and TOCError for anything invalid or hostile.
    """
    if len(json_bytes) > limits.max_toc_bytes:
        raise TOCLimitError(
            f"TOC JSON is {len(json_bytes)} bytes, over the limit of {limits.max_toc_bytes}"
        )
    digest = "sha256:" + hashlib.sha256(json_bytes).hexdigest()
    doc = _load_json(json_bytes)
    version = doc.get("version")
    if version != TOC_VERSION or isinstance(version, bool):
        raise TOCError(f"TOC version is {version!r}; only version {TOC_VERSION} is supported")
    raw_entries = doc.get("entries")
    if not isinstance(raw_entries, list):
        raise TOCError("TOC has no 'entries' list")
    if len(raw_entries) > limits.max_entries:
        raise TOCLimitError(
            f"TOC has {len(raw_entries)} entries, over the limit of {limits.max_entries}"
        )
    tree = _TreeBuilder()
    entries: list[TOCEntry] = []
    owners: dict[int, str] = {}
    groups: dict[int, str] = {}
    pieces: list[TOCEntry] | None = None  # the chunk list of the regular file just seen
    for raw in raw_entries:
        entry = entry_from_json(raw)
        if entry.type is EntryType.CHUNK:
            if pieces is None:
                raise TOCError(
                    f"entry {entry.name!r}: chunk entry does not follow a regular file"
                )
            entry.name = pieces[0].name
            pieces.append(entry)
        else:
            _backfill(entry, owners, groups)
            pieces = tree.add(entry)
        entries.append(entry)
    starts = sorted({e.offset for e in entries if e.has_payload} | {payload_end})
    chunks: dict[str, tuple[Chunk, ...]] = {}
    for path, node in tree.nodes.items():
        if node.type is EntryType.REG:
            chunks[path] = _file_chunks(tree.pieces[path], starts, payload_end, limits)
    hardlinks = _resolve_hardlinks(tree.nodes)
    return TOC(version, entries, digest, len(json_bytes), tree.nodes, tree.implicit, hardlinks, chunks)


def check_digest(value: str, what: str) -> str:
    """``value`` if it is a ``sha256:<64 lowercase hex>`` digest, else a TOCError about ``what``."""
    if not _DIGEST.fullmatch(value):
        raise TOCError(f"{what}: {value!r} is not a sha256 digest")
    return value


def _lookup_key(path: str) -> str | None:
    try:
        return normalize_name(path)
    except TOCError:
        return None


def _load_json(json_bytes: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(json_bytes.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TOCError(f"TOC is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except RecursionError:
        raise TOCError("TOC JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and ints longer than Python will parse
        raise TOCError(f"TOC is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise TOCError(f"TOC JSON is a {type(doc).__name__}, not an object")
    return doc


def _backfill(entry: TOCEntry, owners: dict[int, str], groups: dict[int, str]) -> None:
    """Upstream writers name a uid/gid only the first time they see it; repeat it here."""
    for attr, ident, names in (("uname", entry.uid, owners), ("gname", entry.gid, groups)):
        value = getattr(entry, attr)
        if value:
            names[ident] = value
        elif ident in names:
            setattr(entry, attr, names[ident])


class _TreeBuilder:
    """Applies entries in order the way layer extraction does, keeping the result consistent."""

    def __init__(self) -> None:
        self.nodes: dict[str, TOCEntry] = {"": _implicit_dir("")}
        self.implicit: set[str] = {""}
        self.children: dict[str, set[str]] = {"": set()}
        #: path -> [reg entry, chunk entries...] for the winning regular file of that path.
        self.pieces: dict[str, list[TOCEntry]] = {}

    def add(self, entry: TOCEntry) -> list[TOCEntry] | None:
        """Apply one non-chunk entry; returns the list its chunk entries go into (regular files)."""
        path = entry.name
        if path == "" and entry.type is not EntryType.DIR:
            raise TOCError(f"entry {path!r}: the layer root is a {entry.type.value}, not a dir")
        if entry.type in (EntryType.SYMLINK, EntryType.HARDLINK) and not entry.link_name:
            raise TOCError(f"entry {path!r}: {entry.type.value} has no target (linkName)")
        if path:
            self._ensure_parent(path)
        old = self.nodes.get(path)
        if old is not None and old.type is EntryType.DIR and entry.type is not EntryType.DIR:
            self._drop_subtree(path)
        self.nodes[path] = entry
        self.implicit.discard(path)
        self.pieces.pop(path, None)
        if entry.type is EntryType.DIR:
            self.children.setdefault(path, set())
        if path:
            self.children[posixpath.dirname(path)].add(path)
        if entry.type is not EntryType.REG:
            return None
        pieces = [entry]
        self.pieces[path] = pieces
        return pieces

    def _ensure_parent(self, path: str) -> None:
        parent = posixpath.dirname(path)
        missing: list[str] = []
        while parent not in self.nodes:
            missing.append(parent)
            parent = posixpath.dirname(parent)
        if self.nodes[parent].type is not EntryType.DIR:
            raise TOCError(
                f"entry {path!r}: parent {parent!r} is a {self.nodes[parent].type.value}, "
                "not a directory"
            )
        for name in reversed(missing):
            self.nodes[name] = _implicit_dir(name)
            self.implicit.add(name)
            self.children[name] = set()
            self.children[posixpath.dirname(name)].add(name)

    def _drop_subtree(self, path: str) -> None:
        stack = list(self.children.pop(path, ()))
        while stack:
            name = stack.pop()
            del self.nodes[name]
            self.implicit.discard(name)
            self.pieces.pop(name, None)
            stack.extend(self.children.pop(name, ()))


def _implicit_dir(name: str) -> TOCEntry:
    return TOCEntry(name=name, type=EntryType.DIR, mode=0o755)


def _file_chunks(
    pieces: list[TOCEntry], starts: list[int], payload_end: int, limits: TOCLimits
) -> tuple[Chunk, ...]:
    """Validate one regular file's chunk entries and turn them into `Chunk`s in file order."""
    reg = pieces[0]
    name, size = reg.name, reg.size
    if reg.digest:
        check_digest(reg.digest, f"entry {name!r}: digest")
    if size == 0:
        if len(pieces) > 1:
            raise TOCError(f"entry {name!r}: empty file has {len(pieces) - 1} chunk entries")
        return ()
    ordered = sorted(pieces, key=lambda e: e.chunk_offset)
    if ordered[0].chunk_offset != 0:
        raise TOCError(
            f"entry {name!r}: gap: the first chunk starts at file offset "
            f"{ordered[0].chunk_offset}, not 0"
        )
    out: list[Chunk] = []
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
        if digest:
            check_digest(digest, f"entry {name!r}: chunk at file offset {start}: chunkDigest")
        blob_end = starts[bisect_right(starts, piece.offset)]
        out.append(Chunk(start, length, piece.offset, piece.inner_offset, blob_end, digest, name))
    return tuple(out)


def _resolve_hardlinks(nodes: dict[str, TOCEntry]) -> dict[str, str]:
    """hardlink path -> final target path; refuses missing targets, loops and directories."""
    resolved: dict[str, str] = {}
    for path, entry in nodes.items():
        if entry.type is not EntryType.HARDLINK or path in resolved:
            continue
        chain: list[str] = []
        seen: set[str] = set()
        current = path
        while True:
            node = nodes[current]
            if current in resolved:
                target = resolved[current]
                break
            if node.type is not EntryType.HARDLINK:
                target = current
                break
            if current in seen:
                raise TOCError(
                    f"entry {path!r}: hardlinks loop ({' -> '.join(chain + [current])})"
                )
            chain.append(current)
            seen.add(current)
            try:
                current = normalize_name(node.link_name)
            except TOCError:
                raise TOCError(
                    f"entry {node.name!r}: hardlink target {node.link_name!r} escapes the layer root"
                ) from None
            if current not in nodes:
                raise TOCError(
                    f"entry {node.name!r}: hardlink target {node.link_name!r} is not in the layer"
                )
        if nodes[target].type is EntryType.DIR:
            raise TOCError(f"entry {path!r}: hardlink to a directory ({target!r})")
        for name in chain:
            resolved[name] = target
    return resolved
