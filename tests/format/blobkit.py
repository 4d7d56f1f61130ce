"""Hand-assembled blobs for reader tests: payload members, a TOC and a footer, every piece
under the test's control, so hostile shapes the real writer would never emit can be built.

Payload members hold only file bytes (no tar headers in between): the reader never looks at
those, it goes by the TOC alone.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
import tarfile
from typing import Any

import zstandard

from lazylayer.shared.estargz.footer import (
    ZSTD_SKIPPABLE_MAGIC, estargz_footer, zstd_chunked_footer,
)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(compression: str, data: bytes) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return gzip.compress(data, mtime=0)


def toc_tar(json_bytes: bytes, name: str = "stargz.index.json",
            extra: tuple[tuple[str, bytes], ...] = ()) -> bytes:
    """A tar holding the TOC (and, for hostile tests, more members)."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for member_name, data in ((name, json_bytes), *extra):
            info = tarfile.TarInfo(member_name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def legacy_footer(toc_offset: int) -> bytes:
    """The 47-byte CRFS stargz footer (raw offset field, no 'SG' subfield header)."""
    return (b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff" + struct.pack("<H", 22)
            + b"%016xSTARGZ" % toc_offset + b"\x01\x00\x00\xff\xff" + bytes(8))


class BlobBuilder:
    """Collects payload members and TOC entries (as raw JSON dicts), then assembles a blob."""

    def __init__(self, compression: str = "gzip") -> None:
        self.compression = compression
        # A first member standing in for the leading tar headers, so no payload sits at 0.
        self.payload = bytearray(compress(compression, bytes(512)))
        self.entries: list[dict[str, Any]] = []

    def member(self, data: bytes) -> int:
        """Append one compressed member; returns its blob offset."""
        offset = len(self.payload)
        self.payload += compress(self.compression, data)
        return offset

    def add(self, **entry: Any) -> dict[str, Any]:
        self.entries.append(entry)
        return entry

    def add_dir(self, name: str, **fields: Any) -> dict[str, Any]:
        return self.add(name=name, type="dir", mode=0o755, **fields)

    def add_file(self, name: str, data: bytes, chunk_size: int | None = None,
                 **fields: Any) -> list[dict[str, Any]]:
        """A regular file, one member per chunk; returns its entries (reg first, then chunks)."""
        if not data:
            return [self.add(name=name, type="reg", digest=sha(b""), **fields)]
        step = chunk_size or len(data)
        made: list[dict[str, Any]] = []
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            entry: dict[str, Any] = {
                "name": name, "type": "reg" if start == 0 else "chunk",
                "offset": self.member(piece), "chunkDigest": sha(piece),
            }
            if start == 0:
                entry.update(size=len(data), digest=sha(data), **fields)
            if start:
                entry["chunkOffset"] = start
            if len(data) > step:
                entry["chunkSize"] = len(piece)
            made.append(self.add(**entry))
        return made

    def add_packed(self, files: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
        """Several small files sharing one member, told apart by innerOffset."""
        offset = self.member(b"".join(data for _, data in files))
        made, inner = [], 0
        for name, data in files:
            made.append(self.add(name=name, type="reg", size=len(data), offset=offset,
                                 innerOffset=inner, digest=sha(data), chunkDigest=sha(data)))
            inner += len(data)
        return made

    def toc_json(self, version: Any = 1) -> bytes:
        return json.dumps({"version": version, "entries": self.entries}, indent="\t").encode()

    def build(self, toc_json: bytes | None = None, *, footer: str = "estargz",
              tar_bytes: bytes | None = None) -> bytes:
        """The blob: payload, TOC, footer. ``tar_bytes`` replaces the gzip TOC's tar wholesale."""
        json_bytes = self.toc_json() if toc_json is None else toc_json
        blob = bytearray(self.payload)
        if self.compression == "zstd":
            frame = compress("zstd", json_bytes)
            blob += ZSTD_SKIPPABLE_MAGIC + struct.pack("<I", len(frame))
            toc_offset = len(blob)
            blob += frame
            blob += zstd_chunked_footer(toc_offset, len(frame), len(json_bytes))
            return bytes(blob)
        toc_offset = len(blob)
        blob += gzip.compress(toc_tar(json_bytes) if tar_bytes is None else tar_bytes, mtime=0)
        blob += legacy_footer(toc_offset) if footer == "legacy" else estargz_footer(toc_offset)
        return bytes(blob)
