"""The TOC JSON decoded one entry at a time, straight from its compressed bytes.

A TOC can describe a million entries (hundreds of MB of JSON). Inflating it whole, `json.loads`
of the whole document and a list of every entry held all at once is what made a large layer
cost over a GB in a worker. Here the JSON is inflated in pieces of `PIECE_SIZE` bytes, hashed as
it goes, and each entry of the ``entries`` array is decoded (`json.JSONDecoder.raw_decode`, the C
scanner) and validated (`entry_from_json`) as it comes: memory is a window of text plus one
entry, whatever the TOC's size. The entry limit is enforced as entries arrive and the byte limit
as bytes do, so an over-limit TOC is refused before it is all read. A TOC of up to
`WHOLE_DOCUMENT` bytes of JSON (20,000 entries take 7 MB) is cheaper decoded in one call (msgspec),
where that cannot differ from the stream's verdict (`_whole_document`).

A `TOCStream` is consumed once. Its digest is known only after the last entry; when the caller
expects a digest, the stream raises DigestMismatchError at its end, before anyone can act on a
complete result, so whatever consumes it must publish nothing until the stream is exhausted.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import json
import re
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import zstandard

from lazylayer.shared.estargz import inflate
from lazylayer.shared.errors import DigestMismatchError, FormatError, TOCError, TOCLimitError
from lazylayer.shared.estargz.footer import ZSTD_SKIPPABLE_HEADER_SIZE, ZSTD_SKIPPABLE_MAGIC, Footer, FooterKind
from lazylayer.shared.estargz.toc import (
    TOC, TOC_TAR_NAME, TOC_VERSION, TOCEntry, TOCLimits, decode_entries, entry_from_json, settled,
)

#: Uncompressed TOC bytes decoded at a time.
PIECE_SIZE = 256 << 10
#: A TOC up to this many JSON bytes is decoded in one call (memory: a few times this);
#: a larger one streams, its first WHOLE_DOCUMENT bytes having been held once.
WHOLE_DOCUMENT = 8 << 20
#: The tar around a gzip TOC: header, padding and end-of-archive blocks (PAX headers are small).
TOC_TAR_OVERHEAD = 64 << 10

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
# A decode error this close to the end of the text may only mean the text is cut off there.
_CUT_SLACK = 16


class TOCStream:
    """The entries of one TOC, in TOC order, each validated; iterate once.

    ``payload_end`` is the compressed offset where the TOC starts (chunk offsets must be below
    it). After the last entry, ``digest`` and ``json_size`` describe the JSON bytes.
    """

    def __init__(
        self,
        pieces: Iterable[bytes],
        *,
        payload_end: int,
        limits: TOCLimits = TOCLimits(),
        expect_digest: str | None = None,
    ) -> None:
        self.payload_end = payload_end
        self.limits = limits
        self.digest: str | None = None
        self.json_size = 0
        self._pieces = iter(pieces)
        self._expect = expect_digest
        self._used = False
        self._replay: list[TOCEntry] | None = None

    @classmethod
    def of(cls, toc: TOC) -> "TOCStream":
        """The entries of a TOC parsed already (applied again, they give the same tree)."""
        stream = cls((), payload_end=toc.payload_end, limits=toc.limits)
        stream._replay = toc.entries
        stream.digest, stream.json_size = toc.json_bytes_digest, toc.json_size
        return stream

    def __iter__(self) -> Iterator[TOCEntry]:
        return map(settled, self.decoded())

    def decoded(self) -> Iterator[TOCEntry]:
        """The entries as decoded, for a consumer that applies `settled` to each itself
        (store/scanloop.c does it in C): a whole document's are not settled yet, a streamed
        one's already are (`settled` again changes nothing)."""
        if self._used:
            raise RuntimeError("a TOCStream is consumed once")
        self._used = True
        if self._replay is not None:
            yield from self._replay
            return
        hasher = hashlib.sha256()
        pieces = self._counted(hasher)
        head: list[bytes] = []
        size = 0
        for piece in pieces:  # a TOC of up to WHOLE_DOCUMENT bytes is decoded at once
            head.append(piece)
            size += len(piece)
            if size > WHOLE_DOCUMENT:
                break
        else:
            entries = _whole_document(b"".join(head))
            if entries is not None:
                self._finish(hasher)
                self._check_count(len(entries))
                yield from entries
                return
        text = _Text(_replayed(head, pieces))
        count = 0
        for raw in _entries(text):
            count += 1
            self._check_count(count)
            yield entry_from_json(raw)
        self._finish(hasher)

    def _check_count(self, count: int) -> None:
        if count > self.limits.max_entries:
            raise TOCLimitError(
                f"TOC has more than {self.limits.max_entries} entries, over the limit "
                "(format.max_entries)"
            )

    def _finish(self, hasher: Any) -> None:
        self.digest = "sha256:" + hasher.hexdigest()
        if self._expect is not None and self.digest != self._expect:
            raise DigestMismatchError("TOC", self._expect, self.digest)

    def _counted(self, hasher: Any) -> Iterator[bytes]:
        for piece in self._pieces:
            self.json_size += len(piece)
            if self.json_size > self.limits.max_toc_bytes:
                raise TOCLimitError(
                    f"TOC JSON is over {self.limits.max_toc_bytes} bytes, the limit (format.max_toc_bytes)"
                )
            hasher.update(piece)
            yield piece


class _Text:
    """A sliding window of decoded text over UTF-8 byte pieces."""

    def __init__(self, pieces: Iterator[bytes]) -> None:
        self.buf = ""
        self.pos = 0
        self._pieces = pieces
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._consumed = 0  # bytes decoded before the current piece, for error positions
        self._eof = False

    def more(self) -> bool:
        """Append at least as much text as the window holds (geometric, so a long value costs
        linear time); False at the end of the text."""
        added: list[str] = []
        want = max(1, len(self.buf) - self.pos)
        while not self._eof and sum(map(len, added)) < want:
            piece = next(self._pieces, None)
            try:
                if piece is None:
                    self._eof = True
                    added.append(self._utf8.decode(b"", final=True))
                else:
                    added.append(self._utf8.decode(piece))
                    self._consumed += len(piece)
            except UnicodeDecodeError as exc:
                at = self._consumed - len(piece or b"") + exc.start
                raise TOCError(f"TOC is not UTF-8 text ({exc.reason} at byte {at})") from None
        if not added:
            return False
        self.buf = self.buf[self.pos :] + "".join(added)
        self.pos = 0
        return True

    def peek(self) -> str:
        """The next non-whitespace character ('' at the end of the text)."""
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self.more():
                return ""

    def expect(self, char: str, what: str) -> None:
        if self.peek() != char:
            raise TOCError(f"TOC is not valid JSON: expecting {what} at byte {self._at()}")
        self.pos += 1

    def value(self) -> Any:
        """One JSON value at the current position, reading on while it may be cut off."""
        self.peek()
        while True:
            try:
                value, end = _DECODER.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.buf) - _CUT_SLACK or exc.msg.startswith("Unterminated")
                if cut and self.more():
                    continue
                raise TOCError(f"TOC is not valid JSON: {exc}") from None
            except RecursionError:
                raise TOCError("TOC JSON is nested too deeply") from None
            except ValueError as exc:  # ints longer than Python will parse
                raise TOCError(f"TOC is not valid JSON: {exc}") from None
            if end == len(self.buf) and self.more():
                continue  # a number may go on in the next piece
            self.pos = end
            return value

    def _at(self) -> int:
        return self._consumed - len(self.buf.encode()) + len(self.buf[: self.pos].encode())


def _replayed(head: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """``head`` then ``rest``, letting go of each piece of ``head`` as it is handed on."""
    head.reverse()
    while head:
        yield head.pop()
    yield from rest


def _whole_document(data: bytes) -> list[TOCEntry] | None:
    """The entries of a small TOC decoded and checked in one call (`decode_entries`, ~2.5x
    faster than the stream per entry), or None to leave it to the streaming decoder, which then
    says precisely what is wrong. Taken only where both must agree: strict UTF-8, one
    ``entries`` and one ``version`` key (a file named either sends it to the stream; being
    unique, their first occurrences are the keys), the version first, as the stream requires."""
    if data.count(b'"entries"') != 1 or data.count(b'"version"') != 1:
        return None
    if data.index(b'"version"') > data.index(b'"entries"'):
        return None
    decoded = decode_entries(data)  # msgspec refuses invalid UTF-8 as Python's strict codec does
    if decoded is None or decoded[0] != TOC_VERSION:
        return None
    return decoded[1]


def _entries(text: _Text) -> Iterator[Any]:
    """The raw entries of ``{"version": 1, "entries": [...]}``, other keys decoded whole."""
    if text.peek() != "{":
        if text.peek() == "":
            raise TOCError("TOC is not valid JSON: it is empty")
        doc = text.value()
        raise TOCError(f"TOC JSON is a {type(doc).__name__}, not an object")
    text.pos += 1
    version: Any = None
    seen_entries = False
    if text.peek() == "}":
        text.pos += 1
    else:
        while True:
            if text.peek() != '"':
                raise TOCError("TOC is not valid JSON: expecting a property name")
            key = text.value()
            text.expect(":", "':'")
            if key == "entries":
                if seen_entries:
                    raise TOCError("TOC has two 'entries' lists")
                seen_entries = True
                _check_version(version)
                if text.peek() != "[":
                    text.value()
                    raise TOCError("TOC has no 'entries' list")
                text.pos += 1
                yield from _array(text)
            else:
                value = text.value()
                if key == "version":
                    version = value
            if text.peek() == ",":
                text.pos += 1
                continue
            text.expect("}", "',' or '}'")
            break
    if text.peek() != "":
        raise TOCError("TOC is not valid JSON: extra data after the document")
    _check_version(version)
    if not seen_entries:
        raise TOCError("TOC has no 'entries' list")


def _array(text: _Text) -> Iterator[Any]:
    if text.peek() == "]":
        text.pos += 1
        return
    while True:
        yield text.value()
        if text.peek() == ",":
            text.pos += 1
            continue
        text.expect("]", "',' or ']'")
        return


def _check_version(version: Any) -> None:
    if version != TOC_VERSION or isinstance(version, bool):
        raise TOCError(f"TOC version is {version!r}; only version {TOC_VERSION} is supported")


# --------------------------------------------------------------------------------------------
# From the compressed TOC to JSON pieces.

def json_pieces(footer: Footer, raw: bytes, limits: TOCLimits) -> Iterator[bytes]:
    """The uncompressed TOC JSON in pieces, from its compressed bytes ``raw`` (for zstd:chunked
    they start with the skippable frame header)."""
    if footer.kind is FooterKind.ZSTD_CHUNKED:
        return _zstd_pieces(footer, raw)
    return _gzip_pieces(raw, limits)


def _zstd_pieces(footer: Footer, raw: bytes) -> Iterator[bytes]:
    magic, length = raw[:4], int.from_bytes(raw[4:8], "little")
    if magic != ZSTD_SKIPPABLE_MAGIC or length != footer.toc_size:
        raise FormatError(
            f"zstd:chunked TOC at offset {footer.toc_offset} is not inside a skippable frame of "
            f"{footer.toc_size} bytes"
        )
    assert footer.toc_json_size is not None  # zstd footers state it
    return _zstd_json(footer.toc_json_size, memoryview(raw)[ZSTD_SKIPPABLE_HEADER_SIZE:])


def _zstd_json(size: int, frame: memoryview) -> Iterator[bytes]:
    reader = zstandard.ZstdDecompressor().stream_reader(frame, read_across_frames=True)
    have = 0
    while have <= size:
        try:
            piece = reader.read(min(PIECE_SIZE, size + 1 - have))
        except zstandard.ZstdError as exc:
            raise TOCError(f"zstd:chunked TOC does not decompress: {exc}") from None
        if not piece:
            break
        have += len(piece)
        if have > size:
            break
        yield piece
    if have != size:
        raise TOCError(
            f"zstd:chunked TOC decompresses to {'more than ' if have > size else ''}"
            f"{have} bytes, but the footer says {size}"
        )


def _gzip_pieces(raw: bytes, limits: TOCLimits) -> Iterator[bytes]:
    """The TOC is one gzip member holding a tar with exactly one file, stargz.index.json."""
    inflater = _Inflater(raw, limits.max_toc_bytes + TOC_TAR_OVERHEAD)
    try:
        with tarfile.open(fileobj=io.BufferedReader(inflater, PIECE_SIZE), mode="r|") as tar:
            first = tar.next()
            if first is None:
                inflater.finish()  # a member too big for the limit says so first
                raise TOCError("TOC tar is empty")
            if first.name != TOC_TAR_NAME or not first.isreg():
                raise TOCError(f"TOC tar holds {first.name!r}, expected a regular file {TOC_TAR_NAME!r}")
            if first.size > limits.max_toc_bytes:
                raise TOCLimitError(
                    f"TOC JSON is {first.size} bytes, over the limit of {limits.max_toc_bytes}"
                )
            stream = tar.extractfile(first)
            assert stream is not None  # a regular file
            have = 0
            while piece := stream.read(PIECE_SIZE):
                have += len(piece)
                yield piece
            if have != first.size:
                raise TOCError(f"TOC tar is truncated ({have} of {first.size} bytes)")
            extra = tar.next()
            if extra is not None:
                raise TOCError(f"TOC tar holds a second entry {extra.name!r}; expected only one")
    except (tarfile.TarError, EOFError, UnicodeError) as exc:
        raise TOCError(f"TOC tar is malformed: {exc}") from None
    inflater.finish()


class _Inflater(io.RawIOBase):
    """One gzip member inflated on demand, never past ``limit`` bytes."""

    def __init__(self, raw: bytes, limit: int) -> None:
        self._member = inflate.gzip_inflater()
        self._input = memoryview(raw)
        self._limit = limit
        self._out = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        want = min(len(buffer), self._limit + 1 - self._out)
        data = b""
        while not data and want > 0 and not self._member.eof:
            try:
                data = self._member.decompress(self._input, want)
            except inflate.ERRORS as exc:
                raise TOCError(f"TOC gzip member is corrupt: {exc}") from None
            self._input = memoryview(self._member.unconsumed_tail)
            if not data and not self._input and not self._member.eof:
                raise TOCError("TOC gzip member is truncated")
        self._out += len(data)
        if self._out > self._limit:
            raise TOCLimitError(f"TOC inflates past {self._limit} bytes, over the TOC size limit")
        buffer[: len(data)] = data
        return len(data)

    def finish(self) -> None:
        """Whatever the tar did not need must still end the member within the limit."""
        while self.readinto(bytearray(PIECE_SIZE)):
            pass
