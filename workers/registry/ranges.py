"""Byte ranges: coalescing, `Range`/`Content-Range` headers and multipart/byteranges bodies.

The parser trusts nothing: every part must carry a `Content-Range` inside the blob, its body is
exactly that long, and it must be followed by the boundary delimiter. Servers may merge or
reorder the ranges we asked for (RFC 9110 allows it), so callers look requested ranges up in the
parts received instead of assuming one part per range.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lazylayer.shared.errors import RegistryError

#: the most header bytes accepted in one multipart part (guards against hostile bodies)
MAX_PART_HEADER = 8192

_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", re.IGNORECASE)
_BOUNDARY = re.compile(r'boundary=(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


@dataclass(frozen=True, order=True)
class ByteRange:
    """``length`` bytes at ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass(frozen=True)
class Part:
    """Bytes received for ``[offset, offset + len(data))``."""

    offset: int
    data: bytes | memoryview

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


def coalesce(ranges: list[ByteRange], gap: int = 0) -> list[ByteRange]:
    """Sort and merge overlapping, adjacent (and up to ``gap`` bytes apart) ranges."""
    merged: list[ByteRange] = []
    for r in sorted(r for r in ranges if r.length > 0):
        if merged and r.offset <= merged[-1].end + gap:
            last = merged[-1]
            merged[-1] = ByteRange(last.offset, max(last.end, r.end) - last.offset)
        else:
            merged.append(r)
    return merged


def range_header(ranges: list[ByteRange]) -> str:
    return "bytes=" + ",".join(f"{r.offset}-{r.end - 1}" for r in ranges)


def parse_content_range(value: str | None, where: str) -> tuple[int, int, int | None]:
    """`bytes a-b/total` -> (offset, length, total or None for `*`)."""
    match = _CONTENT_RANGE.fullmatch(value or "")
    if not match:
        raise RegistryError(f"{where}: bad or missing Content-Range {value!r}")
    first, last = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    if last < first or (total is not None and last >= total):
        raise RegistryError(f"{where}: impossible Content-Range {value!r}")
    return first, last - first + 1, total


def multipart_boundary(content_type: str | None) -> str | None:
    """The boundary of a multipart Content-Type, or None when the body is not multipart."""
    if not content_type or not content_type.lower().lstrip().startswith("multipart/"):
        return None
    match = _BOUNDARY.search(content_type)
    return (match.group(1) or match.group(2)) if match else None


def parse_multipart(body: bytes, boundary: str, blob_size: int | None, where: str) -> list[Part]:
    """Parse a multipart/byteranges body into parts (zero-copy views of ``body``)."""
    view = memoryview(body)
    delimiter = b"--" + boundary.encode("latin-1")
    pos = body.find(delimiter)
    if pos < 0:
        raise RegistryError(f"{where}: multipart body without its boundary")
    parts: list[Part] = []
    while True:
        pos += len(delimiter)
        if body.startswith(b"--", pos):
            break  # closing delimiter; anything after it is epilogue
        line_end = body.find(b"\r\n", pos)
        if line_end < 0 or body[pos:line_end].strip(b" \t"):
            raise RegistryError(f"{where}: malformed multipart delimiter line")
        headers_end = body.find(b"\r\n\r\n", line_end, line_end + MAX_PART_HEADER)
        if headers_end < 0:
            # a part with no headers at all still has the empty line right after the delimiter
            raise RegistryError(f"{where}: multipart part headers missing or longer than {MAX_PART_HEADER} bytes")
        headers = _part_headers(body[line_end + 2 : headers_end], where)
        offset, length, total = parse_content_range(headers.get("content-range"), where)
        if blob_size is not None and total is not None and total != blob_size:
            raise RegistryError(f"{where}: part says the blob has {total} bytes, expected {blob_size}")
        start = headers_end + 4
        if start + length > len(body):
            raise RegistryError(f"{where}: multipart part truncated ({len(body) - start} of {length} bytes)")
        parts.append(Part(offset, view[start : start + length]))
        pos = start + length
        if not body.startswith(b"\r\n" + delimiter, pos):
            raise RegistryError(f"{where}: multipart part is longer than its Content-Range says")
        pos += 2
    if not parts:
        raise RegistryError(f"{where}: multipart body with no parts")
    return parts


def _part_headers(block: bytes, where: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n"):
        if not line:
            continue
        name, sep, value = line.partition(b":")
        if not sep:
            raise RegistryError(f"{where}: malformed multipart part header")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return headers


def slice_parts(wanted: list[ByteRange], parts: list[Part], where: str) -> list[bytes]:
    """The bytes of each wanted range, cut out of whichever received part covers it."""
    ordered = sorted(parts, key=lambda p: p.offset)
    out: list[bytes] = []
    for r in wanted:
        part = next((p for p in ordered if p.offset <= r.offset and r.end <= p.end), None)
        if part is None:
            raise RegistryError(f"{where}: the answer does not cover bytes {r.offset}-{r.end - 1}")
        out.append(bytes(part.data[r.offset - part.offset : r.end - part.offset]))
    return out
