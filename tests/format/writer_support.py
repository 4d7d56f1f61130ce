"""Checks of written blobs that do not trust our reader: Python gzip/zlib/tarfile and raw JSON.

`unpack` walks every gzip member of a blob, decompresses the whole stream as a tar, finds the TOC
by hand and checks the layout rules of reference §1.1-1.4 (a member starts exactly at 0, at each
chunk's offset, at the TOC and at the footer, and nowhere else; each chunk's bytes start its
member and match its digest). Tests then compare what the tar and the TOC say with what went in.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from dataclasses import dataclass


@dataclass
class Unpacked:
    toc: dict
    toc_digest: str
    toc_offset: int
    diff_id: str
    uncompressed_size: int
    #: tar members in stream order, (TarInfo, payload); the TOC entry included last.
    members: list[tuple[tarfile.TarInfo, bytes]]

    def by_name(self) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
        return {norm(info.name): (info, data) for info, data in self.members}


def norm(name: str) -> str:
    return posixpath.normpath("/" + name).lstrip("/")


def member_starts(blob: bytes) -> list[int]:
    """Offsets where gzip members start, found by decompressing member after member."""
    starts, pos = [], 0
    while pos < len(blob):
        starts.append(pos)
        d = zlib.decompressobj(31)
        d.decompress(blob[pos:])
        assert d.eof, f"gzip member at {pos} is truncated"
        pos = len(blob) - len(d.unused_data)
    return starts


def unpack(blob: bytes) -> Unpacked:
    footer = blob[-51:]
    assert footer[:4] == b"\x1f\x8b\x08\x04" and footer[12:16] == b"SG\x16\x00"
    assert footer[32:38] == b"STARGZ"
    toc_offset = int(footer[16:32], 16)

    raw = b"".join(_members(blob))
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        members = [(info, tar.extractfile(info).read() if info.isreg() else b"") for info in tar]
    last, toc_bytes = members[-1]
    assert last.name == "stargz.index.json" and last.mode == 0 and last.mtime == 0
    toc = json.loads(toc_bytes)
    assert toc["version"] == 1
    assert toc_bytes.startswith(b'{\n\t"version": 1,\n\t"entries": [\n\t\t{')  # upstream's layout

    # The TOC member holds exactly the TOC tar entry and the end-of-archive blocks.
    toc_member = zlib.decompressobj(31).decompress(blob[toc_offset:-51])
    assert toc_member.startswith(b"stargz.index.json\x00") and toc_member.endswith(bytes(1024))
    assert raw.endswith(toc_member)

    starts = member_starts(blob)
    chunk_offsets = {e["offset"] for e in toc["entries"] if e.get("offset")}
    assert set(starts) == {0, toc_offset, len(blob) - 51} | chunk_offsets, "members start elsewhere"
    _check_chunks(blob, toc)
    return Unpacked(
        toc=toc, toc_digest="sha256:" + hashlib.sha256(toc_bytes).hexdigest(), toc_offset=toc_offset,
        diff_id="sha256:" + hashlib.sha256(raw).hexdigest(), uncompressed_size=len(raw),
        members=members,
    )


def _members(blob: bytes):
    pos = 0
    while pos < len(blob):
        d = zlib.decompressobj(31)
        yield d.decompress(blob[pos:])
        pos = len(blob) - len(d.unused_data)


def _check_chunks(blob: bytes, toc: dict) -> None:
    """Every chunk decompresses on its own from its offset and matches chunkDigest; chunks tile
    their file, whose bytes match digest."""
    current = None
    pieces: list[bytes] = []

    def finish() -> None:
        if current is None:
            return
        data = b"".join(pieces)
        assert len(data) == current.get("size", 0), current["name"]
        assert current["digest"] == "sha256:" + hashlib.sha256(data).hexdigest(), current["name"]

    for entry in toc["entries"] + [{"type": "end"}]:
        if entry["type"] != "chunk":
            finish()
            current, pieces = (entry, []) if entry["type"] == "reg" else (None, [])
            if current is None or not entry.get("size"):
                continue
        assert current is not None
        start = entry.get("chunkOffset", 0)
        assert start == sum(map(len, pieces)), f"{current['name']}: chunks do not tile"
        size = entry.get("chunkSize") or current["size"] - start
        data = zlib.decompressobj(31).decompress(blob[entry["offset"]:], size)
        assert len(data) == size
        assert entry["chunkDigest"] == "sha256:" + hashlib.sha256(data).hexdigest()
        pieces.append(data)
