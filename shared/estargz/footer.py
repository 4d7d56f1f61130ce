"""Blob footers: where the TOC is.

Three footers are recognised, tried on the same tail bytes in this order (reference §1.2):

* eStargz, 51 bytes: an empty gzip member whose FEXTRA holds subfield 'SG' with the TOC offset as
  16 lowercase hex digits followed by ``STARGZ``.
* legacy stargz (CRFS), 47 bytes: the same without the RFC 1952 subfield header.
* stargz's zstd:chunked, 40-byte body in a zstd skippable frame (48 bytes in all): LE64 TOC offset,
  compressed TOC length, uncompressed TOC length, manifest type (1), magic ``GnUlInUx``.

The stdlib gzip module cannot write FEXTRA, so the eStargz footer is assembled by hand.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from enum import Enum

from lazylayer.shared.errors import NotEStargzError

ESTARGZ_FOOTER_SIZE = 51
LEGACY_FOOTER_SIZE = 47
ZSTD_FOOTER_BODY_SIZE = 40
ZSTD_SKIPPABLE_HEADER_SIZE = 8
ZSTD_FOOTER_SIZE = ZSTD_FOOTER_BODY_SIZE + ZSTD_SKIPPABLE_HEADER_SIZE
#: One read of this many tail bytes is enough to recognise every footer kind.
MAX_FOOTER_SIZE = ESTARGZ_FOOTER_SIZE

ZSTD_SKIPPABLE_MAGIC = b"\x50\x2a\x4d\x18"
ZSTD_CHUNKED_MAGIC = b"GnUlInUx"
ZSTD_MANIFEST_TYPE_CRFS = 1

_GZIP_HEADER = b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff"  # FEXTRA, mtime 0, XFL 0, OS unknown
_EMPTY_DEFLATE_AND_TRAILER = b"\x01\x00\x00\xff\xff" + b"\x00" * 8  # final stored block, CRC 0, ISIZE 0
_OFFSET_FIELD = re.compile(rb"([0-9a-f]{16})STARGZ")


class FooterKind(str, Enum):
    ESTARGZ = "estargz"
    LEGACY = "stargz"
    ZSTD_CHUNKED = "zstd:chunked"


@dataclass(frozen=True)
class Footer:
    """What a footer says. Sizes the footer does not state are derived from the blob size."""

    kind: FooterKind
    size: int
    toc_offset: int
    #: Compressed length of the TOC (gzip: the member holding the TOC tar; zstd: the zstd frame).
    toc_size: int
    #: Uncompressed TOC JSON length when the footer states it (zstd:chunked), else None.
    toc_json_size: int | None = None

    @property
    def compression(self) -> str:
        return "zstd" if self.kind is FooterKind.ZSTD_CHUNKED else "gzip"


def estargz_footer(toc_offset: int) -> bytes:
    """The 51-byte eStargz footer pointing at the TOC member starting at ``toc_offset``."""
    field = b"%016xSTARGZ" % toc_offset
    subfield = b"SG" + struct.pack("<H", len(field)) + field
    footer = _GZIP_HEADER + struct.pack("<H", len(subfield)) + subfield + _EMPTY_DEFLATE_AND_TRAILER
    assert len(footer) == ESTARGZ_FOOTER_SIZE
    return footer


def zstd_chunked_footer(toc_offset: int, toc_size: int, toc_json_size: int) -> bytes:
    """The 48-byte zstd:chunked footer (skippable frame header + 40-byte body)."""
    body = struct.pack("<QQQQ", toc_offset, toc_size, toc_json_size, ZSTD_MANIFEST_TYPE_CRFS)
    body += ZSTD_CHUNKED_MAGIC
    return ZSTD_SKIPPABLE_MAGIC + struct.pack("<I", len(body)) + body


def parse_footer(tail: bytes, blob_size: int) -> Footer:
    """Recognise the footer at the end of ``tail`` (the last bytes of a ``blob_size``-byte blob).

    Raises NotEStargzError naming what was found when no footer kind matches or the offsets
    it states cannot lie inside the blob.
    """
    for parse in (_parse_estargz, _parse_legacy, _parse_zstd_chunked):
        footer = parse(tail)
        if footer is None:
            continue
        toc_size = footer.toc_size if footer.kind is FooterKind.ZSTD_CHUNKED else (
            blob_size - footer.toc_offset - footer.size
        )
        toc_end = footer.toc_offset + toc_size
        if footer.toc_offset < 0 or toc_size <= 0 or toc_end > blob_size - footer.size:
            raise NotEStargzError(
                f"{footer.kind.value} footer points at a TOC at offset {footer.toc_offset} "
                f"(size {toc_size}) outside the {blob_size}-byte blob"
            )
        return Footer(footer.kind, footer.size, footer.toc_offset, toc_size, footer.toc_json_size)
    raise NotEStargzError(
        f"not an eStargz/stargz/zstd:chunked blob: no recognised footer in the last {len(tail)} "
        f"bytes of a {blob_size}-byte blob (ends with {tail[-8:].hex() or 'nothing'})"
    )


def _parse_estargz(tail: bytes) -> Footer | None:
    footer = tail[-ESTARGZ_FOOTER_SIZE:]
    if len(footer) != ESTARGZ_FOOTER_SIZE or not footer.startswith(b"\x1f\x8b\x08\x04"):
        return None
    xlen = struct.unpack_from("<H", footer, 10)[0]
    si, length = footer[12:14], struct.unpack_from("<H", footer, 14)[0]
    if xlen != 26 or si != b"SG" or length != 22:
        return None
    match = _OFFSET_FIELD.fullmatch(footer[16:38])
    if not match or footer[38:] != _EMPTY_DEFLATE_AND_TRAILER:
        return None
    return Footer(FooterKind.ESTARGZ, ESTARGZ_FOOTER_SIZE, int(match.group(1), 16), 0)


def _parse_legacy(tail: bytes) -> Footer | None:
    footer = tail[-LEGACY_FOOTER_SIZE:]
    if len(footer) != LEGACY_FOOTER_SIZE or not footer.startswith(b"\x1f\x8b\x08\x04"):
        return None
    if struct.unpack_from("<H", footer, 10)[0] != 22:
        return None
    match = _OFFSET_FIELD.fullmatch(footer[12:34])
    if not match or footer[34:] != _EMPTY_DEFLATE_AND_TRAILER:
        return None
    return Footer(FooterKind.LEGACY, LEGACY_FOOTER_SIZE, int(match.group(1), 16), 0)


def _parse_zstd_chunked(tail: bytes) -> Footer | None:
    footer = tail[-ZSTD_FOOTER_SIZE:]
    if len(footer) != ZSTD_FOOTER_SIZE or not footer.endswith(ZSTD_CHUNKED_MAGIC):
        return None
    if footer[:4] != ZSTD_SKIPPABLE_MAGIC or struct.unpack_from("<I", footer, 4)[0] != ZSTD_FOOTER_BODY_SIZE:
        return None
    toc_offset, toc_size, json_size, manifest_type = struct.unpack_from("<QQQQ", footer, 8)
    if manifest_type != ZSTD_MANIFEST_TYPE_CRFS:
        return None
    return Footer(FooterKind.ZSTD_CHUNKED, ZSTD_FOOTER_SIZE, toc_offset, toc_size, json_size)
