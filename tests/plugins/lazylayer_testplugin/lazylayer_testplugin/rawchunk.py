"""`rawchunk`: a made-up chunked layer format, to prove a new format is a plug-in.

A blob is the files' bytes stored as they are (no compression), then the TOC (eStargz TOC JSON,
uncompressed), then a 32-byte footer: TOC offset and TOC length (little-endian u64 each) and the
magic. `write_blob` makes one. Its chunk digests are in the TOC, and lazylayer checks them on
whatever `decompress_chunk` returns, so nothing here has to be trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time

from lazylayer.shared.blobsource import BlobSource
from lazylayer.shared.errors import FormatError, TOCLimitError
from lazylayer.shared.estargz.toc import Chunk, TOCLimits
from lazylayer.shared.estargz.tocstream import TOCStream

MEDIA_TYPE = "application/vnd.lazylayer.test.layer.v1.tar+rawchunk"
MAGIC = b"LLRAWCHUNKED-v01"
FOOTER = struct.Struct("<QQ16s")


class RawChunked:
    def claims(self, media_type: str, tail: bytes, blob_size: int) -> bool:
        return len(tail) >= FOOTER.size and tail.endswith(MAGIC)

    def _toc(self, source: BlobSource, limits: TOCLimits) -> tuple[int, bytes]:
        size = source.size
        offset, length, _ = FOOTER.unpack(source.read_at(size - FOOTER.size, FOOTER.size))
        if offset + length > size - FOOTER.size:
            raise FormatError(f"rawchunk footer points outside the {size}-byte blob")
        if length > limits.max_toc_bytes:
            raise TOCLimitError(f"rawchunk TOC is {length} bytes, over {limits.max_toc_bytes}")
        return offset, source.read_at(offset, length)

    def open_toc(self, source: BlobSource, *, toc_digest: str | None, limits: TOCLimits) -> TOCStream:
        offset, raw = self._toc(source, limits)
        return TOCStream([raw], payload_end=offset, limits=limits, expect_digest=toc_digest)

    def toc_digest_of(self, source: BlobSource, limits: TOCLimits) -> str:
        return "sha256:" + hashlib.sha256(self._toc(source, limits)[1]).hexdigest()

    def decompress_chunk(self, compressed: bytes | memoryview, chunk: Chunk, *, allow_unverified: bool) -> bytes:
        data = bytes(compressed[chunk.inner_offset : chunk.inner_offset + chunk.size])
        if len(data) != chunk.size:
            raise FormatError(f"rawchunk chunk at blob offset {chunk.blob_offset} is truncated")
        _wait_at_gate(data)
        return data


#: A file whose bytes start with this, then a path and a NUL, is held in decompression until
#: that path exists (at most `GATE_TIMEOUT`): a test's way to have a job stop half-way.
GATE = b"\0lazylayer-testplugin-gate\0"
GATE_TIMEOUT = 60.0


def gated(path: str, size: int) -> bytes:
    """File bytes that hold a worker decompressing them until ``path`` exists."""
    head = GATE + path.encode() + b"\0"
    return head + b"g" * max(0, size - len(head))


def _wait_at_gate(data: bytes) -> None:
    if not data.startswith(GATE):
        return
    path = data[len(GATE):data.index(b"\0", len(GATE))].decode()
    deadline = time.monotonic() + GATE_TIMEOUT
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def write_blob(files: dict[str, bytes]) -> tuple[bytes, str]:
    """A rawchunk blob holding ``files`` (path -> bytes; parents implied) and its TOC digest."""
    payload = bytearray()
    entries = []
    for name, data in files.items():
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        entries.append({"name": name, "type": "reg", "size": len(data), "mode": 0o644, "offset": len(payload),
                        "digest": digest, "chunkDigest": digest})
        payload += data
    toc = json.dumps({"version": 1, "entries": entries}).encode()
    blob = bytes(payload) + toc + FOOTER.pack(len(payload), len(toc), MAGIC)
    return blob, "sha256:" + hashlib.sha256(toc).hexdigest()
