"""The TOC (`stargz.index.json`): entry model and its JSON encoding.

The JSON schema and its quirks are reference §1.3-1.5: zero-valued fields are omitted, xattr values
are base64, `mode` may carry file-type bits (we keep only 07777), names may start with `./` and
directories end with `/`, `chunk` entries repeat (and readers ignore) the file name, and `modtime`
is RFC 3339 rounded to seconds, omitted for the zero time and for the Unix epoch.

This module is the model both the reader and the writer use; `TOCEntry` is one JSON entry with
names already normalised, nothing derived. A `TOC` is a whole TOC validated (tree.py builds it):
the resolved tree (duplicates, implicit parents, hardlinks) and each regular file's `Chunk` list,
with every hostile shape (escaping names, link loops, gaps, overlaps, offsets past the payload,
absurd sizes, over-limit TOCs) refused up front with a `TOCError` naming the entry, so nothing
downstream ever has to re-check the TOC.
"""

from __future__ import annotations

import base64
import binascii
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import Enum
import typing
from typing import Annotated, Any

import msgspec

from lazylayer.shared.errors import TOCError
from lazylayer.shared.estargz.fields import (
    DEV_MAJOR_MAX, DEV_MINOR_MAX, INT64_MAX, UINT32_MAX, int_field, text_field,
)

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


#: The members as plain module globals, for code that compares entry types once per TOC entry
#: (registration): ``EntryType.X`` is a lookup through the enum's metaclass, ~105 ns against ~17.
DIR, REG, SYMLINK, HARDLINK, CHAR, BLOCK, CHUNK = (EntryType.DIR, EntryType.REG, EntryType.SYMLINK, EntryType.HARDLINK,
                                                   EntryType.CHAR, EntryType.BLOCK, EntryType.CHUNK)


class ModTime(int):
    """Unix seconds the fast TOC decoder (`decode_entries`) read from an RFC 3339 ``modtime``
    string: the decoder's hook must hand back the annotated type, and this one is an int."""


#: The integer fields' bounds, checked as the fast decoder reads them (fields.py has why).
_Int64 = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
_UInt32 = Annotated[int, msgspec.Meta(ge=0, le=UINT32_MAX)]
_DevMajor = Annotated[int, msgspec.Meta(ge=0, le=DEV_MAJOR_MAX)]
_DevMinor = Annotated[int, msgspec.Meta(ge=0, le=DEV_MINOR_MAX)]


class TOCEntry(msgspec.Struct, rename={
        "mtime": "modtime", "link_name": "linkName", "uname": "userName", "gname": "groupName",
        "dev_major": "devMajor", "dev_minor": "devMinor", "chunk_offset": "chunkOffset",
        "chunk_size": "chunkSize", "chunk_digest": "chunkDigest", "inner_offset": "innerOffset"}):
    """One TOC entry. ``name`` is normalised (no leading ``./`` or ``/``, no trailing ``/``;
    the root is ``""``); ``mtime`` is Unix seconds (0 when the TOC omits it).

    A msgspec Struct, not a dataclass: the JSON decoder builds and type- and range-checks a
    whole TOC of these in C (`decode_entries`), 2-3x faster than dicts checked field by field.
    The bounds below are the only ones: `entry_from_json` reads them too (`_INT_FIELDS`)."""

    name: str
    type: EntryType
    size: _Int64 = 0
    mtime: ModTime = ModTime(0)
    link_name: str = ""
    mode: _UInt32 = 0
    uid: _UInt32 = 0
    gid: _UInt32 = 0
    uname: str = ""
    gname: str = ""
    dev_major: _DevMajor = 0
    dev_minor: _DevMinor = 0
    xattrs: dict[str, bytes] = msgspec.field(default_factory=dict)
    digest: str = ""
    offset: _Int64 = 0
    chunk_offset: _Int64 = 0
    chunk_size: _Int64 = 0
    chunk_digest: str = ""
    inner_offset: _Int64 = 0


def normalize_name(raw: str) -> str:
    """Clean a tar path the way upstream does (clean('/'+name) minus the leading '/').

    A name that would climb above the root is refused here rather than silently clamped:
    a TOC that says ``../x`` is hostile, not sloppy.
    """
    if "\x00" not in raw and "//" not in raw and "/." not in raw and not raw.startswith((".", "/")):
        return raw[:-1] if raw.endswith("/") else raw  # already clean: the common case, fast
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
    try:
        return _modtime_seconds(value)
    except ValueError:
        raise TOCError(f"entry {name!r}: modtime {value!r} is not RFC 3339") from None


@functools.lru_cache(maxsize=4096)
def _modtime_seconds(value: str) -> int:
    """Cached: the files of a layer share few distinct times (often one)."""
    text = value.strip()
    if text.startswith("0001-01-01T00:00:00"):
        return 0
    when = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() // 1)


#: JSON ``type`` value -> EntryType (a dict lookup: Enum's call is slow per entry)
ENTRY_TYPES = {kind.value: kind for kind in EntryType}


def _int_bounds() -> dict[str, tuple[str, int]]:
    """JSON key -> (TOCEntry attribute, largest value) of the integer fields, read off the
    struct's annotations: one list of bounds for both decoders."""
    hints = typing.get_type_hints(TOCEntry, include_extras=True)
    return {key: (attr, typing.get_args(hints[attr])[1].le)
            for attr, key in zip(TOCEntry.__struct_fields__, TOCEntry.__struct_encode_fields__)
            if typing.get_origin(hints[attr]) is Annotated}


#: JSON key -> (TOCEntry attribute, largest value) of the integer fields.
_INT_FIELDS = _int_bounds()
#: JSON key -> TOCEntry attribute of the plain string fields.
_TEXT_FIELDS = {
    "linkName": "link_name", "userName": "uname", "groupName": "gname", "digest": "digest",
    "chunkDigest": "chunk_digest",
}


def entry_from_json(obj: Any) -> TOCEntry:
    """One entry from its decoded JSON object, with every field type- and range-checked (fields.py).

    Registration calls this once per entry (a large layer has a million), so the common case
    (fields of the right type) is checked inline and fields.py's checks only name what is wrong."""
    if not isinstance(obj, dict):
        raise TOCError(f"TOC entry is a {type(obj).__name__}, not an object")
    raw_name = obj.get("name")
    if type(raw_name) is not str:
        raw_name = text_field(obj, "name", repr(raw_name))
    if not raw_name.isascii():
        _whole_characters(raw_name, "name", raw_name)
    raw_type = obj.get("type")
    kind = ENTRY_TYPES.get(raw_type) if type(raw_type) is str else None
    if kind is None:
        text_field(obj, "type", raw_name)  # not a string: says so
        raise TOCError(f"entry {raw_name!r}: unknown type {raw_type!r}")
    entry = TOCEntry(name=normalize_name(raw_name), type=kind)
    for key, value in obj.items():  # only the fields present: most entries set a third of them
        spec = _INT_FIELDS.get(key)
        if spec is not None:
            attr, maximum = spec
            if type(value) is not int or not 0 <= value <= maximum:
                value = int_field(obj, key, raw_name, maximum)  # null is 0; the rest is refused
            setattr(entry, attr, value)
        elif key in _TEXT_FIELDS:
            if type(value) is not str:
                value = text_field(obj, key, raw_name)
            elif not value.isascii():
                _whole_characters(value, key, raw_name)
            setattr(entry, _TEXT_FIELDS[key], value)
    _trim(entry)
    modtime = obj.get("modtime")
    if modtime is not None and type(modtime) is not str:
        text_field(obj, "modtime", raw_name)  # says why
    if modtime:
        entry.mtime = parse_modtime(modtime, raw_name)
    raw_xattrs = obj.get("xattrs")
    if raw_xattrs:  # absent, null and {} alike
        if not isinstance(raw_xattrs, dict):
            raise TOCError(f"entry {raw_name!r}: xattrs is not an object")
        for key, value in raw_xattrs.items():
            _whole_characters(key, "an xattr name", raw_name)
            if not isinstance(value, str):
                raise TOCError(f"entry {raw_name!r}: xattr {key!r} is not a base64 string")
            try:
                entry.xattrs[key] = base64.b64decode(value, validate=True)
            except binascii.Error:
                raise TOCError(f"entry {raw_name!r}: xattr {key!r} is not valid base64") from None
    return entry


_SURROGATE = re.compile("[\ud800-\udfff]")


def _whole_characters(value: str, what: str, raw_name: str) -> None:
    """JSON can escape half of a UTF-16 pair (``"\\udcff"``): no UTF-8 text holds one, Go's writer
    never emits one (it writes U+FFFD), and the store could not keep it (a symlink target's row
    failed to encode). Refused, as the whole-document decoder (msgspec) refuses it."""
    if _SURROGATE.search(value):
        raise TOCError(f"entry {raw_name!r}: {what} holds a lone UTF-16 surrogate")


def _trim(entry: TOCEntry) -> None:
    entry.mode &= _PERM_MASK
    if entry.chunk_digest and entry.chunk_digest == entry.digest:
        entry.chunk_digest = entry.digest  # one string, not two, per single-chunk file


class _Document(msgspec.Struct):
    version: int
    entries: list[TOCEntry]


@functools.lru_cache(maxsize=4096)
def _mod_time(value: str) -> ModTime:
    try:
        return ModTime(_modtime_seconds(value) if value else 0)
    except OverflowError:
        raise ValueError("out of range") from None


def _decode_hook(kind: type, value: Any) -> Any:
    """msgspec's hook for the one field it cannot read itself: modtime, RFC 3339 text -> seconds.
    A ValueError makes the decode fail (then `entry_from_json` says what is wrong)."""
    if kind is ModTime and type(value) is str:
        return _mod_time(value)
    raise ValueError(f"expected an RFC 3339 string, got {value!r}")


@functools.cache
def _decoder() -> msgspec.json.Decoder:
    """Built on first use (~6 ms): the daemon's front imports this module but never decodes a TOC."""
    return msgspec.json.Decoder(_Document, dec_hook=_decode_hook)


def decode_entries(text: str | bytes) -> tuple[int, list[TOCEntry]] | None:
    """(version, entries) of a whole TOC document, every field type- and range-checked in one
    C pass; None when anything in it is off (a wrong type, a null, a bound, bad base64, a bad
    time, invalid UTF-8, not JSON), for `entry_from_json` to name precisely. Each entry must go through
    `settled` before use: names are not normalised yet (that can refuse an entry)."""
    try:
        document = _decoder().decode(text)
    except msgspec.DecodeError:  # ValidationError is one
        return None
    return document.version, document.entries


def settled(entry: TOCEntry) -> TOCEntry:
    """A `decode_entries` entry made what `entry_from_json` returns: its name normalised (a
    TOCError when it escapes the root), mode cut to 07777, a single-chunk file's digests one string."""
    entry.name = normalize_name(entry.name)
    _trim(entry)
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
    return name.rpartition("/")[0]


def split_name(name: str) -> tuple[str, str]:
    """(parent, base name) of a normalised name: posixpath.split without its generality."""
    parent, _, base = name.rpartition("/")
    return parent, base


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
    """A parsed, validated TOC, all in memory (for tools and tests: registration streams instead).
    Build it with `tree.build_toc`.

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
        payload_end: int,
        limits: TOCLimits,
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
        #: Compressed offset where the TOC starts, and the limits the TOC was checked against.
        self.payload_end = payload_end
        self.limits = limits
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


def check_digest(value: str, what: str) -> str:
    """``value`` if it is a ``sha256:<64 lowercase hex>`` digest, else a TOCError about ``what``."""
    if not is_digest(value):
        raise not_a_digest(value, what)
    return value


def is_digest(value: str) -> bool:
    """Whether ``value`` is a ``sha256:<64 lowercase hex>`` digest (registration asks once per
    file: the message `check_digest` would format is built only for a refusal)."""
    return _DIGEST.fullmatch(value) is not None


def not_a_digest(value: str, what: str) -> TOCError:
    return TOCError(f"{what}: {value!r} is not a sha256 digest")


def _lookup_key(path: str) -> str | None:
    try:
        return normalize_name(path)
    except TOCError:
        return None
