"""Gzip members: the unit the eStargz writer compresses, alone or in worker processes.

An eStargz blob is a concatenation of independent gzip members (reference §1.1). The writer's
plan cuts the uncompressed tar stream into `Member`s: each starts with at most one payload chunk
(the bytes a TOC `offset` points at) and carries the padding and the following entries' tar
headers after it. Because every member is compressed on its own, compressing a run of members in
another process and concatenating the results gives byte-for-byte the same blob as doing it
serially — so the output never depends on how many cores were used.

This module is what worker processes import (spawned, so keep its imports light).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Callable, Iterator, Protocol

from lazylayer.shared.errors import FormatError

_READ_SIZE = 1 << 20
_GZIP_WBITS = 31  # zlib: gzip wrapper (RFC 1952 header and trailer)


@dataclass(frozen=True, slots=True)
class Payload:
    """Where a run of payload bytes lives: ``length`` bytes at ``offset`` of the file at ``path``
    (a source file, or the spool of a streamed tar), or ``data`` held in memory (landmarks)."""

    path: str | None
    offset: int
    length: int
    data: bytes = b""

    def sub(self, offset: int, length: int) -> "Payload":
        """The ``length`` bytes starting ``offset`` bytes into this payload."""
        if self.path is None:
            return Payload(None, 0, length, self.data[offset : offset + length])
        return Payload(self.path, self.offset + offset, length)


@dataclass(slots=True)
class Member:
    """One gzip member of the blob: an optional payload chunk, then ``tail`` (padding and headers)."""

    chunk: Payload | None
    tail: bytes

    @property
    def uncompressed_size(self) -> int:
        return (self.chunk.length if self.chunk else 0) + len(self.tail)


@dataclass(frozen=True, slots=True)
class MemberResult:
    compressed_size: int
    chunk_digest: str  # "sha256:..." of the payload chunk, "" when the member has none


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


#: Called with (member index within the run, uncompressed piece, whether the piece is payload).
PieceObserver = Callable[[int, bytes, bool], None]


def member_pieces(member: Member) -> Iterator[tuple[bytes, bool]]:
    """The member's uncompressed bytes in order, as (piece, is_payload) pairs."""
    chunk = member.chunk
    if chunk is not None:
        if chunk.path is None:
            yield chunk.data, True
        else:
            yield from _read_payload(chunk)
    if member.tail:
        yield member.tail, False


def _read_payload(chunk: Payload) -> Iterator[tuple[bytes, bool]]:
    try:
        with open(chunk.path, "rb", buffering=0) as f:  # type: ignore[arg-type]
            f.seek(chunk.offset)
            remaining = chunk.length
            while remaining:
                piece = f.read(min(_READ_SIZE, remaining))
                if not piece:
                    raise FormatError(
                        f"{chunk.path}: ended {remaining} bytes early at offset "
                        f"{chunk.offset + chunk.length - remaining} (file changed while converting?)"
                    )
                remaining -= len(piece)
                yield piece, True
    except OSError as exc:
        raise FormatError(f"cannot read {chunk.path}: {exc.strerror or exc}") from exc


def compress_members(
    members: list[Member], out: Writable, level: int, observe: PieceObserver | None = None
) -> list[MemberResult]:
    """Write each member as its own gzip member to ``out``; report sizes and chunk digests."""
    results: list[MemberResult] = []
    for index, member in enumerate(members):
        compressor = zlib.compressobj(level, zlib.DEFLATED, _GZIP_WBITS)
        digest = hashlib.sha256()
        size = 0
        for piece, is_payload in member_pieces(member):
            if is_payload:
                digest.update(piece)
            if observe is not None:
                observe(index, piece, is_payload)
            data = compressor.compress(piece)
            out.write(data)
            size += len(data)
        data = compressor.flush()
        out.write(data)
        size += len(data)
        results.append(MemberResult(size, "sha256:" + digest.hexdigest() if member.chunk else ""))
    return results


def compress_members_to_file(members: list[Member], path: str, level: int) -> list[MemberResult]:
    """Worker-process entry point: compress a run of members into a new file at ``path``."""
    with open(path, "wb") as out:
        return compress_members(members, out, level)
