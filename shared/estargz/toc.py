"""The TOC (`stargz.index.json`): entry model and its JSON encoding.

The JSON schema and its quirks are reference §1.3-1.5: zero-valued fields are omitted, xattr values
are base64, `mode` may carry file-type bits (we keep only 07777), names may start with `./` and
directories end with `/`, `chunk` entries repeat (and readers ignore) the file name, and `modtime`
is RFC 3339 rounded to seconds, omitted for the zero time and for the Unix epoch.

This module is the model both the reader and the writer use; `TOCEntry` is one JSON entry with
names already normalised, nothing derived.
"""

from __future__ import annotations

import base64
import binascii
import posixpath
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from lazylayer.shared.errors import TOCError

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
    return datetime.fromtimestamp(mtime, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    """One entry from its decoded JSON object, with every field type-checked."""
    if not isinstance(obj, dict):
        raise TOCError(f"TOC entry is a {type(obj).__name__}, not an object")
    raw_name = _field(obj, "name", str, "")
    try:
        kind = EntryType(_field(obj, "type", str, ""))
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
    modtime = _field(obj, "modtime", str, "")
    entry = TOCEntry(
        name=name,
        type=kind,
        size=_int(obj, "size", raw_name),
        mtime=parse_modtime(modtime, raw_name) if modtime else 0,
        link_name=_field(obj, "linkName", str, ""),
        mode=_int(obj, "mode", raw_name) & _PERM_MASK,
        uid=_int(obj, "uid", raw_name),
        gid=_int(obj, "gid", raw_name),
        uname=_field(obj, "userName", str, ""),
        gname=_field(obj, "groupName", str, ""),
        dev_major=_int(obj, "devMajor", raw_name),
        dev_minor=_int(obj, "devMinor", raw_name),
        xattrs=xattrs,
        digest=_field(obj, "digest", str, ""),
        offset=_int(obj, "offset", raw_name),
        chunk_offset=_int(obj, "chunkOffset", raw_name),
        chunk_size=_int(obj, "chunkSize", raw_name),
        chunk_digest=_field(obj, "chunkDigest", str, ""),
        inner_offset=_int(obj, "innerOffset", raw_name),
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


def _field(obj: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = obj.get(key, default)
    if value is None:
        return default
    if not isinstance(value, kind):
        raise TOCError(f"entry {obj.get('name')!r}: {key} is {value!r}, expected a {kind.__name__}")
    return value


def _int(obj: dict[str, Any], key: str, name: str) -> int:
    value = obj.get(key, 0)
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise TOCError(f"entry {name!r}: {key} is {value!r}, expected an integer")
    if value < 0:
        raise TOCError(f"entry {name!r}: {key} is negative ({value})")
    return value


def parent_of(name: str) -> str:
    """Parent directory of a normalised name ('' for the root's children)."""
    return posixpath.dirname(name)
