"""Random-access reading of eStargz, legacy stargz and stargz zstd:chunked blobs.

Opening costs at most two reads of the source: one of the tail (footer, and usually the whole
TOC with it) and, only for a TOC that does not fit in that tail, one of the TOC. Reads of file
bytes decompress only the chunks covering the range, and every chunk is checked whole against
its digest before any byte of it is handed out.

`decompress_chunk` is the one place that turns compressed bytes into verified chunk bytes; the
workers call it on ranges they fetch from a registry, so local and remote reads are checked by
the same code.
"""

from __future__ import annotations

import hashlib
import zlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Callable, Iterator

import zstandard

from lazylayer.shared.blobsource import BlobSource
from lazylayer.shared.errors import (
    DigestMismatchError, FormatError, NotFoundError, TOCLimitError,
)
from lazylayer.shared.estargz import inflate
from lazylayer.shared.estargz.footer import (
    MAX_FOOTER_SIZE, ZSTD_SKIPPABLE_HEADER_SIZE, Footer, FooterKind, parse_footer,
)
from lazylayer.shared.estargz.toc import TOC, Chunk, EntryType, TOCEntry, TOCLimits, check_digest
from lazylayer.shared.estargz.tocstream import TOC_TAR_OVERHEAD, TOCStream, json_pieces
from lazylayer.shared.estargz.tree import build_toc

#: Bytes read from the end of the blob when opening: the footer plus, for most layers, the TOC.
TAIL_READ_SIZE = 64 << 10
#: Largest compressed range fetched in one read when several chunks are needed at once.
MAX_FETCH_SIZE = 8 << 20
_GZIP_TRAILER_SIZE = 8  # CRC32 + ISIZE


@dataclass(frozen=True)
class VerifySummary:
    """What `BlobReader.verify_all` checked."""

    files: int
    chunks: int
    bytes: int


class BlobReader:
    """An opened blob: its footer, its validated TOC, and verified random access to its files."""

    def __init__(
        self, source: BlobSource, footer: Footer, toc: TOC, *, allow_unverified: bool = False
    ) -> None:
        self.source = source
        self.footer = footer
        self.toc = toc
        self.toc_digest = toc.json_bytes_digest
        self.allow_unverified = allow_unverified

    @classmethod
    def open(
        cls,
        source: BlobSource,
        *,
        toc_digest: str | None = None,
        limits: TOCLimits = TOCLimits(),
        allow_unverified: bool = False,
    ) -> "BlobReader":
        """Read footer and the whole TOC; check the TOC against ``toc_digest`` when one is given.

        ``allow_unverified`` lets reads return chunks that have no digest at all (legacy stargz);
        without it such chunks are refused.
        """
        footer, stream = open_toc(source, toc_digest=toc_digest, limits=limits)
        return cls(source, footer, build_toc(stream), allow_unverified=allow_unverified)

    def prefetch_size(self) -> int | None:
        """Compressed bytes ``[0, N)`` to prefetch: 0 when the layer says "no prefetch", None when
        it has no landmark at all (legacy layers; the caller's configured size applies)."""
        if self.toc.has_no_prefetch_landmark:
            return 0
        return self.toc.prefetch_landmark_offset

    def file_entry(self, path: str) -> TOCEntry:
        """The regular file ``path`` names (a hardlink's target), or NotFoundError."""
        entry = self.toc.entry(path)
        if entry is None:
            raise NotFoundError(f"{path}: no such file in the layer")
        target = self.toc.hardlink_target(path)
        if target is not None:
            entry = self.toc.entry(target)
            assert entry is not None  # build_toc resolved every hardlink
        if entry.type is not EntryType.REG:
            raise NotFoundError(f"{path}: not a regular file (it is a {entry.type.value})")
        return entry

    def iter_read(self, path: str, offset: int = 0, size: int = -1) -> Iterator[bytes]:
        """Verified bytes of ``[offset, offset+size)`` of a file (size -1: to EOF), piece by piece,
        clipped at EOF; each piece comes from one chunk that was verified whole."""
        if offset < 0:
            raise ValueError(f"negative offset {offset}")
        file_size = self.file_entry(path).size
        end = file_size if size < 0 else min(file_size, offset + size)
        if offset >= end:
            return
        chunks = self.toc.chunks(path)
        first = bisect_right(chunks, offset, key=lambda c: c.chunk_offset) - 1
        last = bisect_left(chunks, end, key=lambda c: c.chunk_offset)
        for chunk, compressed in self._fetch(chunks[first:last]):
            data = self.read_chunk(chunk, compressed)
            lo = max(offset, chunk.chunk_offset) - chunk.chunk_offset
            hi = min(end, chunk.end) - chunk.chunk_offset
            yield data[lo:hi]

    def read(self, path: str, offset: int = 0, size: int = -1) -> bytes:
        """Verified bytes of ``[offset, offset+size)`` of a file (size -1: to EOF), clipped at EOF."""
        return b"".join(self.iter_read(path, offset, size))

    def read_file(self, path: str) -> bytes:
        return self.read(path)

    def read_chunk(self, chunk: Chunk, compressed: bytes | memoryview | None = None) -> bytes:
        """One whole chunk, decompressed and verified. ``compressed`` is the blob range
        ``[blob_offset, blob_end)`` when the caller has it already."""
        if compressed is None:
            compressed = self.source.read_at(chunk.blob_offset, chunk.blob_end - chunk.blob_offset)
        return decompress_chunk(
            self.footer.compression, compressed, chunk, allow_unverified=self.allow_unverified
        )

    def verify_all(self, progress: Callable[[int], None] | None = None) -> VerifySummary:
        """Check every chunk of every regular file, and each file's whole digest where the TOC
        gives one that the chunk digests do not already prove. The TOC digest was checked by
        `open` when one was given. Raises DigestMismatchError at the first mismatch;
        ``progress`` is called with the uncompressed bytes of each chunk checked."""
        files = chunks = total = 0
        for entry in self.toc.nodes():
            if entry.type is not EntryType.REG:
                continue
            pieces = self.toc.chunks(entry.name)
            whole = None
            if entry.digest and (len(pieces) != 1 or pieces[0].digest != entry.digest):
                whole = hashlib.sha256()
            for chunk, compressed in self._fetch(pieces):
                data = self.read_chunk(chunk, compressed)
                if whole is not None:
                    whole.update(data)
                chunks += 1
                total += chunk.size
                if progress is not None:
                    progress(chunk.size)
            if whole is not None:
                actual = "sha256:" + whole.hexdigest()
                if actual != entry.digest:
                    raise DigestMismatchError(f"{entry.name}: whole file", entry.digest, actual)
            files += 1
        return VerifySummary(files, chunks, total)

    def _fetch(self, chunks: list[Chunk]) -> Iterator[tuple[Chunk, memoryview]]:
        """Each chunk with its compressed range, reading neighbouring ranges together."""
        index = 0
        while index < len(chunks):
            start, end = chunks[index].blob_offset, chunks[index].blob_end
            stop = index + 1
            while stop < len(chunks):
                nxt = chunks[stop]
                if not start <= nxt.blob_offset <= end or max(end, nxt.blob_end) - start > MAX_FETCH_SIZE:
                    break
                end = max(end, nxt.blob_end)
                stop += 1
            data = memoryview(self.source.read_at(start, end - start))
            for chunk in chunks[index:stop]:
                yield chunk, data[chunk.blob_offset - start : chunk.blob_end - start]
            index = stop


def open_toc(
    source: BlobSource, *, toc_digest: str | None = None, limits: TOCLimits = TOCLimits()
) -> tuple[Footer, TOCStream]:
    """Read a blob's footer and compressed TOC; its entries decode as the stream is iterated
    (tocstream.py), which ends with DigestMismatchError if ``toc_digest`` is given and wrong."""
    if toc_digest is not None:
        check_digest(toc_digest, "expected TOC digest")
    size = source.size
    tail_start = max(0, size - max(TAIL_READ_SIZE, MAX_FOOTER_SIZE))
    tail = source.read_at(tail_start, size - tail_start)
    footer = parse_footer(tail, size)
    toc_start, toc_end = _toc_range(footer)
    _check_compressed_toc_size(footer, limits)
    if toc_start >= tail_start:
        raw = tail[toc_start - tail_start : toc_end - tail_start]
    else:
        raw = source.read_at(toc_start, toc_end - toc_start)
    pieces = json_pieces(footer, raw, limits)
    return footer, TOCStream(pieces, payload_end=toc_start, limits=limits, expect_digest=toc_digest)


def toc_digest_of(source: BlobSource, limits: TOCLimits = TOCLimits()) -> str:
    """The sha256 of a blob's TOC JSON: what a descriptor's TOC digest annotation must say. For
    telling which of two disagreeing annotations a genuine blob backs."""
    size = source.size
    tail_start = max(0, size - max(TAIL_READ_SIZE, MAX_FOOTER_SIZE))
    footer = parse_footer(source.read_at(tail_start, size - tail_start), size)
    toc_start, toc_end = _toc_range(footer)
    _check_compressed_toc_size(footer, limits)
    digest = hashlib.sha256()
    for piece in json_pieces(footer, source.read_at(toc_start, toc_end - toc_start), limits):
        digest.update(piece)
    return "sha256:" + digest.hexdigest()


def decompress_chunk(
    compression: str,
    compressed: bytes | memoryview,
    chunk: Chunk,
    *,
    allow_unverified: bool = False,
) -> bytes:
    """Decompress one chunk from bytes starting at its ``blob_offset`` and verify it.

    ``compression`` is ``Footer.compression`` ("gzip" or "zstd"). Only ``inner_offset + size``
    bytes are ever inflated: a member that holds more (the next tar header always follows a
    payload) is cut off there, so a hostile member cannot balloon. Raises FormatError when the
    data is corrupt or too short, DigestMismatchError when it hashes wrong, and FormatError for
    a digest-less chunk unless ``allow_unverified``.
    """
    what = f"chunk at file offset {chunk.chunk_offset}"
    what = f"{chunk.path}: {what}" if chunk.path else f"{what} (blob offset {chunk.blob_offset})"
    if not chunk.digest and not allow_unverified:
        raise FormatError(f"{what} has no digest; refusing to return unverified bytes")
    want = chunk.inner_offset + chunk.size
    try:
        if compression == "gzip":
            data = _gunzip_prefix(compressed, want)
        elif compression == "zstd":
            data = _unzstd_prefix(compressed, want)
        else:
            raise ValueError(f"unknown compression {compression!r}")
    except (*inflate.ERRORS, zstandard.ZstdError) as exc:
        raise FormatError(
            f"{what}: corrupt {compression} data at blob offset {chunk.blob_offset}: {exc}"
        ) from None
    if len(data) < want:
        raise FormatError(
            f"{what}: {compression} data at blob offset {chunk.blob_offset} inflates to only "
            f"{len(data)} of {want} bytes (truncated or corrupt blob)"
        )
    payload = data if chunk.inner_offset == 0 else data[chunk.inner_offset :]
    if chunk.digest:
        actual = "sha256:" + hashlib.sha256(payload).hexdigest()
        if actual != chunk.digest:
            raise DigestMismatchError(what, chunk.digest, actual)
    return payload


def _gunzip_prefix(compressed: bytes | memoryview, want: int) -> bytes:
    """The first ``want`` bytes of concatenated gzip members (fewer if the data ends first).

    Members are inflated as raw deflate after skipping their header, and their CRC trailers are
    not checked: the chunk's sha256 is the check, so a corrupt byte is reported the same way
    (DigestMismatchError) whether or not the member happens to end inside the chunk.
    The usual chunk is one member: its inflated bytes are returned as they are, uncopied.
    """
    pieces: list[bytes] = []
    have = 0
    rest = memoryview(compressed)
    while have < want and len(rest):
        member = inflate.raw_inflater()
        piece = member.decompress(rest[_gzip_header_size(rest) :], want - have)
        pieces.append(piece)
        have += len(piece)
        if not member.eof:
            break  # output full, or input used up mid-member (the caller sees it is short)
        rest = memoryview(member.unused_data)[_GZIP_TRAILER_SIZE:]
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _gzip_header_size(data: memoryview) -> int:
    """Length of the RFC 1952 member header at the start of ``data``."""
    if bytes(data[:3]) != b"\x1f\x8b\x08" or len(data) < 10:
        raise zlib.error("not a gzip member")
    flags, pos = data[3], 10
    if flags & 0x04:  # FEXTRA
        pos += 2 + int.from_bytes(data[pos : pos + 2], "little")
    for flag in (0x08, 0x10):  # FNAME, FCOMMENT: NUL-terminated
        if flags & flag:
            end = bytes(data[pos:]).find(b"\0")
            if end < 0:
                raise zlib.error("truncated gzip header")
            pos += end + 1
    if flags & 0x02:  # FHCRC
        pos += 2
    if pos > len(data):
        raise zlib.error("truncated gzip header")
    return pos


def _unzstd_prefix(compressed: bytes | memoryview, want: int) -> bytes:
    """The first ``want`` bytes of concatenated zstd frames (fewer if the data ends first)."""
    pieces: list[bytes] = []
    have = 0
    reader = zstandard.ZstdDecompressor().stream_reader(compressed, read_across_frames=True)
    while have < want:
        piece = reader.read(want - have)
        if not piece:
            break
        pieces.append(piece)
        have += len(piece)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _toc_range(footer: Footer) -> tuple[int, int]:
    """Compressed ``[start, end)`` of the TOC; for zstd it includes the skippable frame header,
    so ``start`` is also where the payload ends."""
    end = footer.toc_offset + footer.toc_size
    if footer.kind is FooterKind.ZSTD_CHUNKED:
        if footer.toc_offset < ZSTD_SKIPPABLE_HEADER_SIZE:
            raise FormatError(f"zstd:chunked TOC offset {footer.toc_offset} leaves no room for its frame header")
        return footer.toc_offset - ZSTD_SKIPPABLE_HEADER_SIZE, end
    return footer.toc_offset, end


def _check_compressed_toc_size(footer: Footer, limits: TOCLimits) -> None:
    """Refuse before reading a TOC that cannot decompress within the limit: compressed data is
    at most a little larger than what it holds (stored blocks add a few bytes per 64 KiB)."""
    bound = limits.max_toc_bytes + limits.max_toc_bytes // 256 + TOC_TAR_OVERHEAD
    if footer.toc_size > bound:
        raise TOCLimitError(
            f"compressed TOC is {footer.toc_size} bytes; the {limits.max_toc_bytes}-byte TOC limit "
            f"allows at most {bound}"
        )
    if footer.toc_json_size is not None and footer.toc_json_size > limits.max_toc_bytes:
        raise TOCLimitError(
            f"footer says the TOC is {footer.toc_json_size} bytes, over the limit of "
            f"{limits.max_toc_bytes}"
        )
