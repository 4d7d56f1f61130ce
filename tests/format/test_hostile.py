"""Hostile blobs: every one gets a typed error naming the entry and the problem, and none can make
the reader allocate more than its limits allow."""

from __future__ import annotations

import gzip
import json
import struct
import tracemalloc
import zlib

import pytest
import zstandard

from lazylayer.shared.blobsource import BytesSource
from lazylayer.shared.errors import (
    DigestMismatchError, FormatError, NotEStargzError, TOCError, TOCLimitError,
)
from lazylayer.shared.estargz import tocstream
from lazylayer.shared.estargz.footer import ZSTD_SKIPPABLE_MAGIC, estargz_footer, zstd_chunked_footer
from lazylayer.shared.estargz.reader import BlobReader
from lazylayer.shared.estargz.toc import TOCLimits
from tests.format.blobkit import BlobBuilder, sha, toc_tar


def open_blob(blob: bytes, **kwargs) -> BlobReader:
    return BlobReader.open(BytesSource(blob), **kwargs)


def refused(builder: BlobBuilder, error: type[Exception], match: str, **kwargs) -> None:
    with pytest.raises(error, match=match):
        open_blob(builder.build(), **kwargs)


# --- names, links, tree shape -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["../etc/passwd", "a/../../x", "/../x", "./.."])
def test_names_escaping_the_root(name):
    builder = BlobBuilder()
    builder.add_file(name, b"x")
    refused(builder, TOCError, r"name escapes the layer root")


def test_hardlink_to_a_missing_target():
    builder = BlobBuilder()
    builder.add(name="link", type="hardlink", linkName="nowhere")
    refused(builder, TOCError, r"entry 'link': hardlink target 'nowhere' is not in the layer")


def test_hardlink_escaping_the_root():
    builder = BlobBuilder()
    builder.add(name="link", type="hardlink", linkName="../../etc/shadow")
    refused(builder, TOCError, r"entry 'link': hardlink target .* escapes the layer root")


@pytest.mark.parametrize("links", [
    [("a", "a")],
    [("a", "b"), ("b", "a")],
    [("a", "b"), ("b", "c"), ("c", "a")],
])
def test_hardlink_loops(links):
    builder = BlobBuilder()
    for name, target in links:
        builder.add(name=name, type="hardlink", linkName=target)
    refused(builder, TOCError, r"hardlinks loop \(a -> .*a\)")


def test_hardlink_to_a_directory():
    builder = BlobBuilder()
    builder.add_dir("d")
    builder.add(name="link", type="hardlink", linkName="d")
    refused(builder, TOCError, r"entry 'link': hardlink to a directory")


def test_links_without_targets():
    for kind in ("symlink", "hardlink"):
        builder = BlobBuilder()
        builder.add(name="l", type=kind)
        refused(builder, TOCError, rf"entry 'l': {kind} has no target")


def test_entry_under_a_non_directory():
    builder = BlobBuilder()
    builder.add_file("f", b"x")
    builder.add_file("f/child", b"y")
    refused(builder, TOCError, r"entry 'f/child': parent 'f' is a reg, not a directory")


def test_root_that_is_not_a_directory():
    builder = BlobBuilder()
    builder.add_file("./", b"x")
    refused(builder, TOCError, r"the layer root is a reg")


def test_duplicate_type_clash_keeps_a_consistent_tree():
    builder = BlobBuilder()
    builder.add_dir("x")
    builder.add_file("x/a", b"a")
    builder.add(name="x", type="hardlink", linkName="x/a")  # its target just went away with x/
    refused(builder, TOCError, r"entry 'x': hardlink target 'x/a' is not in the layer")

    builder = BlobBuilder()
    builder.add_dir("x")
    builder.add_dir("x/sub")
    builder.add_file("x/sub/a", b"a")
    builder.add_file("x", b"file now")
    builder.add_dir("x")  # and a directory again: empty, nothing of the old one comes back
    builder.add_file("x/b", b"b")
    reader = open_blob(builder.build())
    assert [e.name for e in reader.toc.nodes()] == ["", "x", "x/b"]
    assert reader.toc.chunks("x") == [] and reader.read_file("x/b") == b"b"
    reader.verify_all()


# --- entries and fields -----------------------------------------------------------------------

def test_unknown_entry_type():
    builder = BlobBuilder()
    builder.add(name="sock", type="socket")
    refused(builder, TOCError, r"entry 'sock': unknown type 'socket'")


def test_chunk_entry_without_a_file():
    builder = BlobBuilder()
    builder.add_dir("d")
    builder.add(name="d", type="chunk", offset=10, chunkOffset=0)
    refused(builder, TOCError, r"entry 'd': chunk entry does not follow a regular file")


@pytest.mark.parametrize("field,value,match", [
    ("size", 1 << 70, "size is absurdly large"),
    ("size", -1, "size is negative"),
    ("mode", "0755", "mode is '0755', expected an integer"),
    ("offset", 1.5, "offset is 1.5, expected an integer"),
    ("uid", True, "uid is True, expected an integer"),
    ("uid", 1 << 32, r"uid is absurdly large \(4294967296, the largest allowed is 4294967295\)"),
    ("gid", 1 << 40, "gid is absurdly large"),
    ("devMajor", 4096, r"devMajor is absurdly large \(4096, the largest allowed is 4095\)"),
    ("devMinor", 1 << 20, "devMinor is absurdly large"),
    ("mode", 1 << 32, "mode is absurdly large"),
    ("digest", "sha256:xyz", "digest: 'sha256:xyz' is not a sha256 digest"),
    ("xattrs", {"user.a": "!!not base64"}, "xattr 'user.a' is not valid base64"),
    ("modtime", "yesterday", "modtime 'yesterday' is not RFC 3339"),
])
def test_bad_field_values(field, value, match):
    builder = BlobBuilder()
    builder.add_file("f", b"data")[0][field] = value
    refused(builder, TOCError, rf"entry 'f'.*{match}")


def test_absurd_chunk_size_is_refused_before_any_allocation():
    builder = BlobBuilder()
    builder.add_file("f", b"data")[0]["size"] = 1 << 40
    refused(builder, TOCLimitError, r"entry 'f': the chunk at file offset 0 needs 1099511627776 "
                                    r"uncompressed bytes, over the limit")


def test_offset_past_the_payload_end():
    builder = BlobBuilder()
    builder.add_file("f", b"data")[0]["offset"] = 10**6
    refused(builder, TOCError, r"entry 'f': the chunk at file offset 0 has blob offset 1000000, "
                               r"past the payload end \d+")


# --- chunk tiling ------------------------------------------------------------------------------

def chunked(mutate) -> BlobBuilder:
    builder = BlobBuilder()
    entries = builder.add_file("f", bytes(range(100)) * 30, chunk_size=1000)  # 3 chunks
    mutate(entries)
    return builder


def test_chunk_gap():
    builder = chunked(lambda e: e[1].update(chunkOffset=1500))
    refused(builder, TOCError, r"entry 'f': gap after the chunk at file offset 0 \(its chunkSize is 1000, "
                               r"the next chunk starts at 1500\)")


def test_chunk_overlap():
    builder = chunked(lambda e: e[1].update(chunkOffset=500))
    refused(builder, TOCError, r"entry 'f': overlap at the chunk at file offset 0")


def test_chunks_at_the_same_offset():
    builder = chunked(lambda e: e[2].update(chunkOffset=1000))
    refused(builder, TOCError, r"entry 'f': the chunk at file offset 1000 overlaps the next chunk")


def test_first_chunk_not_at_zero():
    builder = chunked(lambda e: e[0].update(chunkOffset=10))
    refused(builder, TOCError, r"entry 'f': gap: the first chunk starts at file offset 10")


def test_chunk_sizes_not_adding_up_to_the_file_size():
    builder = chunked(lambda e: e[0].update(size=2500))
    refused(builder, TOCError, r"entry 'f': chunk sizes add up to 3000, not the file size 2500")
    builder = chunked(lambda e: e[0].update(size=2000))
    refused(builder, TOCError, r"entry 'f': the chunk at file offset 2000 is past the file size")


def test_empty_file_with_chunks():
    builder = chunked(lambda e: e[0].update(size=0))
    refused(builder, TOCError, r"entry 'f': empty file has 2 chunk entries")


# --- TOC document ---------------------------------------------------------------------------------

@pytest.mark.parametrize("toc,match", [
    (b"{not json", "TOC is not valid JSON"),
    (b"\xff\xfe{}", "TOC is not UTF-8"),
    (b"[1, 2]", "TOC JSON is a list, not an object"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply|not valid JSON|not an object"),
    (b'{"version": 1, "entries": {}}', "no 'entries' list"),
    (b'{"version": 1, "entries": [7]}', "TOC entry is a int"),
    (b'{"version": 2, "entries": []}', "TOC version is 2"),
    (b'{"entries": []}', "TOC version is None"),
    (b'{"version": true, "entries": []}', "TOC version is True"),
    # decoded in one piece or streamed (tocstream.WHOLE_DOCUMENT), a TOC is refused alike
    (b'{"entries": [], "version": 1}', "TOC version is None"),
    (b'{"version": 1, "entries": [], "entries": []}', "two 'entries' lists"),
    (b'\xef\xbb\xbf{"version": 1, "entries": []}', "not valid JSON"),
    (b'{"version": 1, "entries": [{"name": "a", "size": 1' + b"9" * 5000 + b"}]}", "not valid JSON"),
])
def test_invalid_toc_documents(toc, match):
    refused_blob = BlobBuilder().build(toc)
    with pytest.raises(TOCError, match=match):
        open_blob(refused_blob)


def test_a_toc_decoded_whole_or_streamed_gives_the_same_entries(monkeypatch):
    """Small TOCs are decoded in one json.loads, large ones entry by entry: same entries, digest."""
    builder = BlobBuilder()
    builder.add(name="d/", type="dir", mode=0o755, xattrs={"user.x": "eA=="})
    builder.add_file("d/f", b"data" * 100)
    builder.add(name="d/l", type="symlink", linkName="f", userName="u\u00e9", uid=5)
    blob = builder.build()
    whole = BlobReader.open(BytesSource(blob)).toc
    monkeypatch.setattr(tocstream, "WHOLE_DOCUMENT", 0)
    streamed = BlobReader.open(BytesSource(blob)).toc
    assert whole.entries == streamed.entries and whole.json_bytes_digest == streamed.json_bytes_digest


def test_too_many_entries():
    builder = BlobBuilder()
    for i in range(11):
        builder.add(name=f"f{i}", type="fifo")
    refused(builder, TOCLimitError, r"TOC has more than 10 entries, over the limit",
            limits=TOCLimits(max_entries=10))
    open_blob(builder.build(), limits=TOCLimits(max_entries=11))


def test_toc_over_the_size_limit():
    builder = BlobBuilder()
    for i in range(100):
        builder.add(name=f"file-{i}", type="fifo")
    size = len(builder.toc_json())
    refused(builder, TOCLimitError, rf"TOC JSON is {size} bytes, over the limit of {size - 1}",
            limits=TOCLimits(max_toc_bytes=size - 1))


def test_gzip_toc_bomb_stops_at_the_limit():
    """A TOC member inflating to 64 MiB must be cut off at the 1 MiB limit, not inflated."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64)) + packer.flush()
    blob = BlobBuilder().payload + bomb
    blob += estargz_footer(len(blob) - len(bomb))
    tracemalloc.start()
    try:
        with pytest.raises(TOCLimitError, match="TOC inflates past"):
            open_blob(blob, limits=TOCLimits(max_toc_bytes=1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_compressed_toc_too_big_for_the_limit_is_not_even_read():
    blob = BlobBuilder().payload + bytes(200_000)
    blob += estargz_footer(0)
    with pytest.raises(TOCLimitError, match="compressed TOC is"):
        open_blob(blob, limits=TOCLimits(max_toc_bytes=100_000))


def test_zstd_toc_size_limits():
    builder = BlobBuilder("zstd")
    builder.add_file("f", b"zstd")
    json_bytes = builder.toc_json()
    with pytest.raises(TOCLimitError, match="footer says the TOC is"):
        open_blob(builder.build(), limits=TOCLimits(max_toc_bytes=len(json_bytes) - 1))
    # A TOC frame that inflates past what the footer states.
    blob = bytearray(builder.payload)
    frame = zstandard.ZstdCompressor().compress(json_bytes + b" " * 10_000_000)
    blob += ZSTD_SKIPPABLE_MAGIC + struct.pack("<I", len(frame))
    offset = len(blob)
    blob += frame + zstd_chunked_footer(offset, len(frame), len(json_bytes))
    with pytest.raises(TOCError, match=rf"decompresses to more than {len(json_bytes) + 1} bytes"):
        open_blob(bytes(blob))


def test_zstd_toc_outside_a_skippable_frame():
    builder = BlobBuilder("zstd")
    blob = bytearray(builder.build())
    offset = len(builder.payload)
    blob[offset : offset + 4] = b"\x28\xb5\x2f\xfd"
    with pytest.raises(FormatError, match="not inside a skippable frame"):
        open_blob(bytes(blob))


@pytest.mark.parametrize("tar_bytes,match", [
    (toc_tar(b"{}", name="other.json"), "TOC tar holds 'other.json', expected a regular file"),
    (toc_tar(b'{"version": 1, "entries": []}', extra=(("x", b"y"),)), "second entry 'x'"),
    (b"", "TOC tar is empty|malformed"),
    (b"garbage" * 100, "TOC tar is malformed"),
    (toc_tar(b'{"version": 1, "entries": []}')[:600], "TOC tar is truncated|malformed"),
])
def test_bad_toc_tar(tar_bytes, match):
    with pytest.raises(TOCError, match=match):
        open_blob(BlobBuilder().build(tar_bytes=tar_bytes))


# --- blob structure -----------------------------------------------------------------------------

def test_not_a_stargz_blob():
    with pytest.raises(NotEStargzError, match="not an eStargz/stargz/zstd:chunked blob"):
        open_blob(gzip.compress(b"plain gzip layer" * 1000))


def test_blob_cut_short_loses_its_footer():
    builder = BlobBuilder()
    builder.add_file("f", b"data" * 1000)
    blob = builder.build()
    with pytest.raises(NotEStargzError):
        open_blob(blob[: len(blob) - 20])


def test_truncated_toc_member():
    builder = BlobBuilder()
    builder.add_file("f", b"data")
    blob = builder.build()
    toc_offset = len(builder.payload)
    cut = blob[: toc_offset + 20] + estargz_footer(toc_offset)
    with pytest.raises(TOCError, match="TOC gzip member is truncated|corrupt"):
        open_blob(cut)


@pytest.mark.parametrize("trailer_byte", [0, 4], ids=["crc", "size"])
def test_toc_member_failing_its_gzip_trailer(trailer_byte):
    """The TOC member is inflated by ISA-L: its CRC-32 and size trailer are still checked."""
    builder = BlobBuilder()
    builder.add_file("f", b"data")
    blob = bytearray(builder.build())
    trailer = len(blob) - len(estargz_footer(0)) - 8
    blob[trailer + trailer_byte] ^= 0x01
    with pytest.raises(TOCError, match="TOC gzip member is corrupt"):
        open_blob(bytes(blob))


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_truncated_chunk_data(compression):
    data = bytes(range(256)) * 40
    builder = BlobBuilder(compression)
    entry = builder.add_file("f", data)[0]
    start = entry["offset"]
    end = len(builder.payload)
    builder.payload[start:end] = builder.payload[start : start + (end - start) // 2]
    builder.add_file("g", b"after")  # keep the payload end beyond f's member
    reader = open_blob(builder.build())
    with pytest.raises(FormatError, match=r"^f: chunk at file offset 0: .*(inflates to only|corrupt)"):
        reader.read("f", 100, 10)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_garbage_chunk_data(compression):
    builder = BlobBuilder(compression)
    entry = builder.add_file("f", b"payload" * 100)[0]
    start = entry["offset"]
    builder.payload[start : start + 8] = b"\x00garbage"
    reader = open_blob(builder.build())
    with pytest.raises(FormatError, match=rf"^f: chunk at file offset 0: corrupt {compression} data"):
        reader.read_file("f")


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_data_inflating_beyond_the_declared_size_is_cut_off(compression):
    """A member of 64 MiB of zeros behind a 10-byte file: only 10 bytes are ever inflated."""
    builder = BlobBuilder(compression)
    if compression == "gzip":
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        member = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64)) + packer.flush()
    else:
        member = zstandard.ZstdCompressor().compress(bytes(64 << 20))
    offset = len(builder.payload)
    builder.payload += member
    builder.add(name="f", type="reg", size=10, offset=offset, digest=sha(bytes(10)))
    reader = open_blob(builder.build())
    tracemalloc.start()
    try:
        assert reader.read_file("f") == bytes(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_wrong_chunk_content_is_a_digest_mismatch_naming_the_file():
    builder = BlobBuilder()
    builder.add_file("ok", b"fine")
    builder.add_file("dir/f", b"real content")[0]["chunkDigest"] = sha(b"claimed content")
    reader = open_blob(builder.build())
    assert reader.read_file("ok") == b"fine"
    with pytest.raises(DigestMismatchError, match=r"^dir/f: chunk at file offset 0: digest mismatch: "
                                                  r"expected sha256:\w+, got sha256:\w+"):
        reader.read("dir/f", 0, 1)  # one byte asked, the whole chunk is checked first


def test_valid_json_but_hostile_shape_never_tracebacks():
    """Every entry field given the wrong JSON type gives a TOCError, never another exception."""
    values = [None, True, 1, -1, 1.5, "s", [], {}, [1], {"a": 1}]
    keys = ["name", "type", "size", "modtime", "linkName", "mode", "uid", "gid", "userName",
            "groupName", "devMajor", "devMinor", "xattrs", "digest", "offset", "chunkOffset",
            "chunkSize", "chunkDigest", "innerOffset"]
    for key in keys:
        for value in values:
            entry = {"name": "f", "type": "reg", "size": 4, "offset": 0,
                     "digest": sha(b"data"), key: value}
            toc = json.dumps({"version": 1, "entries": [entry]}).encode()
            try:
                reader = open_blob(BlobBuilder().build(toc))
                for node in reader.toc.nodes():
                    reader.toc.chunks(node.name)
            except (TOCError, TOCLimitError):
                pass
