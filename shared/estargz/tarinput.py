"""Reading a layer tar stream (plain, gzip or zstd, detected by magic) into an `EntryList`.

The stream is read once, front to back, so stdin and registry bodies work; payloads are spooled
into one temporary file (a 1 GiB layer never sits in memory), because the writer needs them
again in another order (prefetch, duplicates) and from several processes.
"""

from __future__ import annotations

import gzip
import io
import shutil
import tarfile
import zlib
from typing import BinaryIO

import zstandard

from lazylayer.shared.errors import FormatError
from lazylayer.shared.estargz.compress import Payload
from lazylayer.shared.estargz.entries import EntryList, SourceEntry
from lazylayer.shared.estargz.toc import EntryType, normalize_name

GZIP_MAGIC = b"\x1f\x8b\x08"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XATTR_PAX_PREFIX = "SCHILY.xattr."
#: PAX keys the tar writer regenerates from the entry itself, or that we drop on purpose
#: (atime/ctime are not layer content and only make the DiffID unreproducible).
_REGENERATED_PAX = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime",
                    "atime", "ctime", "hdrcharset"}
_COPY_SIZE = 1 << 20

_TYPES = {
    tarfile.REGTYPE: EntryType.REG, tarfile.AREGTYPE: EntryType.REG,
    tarfile.CONTTYPE: EntryType.REG, tarfile.GNUTYPE_SPARSE: EntryType.REG,
    tarfile.DIRTYPE: EntryType.DIR, tarfile.SYMTYPE: EntryType.SYMLINK,
    tarfile.LNKTYPE: EntryType.HARDLINK, tarfile.CHRTYPE: EntryType.CHAR,
    tarfile.BLKTYPE: EntryType.BLOCK, tarfile.FIFOTYPE: EntryType.FIFO,
}


class _Prefixed(io.RawIOBase):
    """``head`` (already read to sniff the magic) followed by the rest of ``stream``."""

    def __init__(self, head: bytes, stream: BinaryIO) -> None:
        self._head, self._stream = head, stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._head:
            n = min(len(buffer), len(self._head))
            buffer[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def decompressed(src: BinaryIO) -> BinaryIO:
    """``src`` decompressed according to its first bytes (gzip, zstd, or plain tar)."""
    head = b""
    while len(head) < len(ZSTD_MAGIC):
        more = src.read(len(ZSTD_MAGIC) - len(head))
        if not more:
            break
        head += more
    stream = io.BufferedReader(_Prefixed(head, src), _COPY_SIZE)
    if head.startswith(GZIP_MAGIC):
        return gzip.GzipFile(fileobj=stream, mode="rb")  # type: ignore[return-value]
    if head == ZSTD_MAGIC:
        return zstandard.ZstdDecompressor().stream_reader(stream, read_across_frames=True)  # type: ignore[return-value]
    return stream  # type: ignore[return-value]


def read_tar(src: BinaryIO, spool: BinaryIO, spool_path: str) -> EntryList:
    """Every entry of the tar stream ``src``, payloads appended to ``spool`` (at ``spool_path``)."""
    entries = EntryList()
    try:
        stream = decompressed(src)
        with tarfile.open(fileobj=stream, mode="r|", encoding="utf-8", errors="surrogateescape") as tar:
            for info in tar:
                entry = _entry(info, entries)
                if entry.type is EntryType.REG and info.size:
                    entry.payload = Payload(spool_path, spool.tell(), info.size)
                    # tarfile raises ReadError if the stream ends inside the data.
                    shutil.copyfileobj(tar.extractfile(info), spool, _COPY_SIZE)  # type: ignore[misc]
                entries.add(entry)
        # Read on to the end, so a truncated or corrupt compressed stream (CRC) is noticed even
        # when the tar inside ended cleanly.
        while stream.read(_COPY_SIZE):
            pass
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error, zstandard.ZstdError) as exc:
        raise FormatError(f"input is not a readable tar stream: {exc}") from exc
    return entries


def _entry(info: tarfile.TarInfo, entries: EntryList) -> SourceEntry:
    kind = _TYPES.get(info.type)
    if kind is None:
        raise FormatError(f"input entry {info.name!r}: unsupported tar type {info.type!r}")
    name = normalize_name(info.name)
    if not name and kind is not EntryType.DIR:
        raise FormatError(f"input entry {info.name!r} names the layer root but is not a directory")
    pax = dict(info.pax_headers)
    xattrs = {
        key[len(XATTR_PAX_PREFIX):]: value.encode("utf-8", "surrogateescape")
        for key, value in pax.items() if key.startswith(XATTR_PAX_PREFIX)
    }
    carried = {
        key: value for key, value in pax.items()
        if key not in _REGENERATED_PAX and not key.startswith(XATTR_PAX_PREFIX)
        and not key.startswith("GNU.sparse.")
    }
    entry = SourceEntry(
        name=name, type=kind, mode=info.mode & 0o7777, uid=info.uid, gid=info.gid,
        uname=info.uname, gname=info.gname, mtime=info.mtime, xattrs=xattrs, pax=carried,
        size=info.size if kind is EntryType.REG else 0,
    )
    if kind is EntryType.SYMLINK:
        entry.link_name = info.linkname
    elif kind is EntryType.HARDLINK:
        entry.link_target = entries.link_target(info.linkname, name)
    elif kind in (EntryType.CHAR, EntryType.BLOCK):
        entry.dev_major, entry.dev_minor = info.devmajor, info.devminor
    return entry

